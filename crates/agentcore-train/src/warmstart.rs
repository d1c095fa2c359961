//! Warm start of the built-in agent: supervised learning on imperfect demonstrations of the
//! `seed` suite, cached in the data directory so a second run skips it.

use std::path::{Path, PathBuf};

use agentcore_agent::sandbox::PythonSandbox;
use agentcore_model::checkpoint::{load_checkpoint, save_checkpoint};
use agentcore_model::decoder::{Decoder, DecoderConfig};
use agentcore_model::loss::masked_nll;
use agentcore_model::optim::{AdamW, AdamWConfig};
use agentcore_model::tokenizer::{ByteTokenizer, SpecialToken};
use agentcore_tasks::Task;
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::demos::{DemoNoise, demo_expression, miscopy};

/// Size of the built-in model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSize {
    /// Width.
    pub d_model: usize,
    /// Blocks.
    pub n_layers: usize,
    /// Attention heads.
    pub n_heads: usize,
    /// SwiGLU hidden width.
    pub d_ff: usize,
    /// Longest sequence.
    pub max_seq_len: usize,
}

impl Default for ModelSize {
    fn default() -> Self {
        // 4 x 128 (about 0.8M parameters) learned fastest in the prototype (design.md).
        Self { d_model: 128, n_layers: 4, n_heads: 4, d_ff: 384, max_seq_len: 256 }
    }
}

impl ModelSize {
    /// The decoder config with the byte tokenizer's vocabulary.
    #[must_use]
    pub fn config(&self) -> DecoderConfig {
        let mut c = DecoderConfig::tiny(ByteTokenizer::new().vocab_size());
        c.d_model = self.d_model;
        c.n_layers = self.n_layers;
        c.n_heads = self.n_heads;
        c.d_ff = self.d_ff;
        c.max_seq_len = self.max_seq_len;
        c
    }
}

/// Warm-start settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmStartSettings {
    /// Model size.
    pub model: ModelSize,
    /// Demonstrations generated.
    pub n_demos: usize,
    /// Optimizer steps.
    pub steps: usize,
    /// Demonstrations per step.
    pub batch_size: usize,
    /// AdamW learning rate.
    pub learning_rate: f64,
    /// Seed of the demonstrations, the initial weights and the batches.
    pub seed: u64,
    /// Families whose demonstrations mostly use a wrong expression.
    pub weak_families: Vec<String>,
    /// Wrong-expression rate of weak families.
    pub weak_wrong_rate: f64,
    /// Wrong-expression rate elsewhere.
    pub wrong_rate: f64,
    /// Miscopied-answer rate.
    pub miscopy_rate: f64,
    /// Hardest task difficulty demonstrated (1..=3).
    pub max_difficulty: u8,
}

impl Default for WarmStartSettings {
    fn default() -> Self {
        let noise = DemoNoise::default();
        Self {
            model: ModelSize::default(),
            n_demos: 3000,
            // Copying lists is what the warm start must teach: 400 steps gave a 32.9% baseline and
            // a GRPO plateau near 60%, 600 steps 48.8% -> 77%, 800 steps 53.3% -> 83.3%
            // (BENCHMARKS.md).
            steps: 800,
            batch_size: 32,
            learning_rate: 1e-3,
            seed: 1234,
            weak_families: noise.weak_families,
            weak_wrong_rate: noise.weak_wrong_rate,
            wrong_rate: noise.wrong_rate,
            miscopy_rate: noise.miscopy_rate,
            max_difficulty: 2,
        }
    }
}

impl WarmStartSettings {
    /// A stable key of these settings (the cache directory's name).
    #[must_use]
    pub fn cache_key(&self) -> String {
        // FNV-1a over the JSON form: stable across runs and platforms.
        let text = format!(
            "{}/{}",
            crate::demos::DEMOS_VERSION,
            serde_json::to_string(self).unwrap_or_default()
        );
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in text.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{h:016x}")
    }
}

/// The transcript of a demonstration: `<bos>query<call>expr</call><out>output</out><ans>answer</ans>`
/// (what a rollout of the tags format produces; the loss skips the query and `<out>...</out>`).
#[must_use]
pub fn transcript(query: &str, expr: &str, output: &str, answer: &str) -> String {
    format!("<bos>{query}<call>{expr}</call><out>{output}</out><ans>{answer}</ans>")
}

