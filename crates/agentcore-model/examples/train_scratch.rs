#![expect(clippy::print_stdout, reason = "scratch")]
use agentcore_model::decoder::{Decoder, DecoderConfig};
use agentcore_model::generate::token_logprobs;
use agentcore_model::optim::{AdamW, AdamWConfig};
use candle_core::Device;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Instant;
fn main() {
    let steps: usize = std::env::args().nth(1).map_or(20, |s| s.parse().unwrap());
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let config = DecoderConfig { max_seq_len: 128, ..DecoderConfig::bench_reference() };
    let model = Decoder::new(config.clone(), &mut rng, &Device::Cpu).unwrap();
    let data: Vec<Vec<u32>> =
        (0..16).map(|_| (0..=64).map(|_| rng.random_range(0..512u32)).collect()).collect();
    let mut opt = AdamW::new(
        model.params(),
        AdamWConfig {
            learning_rate: 1e-3,
            weight_decay: 0.01,
            max_grad_norm: None,
            ..AdamWConfig::default()
        },
    )
    .unwrap();
    let mut ts = vec![];
    for _ in 0..steps {
        let t = Instant::now();
        let logp = token_logprobs(&model, &data, 1.0, 0).unwrap();
        let loss = (logp.sum_all().unwrap().neg().unwrap() / 1024.0).unwrap();
        let t1 = t.elapsed().as_secs_f64();
        let g = model.backward(&loss).unwrap();
        let t2 = t.elapsed().as_secs_f64();
        opt.step(&g).unwrap();
        let t3 = t.elapsed().as_secs_f64();
        ts.push((t3, t1, t2 - t1, t3 - t2));
    }
    let mut s: Vec<_> = ts.iter().skip(2).copied().collect();
    s.sort_by(|a, b| a.0.total_cmp(&b.0));
    let m = s[s.len() / 2];
    println!(
        "step {:.1} ms (fwd {:.1}, bwd {:.1}, adamw {:.1}) -> {:.0} tok/s",
        m.0 * 1e3,
        m.1 * 1e3,
        m.2 * 1e3,
        m.3 * 1e3,
        1024.0 / m.0
    );
}
