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

/// Limits of the work a warm start may ask for: every size is checked against them before a job
/// is accepted (CLI and server alike), so no setting can make a worker allocate without bound or
/// train for days.
pub mod limits {
    /// Largest model width.
    pub const MAX_D_MODEL: usize = 2048;
    /// Most blocks.
    pub const MAX_LAYERS: usize = 48;
    /// Most attention heads.
    pub const MAX_HEADS: usize = 64;
    /// Largest SwiGLU hidden width.
    pub const MAX_D_FF: usize = 8192;
    /// Sequence lengths allowed.
    pub const SEQ_LEN: std::ops::RangeInclusive<usize> = 64..=4096;
    /// Most demonstrations.
    pub const MAX_DEMOS: usize = 200_000;
    /// Most optimizer steps (the default is 800; 20,000 is hours on 2 cores).
    pub const MAX_STEPS: usize = 20_000;
    /// Most demonstrations per step.
    pub const MAX_BATCH: usize = 1024;
    /// Estimated memory of training (weights, gradients, AdamW moments, activations of a step).
    pub const MAX_TRAINING_BYTES: u64 = 16 << 30;
}

impl WarmStartSettings {
    /// Estimated bytes of one training step: 16 bytes per parameter (weights, gradients, two
    /// AdamW moments in f32) plus the activations kept for the backward pass (per token and layer:
    /// a dozen `d_model`-wide tensors, three `d_ff`-wide ones, two rows of attention scores per
    /// head; and three vocabulary-wide rows of logits per token).
    #[must_use]
    pub fn estimated_training_bytes(&self) -> u64 {
        let m = &self.model;
        let c = m.config();
        let params: u64 = c
            .weight_shapes()
            .iter()
            .map(|(_, s)| s.iter().map(|&d| d as u64).product::<u64>())
            .sum();
        let tokens = (self.batch_size as u64).saturating_mul(m.max_seq_len as u64);
        let per_token_layer =
            12 * m.d_model as u64 + 3 * m.d_ff as u64 + 2 * (m.n_heads * m.max_seq_len) as u64;
        let activations = tokens
            .saturating_mul(m.n_layers as u64)
            .saturating_mul(per_token_layer)
            .saturating_add(tokens.saturating_mul(3 * c.vocab_size as u64));
        params.saturating_mul(16).saturating_add(activations.saturating_mul(4))
    }

    /// Every rule these settings break, with the field, the rule and the value.
    #[must_use]
    pub fn violations(&self) -> Vec<String> {
        use limits::*;
        let mut out = Vec::new();
        let m = &self.model;
        let mut range = |field: &str, v: usize, lo: usize, hi: usize| {
            if !(lo..=hi).contains(&v) {
                out.push(format!("warm_start.{field} must be in {lo}..={hi}, got {v}"));
            }
        };
        range("model.d_model", m.d_model, 8, MAX_D_MODEL);
        range("model.n_layers", m.n_layers, 1, MAX_LAYERS);
        range("model.n_heads", m.n_heads, 1, MAX_HEADS);
        range("model.d_ff", m.d_ff, 8, MAX_D_FF);
        range("model.max_seq_len", m.max_seq_len, *SEQ_LEN.start(), *SEQ_LEN.end());
        range("n_demos", self.n_demos, 1, MAX_DEMOS);
        range("steps", self.steps, 0, MAX_STEPS);
        range("batch_size", self.batch_size, 1, MAX_BATCH);
        range("max_difficulty", usize::from(self.max_difficulty), 1, 3);
        let sizes_in_range = out.is_empty();
        if sizes_in_range && let Err(e) = m.config().validate() {
            out.push(format!("warm_start: {e}"));
        }
        if !(self.learning_rate.is_finite()
            && self.learning_rate > 0.0
            && self.learning_rate <= 1.0)
        {
            out.push(format!(
                "warm_start.learning_rate must be in (0, 1], got {}",
                self.learning_rate
            ));
        }
        for (field, v) in [
            ("weak_wrong_rate", self.weak_wrong_rate),
            ("wrong_rate", self.wrong_rate),
            ("miscopy_rate", self.miscopy_rate),
        ] {
            if !(0.0..=1.0).contains(&v) {
                out.push(format!("warm_start.{field} must be in [0, 1], got {v}"));
            }
        }
        for (i, f) in self.weak_families.iter().enumerate() {
            if !agentcore_tasks::seed::FAMILIES.contains(&f.as_str()) {
                out.push(format!(
                    "warm_start.weak_families[{i}] must be one of {:?}, got {f:?}",
                    agentcore_tasks::seed::FAMILIES
                ));
            }
        }
        let bytes = self.estimated_training_bytes();
        if sizes_in_range && bytes > MAX_TRAINING_BYTES {
            out.push(format!(
                "warm_start: model and batch need an estimated {:.1} GiB to train, at most {} GiB \
                 (model.d_model, model.n_layers, model.d_ff, model.max_seq_len, batch_size)",
                bytes as f64 / f64::from(1u32 << 30),
                MAX_TRAINING_BYTES >> 30
            ));
        }
        out
    }
}

/// Why a warm start stops before its last step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WarmStop {
    /// The job is cancelled or the process shuts down: the warm start fails with
    /// [`TrainError::Interrupted`].
    Interrupt,
    /// Its compute has used up the job's budget: the model as far as it got is the policy (the
    /// job then stops for the budget); nothing is cached.
    Budget,
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
    progress: &mut dyn FnMut(WarmStartProgress) -> std::ops::ControlFlow<WarmStop>,
) -> Result<(Decoder, PathBuf, bool), TrainError> {
    let dir = data_dir.join("warmstart").join(settings.cache_key());
    if dir.join(agentcore_model::checkpoint::STATE_FILE).is_file() {
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
        opt.step(&model.backward(&loss)?)?;
        let report = WarmStartProgress { step: step + 1, steps: settings.steps, loss: value };
        match progress(report) {
            std::ops::ControlFlow::Continue(()) => {}
            // Nothing is cached: a later run starts the warm start again.
            std::ops::ControlFlow::Break(WarmStop::Interrupt) => {
                return Err(TrainError::Interrupted(format!(
                    "the warm start was stopped after step {} of {}",
                    step + 1,
                    settings.steps
                )));
            }
            // The job goes on with the model as far as it got (and stops at once for the
            // budget); the partial warm start is not cached.
            std::ops::ControlFlow::Break(WarmStop::Budget) => {
                tracing::warn!(
                    step = step + 1,
                    steps = settings.steps,
                    "the warm start used up the budget; stopping it here (not cached)"
                );
                return Ok((model, dir, false));
            }
        }
    }
    save_checkpoint(&dir, &model, &opt, &rng)?;
    Ok((model, dir, false))
}