/// Demonstration transcripts for `tasks`, with tool outputs computed by the sandbox.
pub fn demonstrations(
    tasks: &[Task],
    settings: &WarmStartSettings,
    sandbox: &PythonSandbox,
) -> Vec<String> {
    let noise = DemoNoise {
        weak_families: settings.weak_families.clone(),
        weak_wrong_rate: settings.weak_wrong_rate,
        wrong_rate: settings.wrong_rate,
        miscopy_rate: settings.miscopy_rate,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(settings.seed);
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        let Some(expr) = demo_expression(task, &noise, &mut rng) else { continue };
        let run = sandbox.run(&expr);
        if !run.ok() {
            continue;
        }
        let output = run.stdout.trim().to_owned();
        let answer = miscopy(&output, noise.miscopy_rate, &mut rng);
        out.push(transcript(&task.query, &expr, &output, &answer));
    }
    out
}

/// Progress of the warm start.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct WarmStartProgress {
    /// Step done.
    pub step: usize,
    /// Of.
    pub steps: usize,
    /// Mean token loss of the step.
    pub loss: f64,
}

/// The warm-started model: loaded from the cache when it is there, else trained and cached.
///
/// # Errors
/// Model or file errors.
pub fn warm_start(
    settings: &WarmStartSettings,
    data_dir: &Path,
    sandbox: &PythonSandbox,
    progress: &mut dyn FnMut(WarmStartProgress),
) -> Result<(Decoder, PathBuf, bool), TrainError> {
    let dir = data_dir.join("warmstart").join(settings.cache_key());
    if dir.join("trainer_state.json").is_file() {
        let ck = load_checkpoint(&dir, &Device::Cpu)?;
        return Ok((ck.model, dir, true));
    }
    // Demonstrations come from their own seed of the generator, so they never coincide with the
    // job's tasks by construction of the seed, only by chance.
    let tasks = crate::tasks::seed_tasks(
        settings.n_demos,
        settings.seed ^ crate::defaults::DEMO_TASKS_SEED_SALT,
        settings.max_difficulty,
    )?;
    let demos = demonstrations(&tasks, settings, sandbox);
    let tok = ByteTokenizer::new();
    let pad = tok.special(SpecialToken::Pad);
    let seqs: Vec<Vec<u32>> = demos
        .iter()
        .map(|d| tok.encode(d))
        .filter(|s| s.len() <= settings.model.max_seq_len)
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(settings.seed);
    let model = Decoder::new(settings.model.config(), &mut rng, &Device::Cpu)?;
    let mut opt = AdamW::new(
        model.params(),
        AdamWConfig { learning_rate: settings.learning_rate, ..AdamWConfig::default() },
    )?;
    let out_start = tok.special(SpecialToken::OutStart);
    let out_end = tok.special(SpecialToken::OutEnd);
    // Batches of similar lengths (less padding): shuffle, sort windows of 8 batches by length,
    // shuffle the batches.
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let bs = settings.batch_size.clamp(1, seqs.len().max(1));
    for step in 0..settings.steps {
        if batches.is_empty() {
            let mut order: Vec<usize> = (0..seqs.len()).collect();
            order.shuffle(&mut rng);
            for window in order.chunks_mut(bs * 8) {
                window.sort_by_key(|&i| seqs[i].len());
                batches.extend(window.chunks(bs).filter(|c| c.len() == bs).map(<[usize]>::to_vec));
            }
            batches.shuffle(&mut rng);
        }
        let Some(ids) = batches.pop() else { break };
        let batch: Vec<Vec<u32>> = ids.iter().map(|&i| seqs[i].clone()).collect();
        let width = batch.iter().map(Vec::len).max().unwrap_or(0);
        // Loss on what the model writes: not the query, not the tool's output.
        let mut mask = Vec::with_capacity(batch.len() * width);
        for s in &batch {
            let query_end =
                s.iter().position(|&t| t == tok.special(SpecialToken::CallStart)).unwrap_or(0);
            let mut inside_out = false;
            for t in 0..width {
                let id = s.get(t).copied();
                if id == Some(out_start) {
                    inside_out = true;
                }
                let m = t > 0 && t < s.len() && t >= query_end && !inside_out;
                mask.push(if m { 1f32 } else { 0.0 });
                if id == Some(out_end) {
                    inside_out = false;
                }
            }
        }
        let mask = Tensor::from_vec(mask, (batch.len(), width), &Device::Cpu)?;
        let loss = masked_nll(&model, &batch, &mask, pad)?;
        let value = f64::from(loss.to_scalar::<f32>()?);
        opt.step(&loss.backward()?)?;
        progress(WarmStartProgress { step: step + 1, steps: settings.steps, loss: value });
    }
    save_checkpoint(&dir, &model, &opt, &rng)?;
    Ok((model, dir, false))
}
