#![expect(clippy::print_stdout, reason = "scratch")]
use agentcore_model::decoder::{Decoder, DecoderConfig};
use agentcore_model::generate::{SamplingParams, generate};
use candle_core::Device;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Instant;
fn main() {
    let reps: usize = std::env::args().nth(1).map_or(10, |s| s.parse().unwrap());
    let b: usize = std::env::args().nth(2).map_or(64, |s| s.parse().unwrap());
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let config = DecoderConfig { max_seq_len: 128, ..DecoderConfig::bench_reference() };
    let model = Decoder::new(config, &mut rng, &Device::Cpu).unwrap();
    let prompts: Vec<Vec<u32>> =
        (0..b).map(|_| (0..16).map(|_| rng.random_range(0..512u32)).collect()).collect();
    let params = SamplingParams {
        temperature: 1.0,
        top_p: 1.0,
        top_k: None,
        max_new_tokens: 48,
        stop_sequences: vec![],
        pad_token: 0,
    };
    let mut ts = vec![];
    for _ in 0..reps {
        let t = Instant::now();
        generate(&model, &prompts, &params, &mut rng).unwrap();
        ts.push(t.elapsed().as_secs_f64());
    }
    ts.sort_by(f64::total_cmp);
    let m = ts[ts.len() / 2];
    println!("gen b{b}: {:.1} ms -> {:.0} tok/s", m * 1e3, (b * 48) as f64 / m);
}
