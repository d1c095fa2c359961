//! `agentcore bench model`: throughput of the model engine on the reference architecture of the
//! PyTorch anchor (`shared/anchors/torch_tiny_bench.py`: vocab 512, 4 layers, d_model 256,
//! 4 heads, SwiGLU 768, untied head, f32, 3,672,320 weights), measured the same way:
//! - training: forward + cross-entropy + backward + AdamW(lr 1e-3, wd 0.01) on 16 x 64 tokens;
//! - forward: logits + loss on the same batch;
//! - generation: KV-cached sampling at temperature 1, 16-token prompt, 48 new tokens, batch 1
//!   and 64, tokens/s = batch x 48 / wall time (prefill included).
//!
//! - Gemma 3 270M (the GGUF of `scripts/fetch_gemma3.sh`, loaded frozen, decoding on its
//!   quantized matrices): 64-token prompt, 64 new tokens at temperature 1, batch 1 and 8,
//!   tokens/s = batch x 64 / wall time, prefill included (llama.cpp's anchor times the 64 new
//!   tokens after an untimed prompt, so this is the stricter measure).
//!
//! Each figure is the median over the timed repetitions, with the min and max rate.

use std::time::Instant;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::decoder::{Decoder, DecoderConfig};
use crate::error::Result;
use crate::generate::{SamplingParams, generate, token_logprobs};
use crate::optim::{AdamW, AdamWConfig};

/// How many repetitions to time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchSettings {
    /// Untimed training/forward steps first.
    pub warmup: usize,
    /// Timed training/forward steps.
    pub steps: usize,
    /// Untimed generation runs first.
    pub gen_warmup: usize,
    /// Timed generation runs.
    pub gen_reps: usize,
    /// The Gemma 3 270M GGUF; `None` skips that part.
    pub gemma: Option<std::path::PathBuf>,
    /// Where the models run: `cpu` or `cuda[:N]` ([`crate::device::parse_device`]).
    #[serde(default = "crate::device::default_device")]
    pub device: String,
}

impl Default for BenchSettings {
    fn default() -> Self {
        // The anchor's defaults.
        Self {
            warmup: 5,
            steps: 30,
            gen_warmup: 2,
            gen_reps: 10,
            gemma: None,
            device: crate::device::default_device(),
        }
    }
}

/// A rate: median over repetitions, with the range.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Rate {
    /// Work / median time.
    pub median: f64,
    /// Slowest repetition.
    pub min: f64,
    /// Fastest repetition.
    pub max: f64,
}

impl Rate {
    fn from_times(work: f64, times: &[f64]) -> Self {
        let mut sorted = times.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median =
            if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 };
        Self { median: work / median, min: work / sorted[n - 1], max: work / sorted[0] }
    }
}

/// The report; the top-level keys are the ones the issue names.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelBenchReport {
    /// Training tokens/s (median).
    pub train_tokens_per_s: f64,
    /// Forward-only tokens/s (median).
    pub forward_tokens_per_s: f64,
    /// Generated tokens/s at batch 1 (median).
    pub gen_tokens_per_s_batch1: f64,
    /// Generated tokens/s at batch 64 (median).
    pub gen_tokens_per_s_batch64: f64,
    /// Gemma 3 270M generation at batch 1 (median); `null` when no GGUF was given.
    pub gemma_gen_tokens_per_s_batch1: Option<f64>,
    /// Gemma 3 270M generation at batch 8, all rows together (median); `null` without GGUF.
    pub gemma_gen_tokens_per_s_batch8: Option<f64>,
    /// Ranges of each rate.
    pub detail: BenchDetail,
}

/// Medians with ranges and the setup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchDetail {
    /// Weights in the model.
    pub params: usize,
    /// Threads candle's CPU backend uses.
    pub threads: usize,
    /// Repetitions.
    pub settings: BenchSettings,
    /// Training rate.
    pub train: Rate,
    /// Forward rate.
    pub forward: Rate,
    /// Generation at batch 1.
    pub gen_batch1: Rate,
    /// Generation at batch 64.
    pub gen_batch64: Rate,
    /// Training loss at the first and last step (it must fall on the fixed batch).
    pub loss_first_last: (f64, f64),
    /// Gemma 3 270M at batch 1 and 8, when measured.
    pub gemma: Option<(Rate, Rate)>,
}

