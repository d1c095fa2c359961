//! Small models and helpers shared by the tests.

use agentcore_model::decoder::{Decoder, DecoderConfig};
use candle_core::Device;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// A model small enough for debug-build tests: 2 layers, d_model 32, 4 heads (head size 8).
pub fn small_config(vocab_size: usize) -> DecoderConfig {
    DecoderConfig {
        d_model: 32,
        n_layers: 2,
        n_heads: 4,
        d_ff: 64,
        max_seq_len: 64,
        ..DecoderConfig::tiny(vocab_size)
    }
}

pub fn small_model(seed: u64) -> Decoder {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Decoder::new(small_config(40), &mut rng, &Device::Cpu).expect("valid config")
}

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Random token sequences of the given lengths, ids in 3..vocab (0..3 reserved for pad etc.).
pub fn random_sequences(lengths: &[usize], vocab: u32, seed: u64) -> Vec<Vec<u32>> {
    use rand::Rng;
    let mut r = rng(seed);
    lengths.iter().map(|&n| (0..n).map(|_| r.random_range(3..vocab)).collect()).collect()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The Gemma 3 270M GGUF fetched by `scripts/fetch_gemma3.sh`: `AGENTCORE_GEMMA_GGUF`, else the
/// script's cache path. `None` when absent; with `AGENTCORE_REQUIRE_GEMMA=1` (set by `.ci/run`,
/// which runs the fetch script first) a missing file fails the test instead.
pub fn gemma_gguf() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("AGENTCORE_GEMMA_GGUF")
        .map(std::path::PathBuf::from)
        .or_else(agentcore_model::hub::default_gemma_gguf_path)?;
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var("AGENTCORE_REQUIRE_GEMMA").as_deref() != Ok("1"),
        "{} is missing: run scripts/fetch_gemma3.sh",
        path.display()
    );
    eprintln!("skipped: {} is missing (run scripts/fetch_gemma3.sh)", path.display());
    None
}

/// The small model in each architecture: Llama (the tiny default), Qwen2 (q/k/v biases,
/// grouped-query attention, tied head) and Gemma 3 (q/k norms, sandwich norms, GELU-tanh,
/// scaled embeddings, explicit head size, sliding-window layers with their own rotary base; the
/// window of 6 is shorter than the test sequences, so it matters).
pub fn small_models(seed: u64) -> Vec<(&'static str, Decoder)> {
    use agentcore_model::decoder::{Activation, Architecture};
    let llama = small_config(40);
    let qwen2 = DecoderConfig {
        architecture: Architecture::Qwen2,
        n_kv_heads: Some(2),
        attention_bias: true,
        tie_embeddings: true,
        ..small_config(40)
    };
    let gemma = DecoderConfig {
        architecture: Architecture::Gemma3,
        n_kv_heads: Some(1),
        head_dim: Some(12),
        tie_embeddings: true,
        activation: Activation::GeluPytorchTanh,
        rope_local_theta: Some(100.0),
        sliding_window: Some(6),
        sliding_window_pattern: Some(2),
        query_pre_attn_scalar: Some(16.0),
        ..small_config(40)
    };
    [("llama", llama), ("qwen2", qwen2), ("gemma3", gemma)]
        .into_iter()
        .map(|(name, config)| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (name, Decoder::new(config, &mut rng, &Device::Cpu).expect("valid config"))
        })
        .collect()
}

/// Greedy decoding of `max_new_tokens`, no stop sequences.
pub fn greedy(max_new_tokens: usize) -> agentcore_model::generate::SamplingParams {
    agentcore_model::generate::SamplingParams {
        temperature: 0.0,
        top_p: 1.0,
        top_k: None,
        max_new_tokens,
        stop_sequences: vec![],
        pad_token: 0,
    }
}

/// Sampling at temperature 1, untruncated.
pub fn sampled(max_new_tokens: usize) -> agentcore_model::generate::SamplingParams {
    agentcore_model::generate::SamplingParams { temperature: 1.0, ..greedy(max_new_tokens) }
}

/// Asserts that every trainable tensor of `model` has a finite, non-zero gradient in `grads`;
/// returns how many were checked.
pub fn assert_every_param_has_gradient(
    model: &Decoder,
    grads: &candle_core::backprop::GradStore,
    what: &str,
) -> usize {
    for (name, var) in model.params().iter() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{what}: `{name}` received no gradient"));
        let norm = g
            .sqr()
            .and_then(|x| x.sum_all())
            .and_then(|x| x.to_dtype(candle_core::DType::F64))
            .and_then(|x| x.to_scalar::<f64>())
            .expect("norm");
        assert!(norm > 0.0 && norm.is_finite(), "{what}: `{name}` has gradient norm {norm}");
    }
    model.params().len()
}
