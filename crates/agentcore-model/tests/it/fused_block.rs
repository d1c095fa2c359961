//! The fused training block (one op per plain Llama block, a hand-written backward pass)
//! against the composed block: the same log-probs and the same gradient for every weight.

use agentcore_model::decoder::{Decoder, DecoderConfig};
use agentcore_model::generate::token_logprobs;
use candle_core::Device;

use crate::common::{random_sequences, rng, small_config};

/// Log-probs and every parameter's gradient of a loss that weighs each position differently.
fn logprobs_and_grads(model: &Decoder, sequences: &[Vec<u32>]) -> (Vec<f32>, Vec<Vec<f32>>) {
    let logp = token_logprobs(model, sequences, 0.7, 0).expect("scores");
    let weights: Vec<f32> = (0..logp.elem_count()).map(|i| ((i % 7) as f32 - 3.0) / 5.0).collect();
    let weights = candle_core::Tensor::from_vec(weights, logp.shape(), logp.device()).expect("w");
    let loss = (&logp * weights).and_then(|l| l.sum_all()).expect("loss");
    let grads = model.backward(&loss).expect("backward");
    let values = logp.flatten_all().and_then(|l| l.to_vec1::<f32>()).expect("values");
    let g = model
        .params()
        .iter()
        .map(|(name, var)| {
            grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name} has no gradient"))
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .expect("gradient")
        })
        .collect();
    (values, g)
}

fn assert_close(fused: &[f32], composed: &[f32], what: &str) {
    assert_eq!(fused.len(), composed.len(), "{what}");
    let scale = composed.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
    let worst = fused.iter().zip(composed).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst <= 2e-5 * scale.max(1.0), "{what}: off by {worst} (largest {scale})");
}

fn check(config: DecoderConfig, lengths: &[usize], seed: u64) {
    let vocab = config.vocab_size as u32;
    let mut model = Decoder::new(config, &mut rng(seed), &Device::Cpu).expect("model");
    let sequences = random_sequences(lengths, vocab, seed + 1);
    let (fused_values, fused_grads) = logprobs_and_grads(&model, &sequences);
    // Run to run, bit for bit: the threads' work is reduced in a fixed order.
    let (again_values, again_grads) = logprobs_and_grads(&model, &sequences);
    assert!(again_values == fused_values && again_grads == fused_grads, "not deterministic");
    model.set_fused_blocks(false);
    let (values, grads) = logprobs_and_grads(&model, &sequences);
    assert_close(&fused_values, &values, "log-probs");
    let names: Vec<String> = model.params().iter().map(|(n, _)| n.to_string()).collect();
    for ((name, f), c) in names.iter().zip(&fused_grads).zip(&grads) {
        assert_close(f, c, name);
    }
    // The fused pass really ran: the two passes are not bit-identical everywhere.
    let identical = fused_grads.iter().zip(&grads).all(|(f, c)| f == c);
    assert!(!identical, "the fused and composed passes gave bit-identical gradients");
}

#[test]
fn the_fused_block_matches_the_composed_block_on_a_small_llama() {
    // Right-padded rows of different lengths: padding positions are scored 0 and get no say.
    check(small_config(40), &[12, 7, 9, 3], 5);
}

#[test]
fn the_fused_block_matches_the_composed_block_on_the_reference_model() {
    let config = DecoderConfig { max_seq_len: 128, ..DecoderConfig::bench_reference() };
    check(config, &[65, 40, 65, 17], 9);
}