/// Runs the benchmark.
pub fn run_model_bench(
    settings: &BenchSettings,
    mut progress: impl FnMut(&str),
) -> Result<ModelBenchReport> {
    let device = crate::device::parse_device(&settings.device)?;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let config = DecoderConfig { max_seq_len: 128, ..DecoderConfig::bench_reference() };
    let model = Decoder::new(config.clone(), &mut rng, &device)?;
    let (batch, seq) = (16, 64);
    let data: Vec<Vec<u32>> = (0..batch)
        .map(|_| (0..=seq).map(|_| rng.random_range(0..config.vocab_size as u32)).collect())
        .collect();
    let tokens = (batch * seq) as f64;

    progress("training steps");
    let adamw = AdamWConfig {
        learning_rate: 1e-3,
        weight_decay: 0.01,
        max_grad_norm: None,
        ..AdamWConfig::default()
    };
    let mut opt = AdamW::new(model.params(), adamw)?;
    let mut times = Vec::new();
    let mut losses = Vec::new();
    for i in 0..settings.warmup + settings.steps {
        let start = Instant::now();
        let loss = nll(&model, &data)?;
        opt.step(&model.backward(&loss)?)?;
        crate::device::synchronize(&device)?;
        let dt = start.elapsed().as_secs_f64();
        losses.push(f64::from(loss.to_scalar::<f32>()?));
        if i >= settings.warmup {
            times.push(dt);
        }
    }
    let train = Rate::from_times(tokens, &times);

    progress("forward passes");
    let mut times = Vec::new();
    for i in 0..settings.warmup + settings.steps {
        let start = Instant::now();
        let loss = nll(&model, &data)?;
        loss.to_scalar::<f32>()?;
        if i >= settings.warmup {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    let forward = Rate::from_times(tokens, &times);

    let mut gen_rate = |b: usize| -> Result<Rate> {
        progress(&format!("generation, batch {b}"));
        let prompts: Vec<Vec<u32>> = (0..b)
            .map(|_| (0..16).map(|_| rng.random_range(0..config.vocab_size as u32)).collect())
            .collect();
        let params = SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: None,
            max_new_tokens: 48,
            stop_sequences: vec![],
            pad_token: 0,
        };
        let mut times = Vec::new();
        for i in 0..settings.gen_warmup + settings.gen_reps {
            let start = Instant::now();
            let out = generate(&model, &prompts, &params, &mut rng)?;
            let dt = start.elapsed().as_secs_f64();
            debug_assert!(out.iter().all(|g| g.tokens.len() == 48));
            if i >= settings.gen_warmup {
                times.push(dt);
            }
        }
        Ok(Rate::from_times((b * 48) as f64, &times))
    };
    let gen_batch1 = gen_rate(1)?;
    let gen_batch64 = gen_rate(64)?;
    let gemma = match &settings.gemma {
        Some(path) => Some(gemma_rates(path, settings, &device, &mut rng, &mut progress)?),
        None => None,
    };

    Ok(ModelBenchReport {
        train_tokens_per_s: train.median,
        forward_tokens_per_s: forward.median,
        gen_tokens_per_s_batch1: gen_batch1.median,
        gen_tokens_per_s_batch64: gen_batch64.median,
        gemma_gen_tokens_per_s_batch1: gemma.map(|(b1, _)| b1.median),
        gemma_gen_tokens_per_s_batch8: gemma.map(|(_, b8)| b8.median),
        detail: BenchDetail {
            params: model.params().num_weights(),
            threads: candle_core::utils::get_num_threads(),
            settings: settings.clone(),
            train,
            forward,
            gen_batch1,
            gen_batch64,
            loss_first_last: (losses[0], *losses.last().unwrap_or(&losses[0])),
            gemma,
        },
    })
}

/// The anchor's prompt text (`llamacpp_bench.py`), repeated and cut to 64 tokens.
const GEMMA_TEXT: &str = "The quick brown fox jumps over the lazy dog. Reinforcement learning from \
verifiable rewards trains a policy by sampling several completions per prompt, scoring them, and \
pushing probability mass toward the better ones. ";

fn gemma_rates(
    path: &std::path::Path,
    settings: &BenchSettings,
    device: &Device,
    rng: &mut ChaCha8Rng,
    progress: &mut impl FnMut(&str),
) -> Result<(Rate, Rate)> {
    progress("loading Gemma 3 270M");
    let loaded = crate::hub::load_gguf(path, false, device)?;
    let bos = loaded.tokenizer.token_id("<bos>").unwrap_or(2);
    let mut prompt = vec![bos];
    prompt.extend(loaded.tokenizer.encode(&GEMMA_TEXT.repeat(8))?);
    prompt.truncate(64);
    let params = SamplingParams {
        temperature: 1.0,
        top_p: 1.0,
        top_k: None,
        max_new_tokens: 64,
        stop_sequences: vec![],
        pad_token: 0,
    };
    let mut rate = |b: usize| -> Result<Rate> {
        progress(&format!("Gemma 3 270M generation, batch {b}"));
        let prompts = vec![prompt.clone(); b];
        let mut times = Vec::new();
        for i in 0..settings.gen_warmup.min(1) + settings.gen_reps.min(5) {
            let start = Instant::now();
            generate(&loaded.model, &prompts, &params, rng)?;
            if i >= settings.gen_warmup.min(1) {
                times.push(start.elapsed().as_secs_f64());
            }
        }
        Ok(Rate::from_times((b * 64) as f64, &times))
    };
    Ok((rate(1)?, rate(8)?))
}

/// Mean next-token cross-entropy of the sequences.
fn nll(model: &Decoder, data: &[Vec<u32>]) -> Result<Tensor> {
    let logp = token_logprobs(model, data, 1.0, 0)?;
    let predicted = (data[0].len() - 1) * data.len();
    Ok((logp.sum_all()?.neg()? / predicted as f64)?)
}
