//! `agentcore bench grpo`: one full GRPO iteration on exactly the workload of the TRL anchor
//! (`shared/anchors/trl_grpo_step_bench.py`, one `GRPOTrainer` step), with the trainer's own
//! pieces:
//! - the model: the anchor's Llama sizes (vocab 512, 4 layers, d_model 256, 4 heads, SwiGLU 768,
//!   untied head, no biases, f32, 3,672,320 weights), randomly initialised;
//! - 8 prompts of 16 random lowercase characters (16 tokens of the anchor's character-level
//!   vocabulary: `<pad> <s> </s> <unk>`, then the printable ASCII characters and `\n`), each
//!   sampled 8 times at temperature 1 (no top-k/top-p) for at most 48 new tokens, stopping at
//!   `</s>` as TRL does;
//! - the anchor's reward (the fraction of vowels in the decoded completion), group-relative
//!   advantages ([`agentcore_grpo::advantages::group_advantages`], std-scaled per group), and
//!   the trainer's update ([`crate::update::policy_update`]: the `dapo` loss with beta 0 over
//!   the sampled tokens, one backward, AdamW lr 1e-3, weight decay 0.01, no clipping).
//!
//! Old log-probs come from sampling (the ratio of the single step is exactly 1, as in TRL with
//! `num_iterations = 1`), so an iteration is generation, scoring (rewards and advantages) and
//! the update, whose forward passes (the log-probs) are timed apart from its backward pass and
//! optimizer step.

use std::time::Instant;

use agentcore_grpo::advantages::group_advantages;
use agentcore_grpo::config::GRPOConfig;
use agentcore_grpo::loss::LossSettings;
use agentcore_model::decoder::{Decoder, DecoderConfig};
use agentcore_model::generate::{SamplingParams, generate};
use agentcore_model::optim::{AdamW, AdamWConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::update::{UpdateRow, policy_update};

/// The anchor's end-of-sequence token.
const EOS: u32 = 2;
/// The anchor's padding token.
const PAD: u32 = 0;
/// Tokens before the printable characters (`<pad> <s> </s> <unk>`).
const SPECIALS: u32 = 4;

/// The workload and the repetitions (defaults: the anchor's).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrpoBenchSettings {
    /// Untimed iterations first.
    pub warmup: usize,
    /// Timed iterations.
    pub steps: usize,
    /// Prompts per iteration.
    pub prompts: usize,
    /// Completions per prompt (the group size).
    pub generations: usize,
    /// Prompt tokens.
    pub prompt_len: usize,
    /// Most new tokens per completion.
    pub max_completion: usize,
    /// Seed of the weights, prompts and sampling.
    pub seed: u64,
    /// Where the model runs: `cpu` or `cuda[:N]` ([`agentcore_model::device::parse_device`]).
    #[serde(default = "agentcore_model::device::default_device")]
    pub device: String,
}

impl Default for GrpoBenchSettings {
    fn default() -> Self {
        Self {
            warmup: 1,
            steps: 5,
            prompts: 8,
            generations: 8,
            prompt_len: 16,
            max_completion: 48,
            seed: 0,
            device: agentcore_model::device::default_device(),
        }
    }
}

/// Seconds over the timed iterations.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Seconds {
    /// Median.
    pub median: f64,
    /// Fastest.
    pub min: f64,
    /// Slowest.
    pub max: f64,
    /// Every timed iteration, in order.
    pub all: Vec<f64>,
}

impl Seconds {
    fn of(all: Vec<f64>) -> Self {
        let mut sorted = all.clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = match n {
            0 => 0.0,
            _ if n % 2 == 1 => sorted[n / 2],
            _ => f64::midpoint(sorted[n / 2 - 1], sorted[n / 2]),
        };
        Self {
            median,
            min: sorted.first().copied().unwrap_or(0.0),
            max: sorted.last().copied().unwrap_or(0.0),
            all,
        }
    }
}

/// The report (one JSON object with `--json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrpoBenchReport {
    /// `grpo_iteration`.
    pub bench: String,
    /// Threads of candle's CPU backend.
    pub threads: usize,
    /// Weights of the model.
    pub params: usize,
    /// The workload.
    pub settings: GrpoBenchSettings,
    /// A whole iteration.
    pub iteration_s: Seconds,
    /// Sampling the completions (with their log-probs).
    pub generation_s: Seconds,
    /// Rewards and advantages.
    pub scoring_s: Seconds,
    /// The update's forward passes: log-probs of every scored sequence and the loss.
    pub logprobs_s: Seconds,
    /// The update's backward pass and AdamW step.
    pub backward_and_step_s: Seconds,
    /// Generated tokens per second of generation (median iteration).
    pub gen_tokens_per_s: f64,
    /// New tokens per completion, mean over the timed iterations.
    pub mean_completion_tokens: f64,
    /// Mean reward and loss of each iteration (warm-up included), as TRL logs them.
    pub log: Vec<(f64, f64)>,
}

/// The anchor's character of a token id, if it is one.
fn character(id: u32) -> Option<char> {
    match id {
        _ if id < SPECIALS => None,
        _ if id < SPECIALS + 95 => char::from_u32(32 + id - SPECIALS),
        _ if id == SPECIALS + 95 => Some('\n'),
        _ => char::from_u32(0x100 + id - SPECIALS - 96),
    }
}

/// The anchor's reward: vowels / characters of the decoded completion (specials skipped).
fn vowel_reward(tokens: &[u32]) -> f64 {
    let chars: Vec<char> = tokens.iter().filter_map(|&t| character(t)).collect();
    let vowels = chars.iter().filter(|c| "aeiou".contains(**c)).count();
    vowels as f64 / chars.len().max(1) as f64
}

/// Runs the benchmark.
///
/// # Errors
/// Model errors, a diverged loss.
pub fn run_grpo_bench(
    settings: &GrpoBenchSettings,
    mut progress: impl FnMut(usize, usize),
) -> Result<GrpoBenchReport, TrainError> {
    let s = settings;
    let device = agentcore_model::device::parse_device(&s.device)?;
    let mut rng = ChaCha8Rng::seed_from_u64(s.seed);
    let config = DecoderConfig { max_seq_len: 128, ..DecoderConfig::bench_reference() };
    let model = Decoder::new(config, &mut rng, &device)?;
    let adamw = AdamWConfig {
        learning_rate: 1e-3,
        weight_decay: 0.01,
        max_grad_norm: None,
        ..AdamWConfig::default()
    };
    let mut opt = AdamW::new(model.params(), adamw)?;
    let grpo = GRPOConfig { beta: 0.0, ..GRPOConfig::default() };
    let loss = LossSettings::from(&grpo);
    let sampling = SamplingParams {
        temperature: 1.0,
        top_p: 1.0,
        top_k: None,
        max_new_tokens: s.max_completion,
        stop_sequences: vec![vec![EOS]],
        pad_token: PAD,
    };
    let letter = |rng: &mut ChaCha8Rng| SPECIALS + 65 + rng.random_range(0..26u32);
    let (mut iteration, mut generation, mut scoring, mut logprobs, mut backward) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut log, mut new_tokens, mut gen_rates) = (Vec::new(), 0usize, Vec::new());
    for step in 0..s.warmup + s.steps {
        progress(step + 1, s.warmup + s.steps);
        let prompts: Vec<Vec<u32>> =
            (0..s.prompts).map(|_| (0..s.prompt_len).map(|_| letter(&mut rng)).collect()).collect();
        let start = Instant::now();
        let expanded: Vec<Vec<u32>> =
            prompts.iter().flat_map(|p| std::iter::repeat_n(p.clone(), s.generations)).collect();
        let outs = generate(&model, &expanded, &sampling, &mut rng)?;
        let generated = start.elapsed().as_secs_f64();
        let scored = Instant::now();
        let groups: Vec<Vec<f64>> = outs
            .chunks(s.generations.max(1))
            .map(|g| g.iter().map(|o| vowel_reward(&o.tokens)).collect())
            .collect();
        let adv = group_advantages(&groups, grpo.advantage_estimator, grpo.scale_rewards)?;
        let rows: Vec<UpdateRow> = expanded
            .iter()
            .zip(&outs)
            .zip(adv.advantages.iter().flatten())
            .map(|((prompt, out), &a)| {
                let mut ids = prompt.clone();
                ids.extend(&out.tokens);
                let mut old_logp = vec![0.0; prompt.len()];
                old_logp.extend(&out.logprobs);
                let mut mask = vec![false; prompt.len()];
                mask.extend(std::iter::repeat_n(true, out.tokens.len()));
                UpdateRow { ids, old_logp, mask, advantage: a as f32, ref_logp: None }
            })
            .collect();
        let scoring_s = scored.elapsed().as_secs_f64();
        let updated = Instant::now();
        // The whole batch in one micro-batch, as TRL's per-device batch of 64.
        let stats = policy_update(&model, &mut opt, &rows, &loss, 1.0, PAD, usize::MAX)?;
        agentcore_model::device::synchronize(&device)?;
        let update_s = updated.elapsed().as_secs_f64();
        let total = start.elapsed().as_secs_f64();
        let tokens: usize = outs.iter().map(|o| o.tokens.len()).sum();
        log.push((adv.reward_mean, stats.loss));
        if step >= s.warmup {
            iteration.push(total);
            generation.push(generated);
            scoring.push(scoring_s);
            logprobs.push(stats.forward_seconds);
            backward.push(update_s - stats.forward_seconds);
            gen_rates.push(tokens as f64 / generated);
            new_tokens += tokens;
        }
    }
    let timed = s.steps.max(1) * s.prompts * s.generations;
    let gen_tokens_per_s = Seconds::of(gen_rates).median;
    Ok(GrpoBenchReport {
        bench: "grpo_iteration".into(),
        threads: candle_core::utils::get_num_threads(),
        params: model.params().num_weights(),
        settings: s.clone(),
        iteration_s: Seconds::of(iteration),
        generation_s: Seconds::of(generation),
        scoring_s: Seconds::of(scoring),
        logprobs_s: Seconds::of(logprobs),
        backward_and_step_s: Seconds::of(backward),
        gen_tokens_per_s,
        mean_completion_tokens: new_tokens as f64 / timed.max(1) as f64,
        log,
    })
}

/// `agentcore bench update`: one LoRA update of a pretrained model (Gemma 3 270M) on
/// conversations of the real-model path's size, for its time and peak memory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpdateBenchSettings {
    /// Conversations in the update (the real-model run's 4 trajectories).
    pub rows: usize,
    /// Tokens per conversation (the real-model cap, 1,024).
    pub tokens: usize,
    /// Trained (model-written) tokens at the end of each conversation.
    pub completion: usize,
    /// Bytes of logits made at once ([`agentcore_model::generate::LOGIT_CHUNK_BYTES`]; `None`:
    /// the whole logits, as before chunking).
    pub logit_chunk_bytes: Option<usize>,
    /// Activation checkpointing (the trainer's default for pretrained models).
    pub activation_checkpointing: bool,
    /// Seed of the LoRA initialisation and the token ids.
    pub seed: u64,
    /// Where the model runs: `cpu` or `cuda[:N]`.
    #[serde(default = "agentcore_model::device::default_device")]
    pub device: String,
}

impl Default for UpdateBenchSettings {
    fn default() -> Self {
        Self {
            rows: 4,
            tokens: crate::defaults::CHAT_MAX_CONVERSATION_TOKENS as usize,
            completion: 192,
            logit_chunk_bytes: Some(agentcore_model::generate::LOGIT_CHUNK_BYTES),
            activation_checkpointing: crate::defaults::PRETRAINED_ACTIVATION_CHECKPOINTING,
            seed: 0,
            device: agentcore_model::device::default_device(),
        }
    }
}

/// What one update cost.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpdateBenchReport {
    /// `lora_update`.
    pub bench: String,
    /// The model file.
    pub model: String,
    /// The workload.
    pub settings: UpdateBenchSettings,
    /// Padded tokens per micro-batch (the trainer's budget for this vocabulary).
    pub token_budget: usize,
    /// The update's loss and gradient norm (equal with and without chunking).
    pub loss: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Seconds of the update (forward, backward, AdamW).
    pub update_s: f64,
    /// Seconds of its forward passes.
    pub forward_s: f64,
    /// Resident memory after loading the model, bytes (Linux `VmRSS`).
    pub rss_loaded_bytes: Option<u64>,
    /// Peak resident memory of the process after the update, bytes (Linux `VmHWM`).
    pub peak_rss_bytes: Option<u64>,
}

/// `VmRSS` / `VmHWM` of this process from `/proc/self/status`, bytes.
fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Runs one LoRA update (r 8 on q/k/v/o, the trainer's defaults) of the model at `path` on
/// `rows` random conversations.
///
/// # Errors
/// A model that does not load, model errors.
pub fn run_update_bench(
    path: &std::path::Path,
    s: &UpdateBenchSettings,
) -> Result<UpdateBenchReport, TrainError> {
    use agentcore_model::decoder::LoraConfig;
    let mut rng = ChaCha8Rng::seed_from_u64(s.seed);
    let device = agentcore_model::device::parse_device(&s.device)?;
    let mut loaded = agentcore_model::hub::load_model(path, false, &device)?;
    loaded.model.enable_lora(&LoraConfig::default(), &mut rng)?;
    loaded.model.set_logit_chunk_bytes(s.logit_chunk_bytes.unwrap_or(usize::MAX));
    loaded.model.set_activation_checkpointing(s.activation_checkpointing);
    let model = &loaded.model;
    let vocab = model.config().vocab_size as u32;
    let completion = s.completion.min(s.tokens.saturating_sub(1));
    let rows: Vec<UpdateRow> = (0..s.rows)
        .map(|r| {
            let ids: Vec<u32> = (0..s.tokens).map(|_| rng.random_range(3..vocab)).collect();
            let mask: Vec<bool> = (0..s.tokens).map(|t| t >= s.tokens - completion).collect();
            // Old log-probs of a policy a little off the current one: the ratio is not 1.
            let old_logp = (0..s.tokens).map(|_| -12.0 + rng.random_range(-0.1..0.1f32)).collect();
            let advantage = if r % 2 == 0 { 1.0 } else { -1.0 };
            UpdateRow { ids, old_logp, mask, advantage, ref_logp: None }
        })
        .collect();
    let rss_loaded_bytes = proc_status_bytes("VmRSS:");
    let mut opt = AdamW::new(
        model.params(),
        AdamWConfig { learning_rate: 1e-5, max_grad_norm: Some(1.0), ..AdamWConfig::default() },
    )?;
    let loss = LossSettings::from(&GRPOConfig::default());
    let token_budget = crate::defaults::update_token_budget(vocab as usize);
    let start = Instant::now();
    let stats = policy_update(model, &mut opt, &rows, &loss, 1.0, 0, token_budget)?;
    agentcore_model::device::synchronize(&device)?;
    let update_s = start.elapsed().as_secs_f64();
    Ok(UpdateBenchReport {
        bench: "lora_update".into(),
        model: path.display().to_string(),
        settings: s.clone(),
        token_budget,
        loss: stats.loss,
        grad_norm: stats.grad_norm,
        update_s,
        forward_s: stats.forward_seconds,
        rss_loaded_bytes,
        peak_rss_bytes: proc_status_bytes("VmHWM:"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_anchors_characters_and_reward() {
        // The anchor's vocabulary: 4 specials, then chr(32..127), then "\n".
        assert_eq!(character(0), None);
        assert_eq!(character(SPECIALS), Some(' '));
        assert_eq!(character(SPECIALS + 65), Some('a'));
        assert_eq!(character(SPECIALS + 94), Some('~'));
        assert_eq!(character(SPECIALS + 95), Some('\n'));
        assert_eq!(character(SPECIALS + 96), Some('\u{100}'));
        let a = SPECIALS + 65;
        let b = SPECIALS + 66;
        assert!((vowel_reward(&[a, b, b, a]) - 0.5).abs() < 1e-12);
        // Specials are not characters of the decoded text.
        assert!((vowel_reward(&[a, EOS, PAD]) - 1.0).abs() < 1e-12);
        assert!(vowel_reward(&[]).abs() < 1e-12);
    }

    #[test]
    fn an_iteration_samples_scores_and_steps_the_policy() {
        let settings = GrpoBenchSettings {
            warmup: 0,
            steps: 2,
            prompts: 2,
            generations: 4,
            max_completion: 8,
            ..GrpoBenchSettings::default()
        };
        let mut seen = Vec::new();
        let r = run_grpo_bench(&settings, |i, n| seen.push((i, n))).unwrap();
        assert_eq!(seen, vec![(1, 2), (2, 2)]);
        assert_eq!(r.params, 3_672_320);
        assert_eq!(r.iteration_s.all.len(), 2);
        for (i, t) in r.iteration_s.all.iter().enumerate() {
            let parts = r.generation_s.all[i]
                + r.scoring_s.all[i]
                + r.logprobs_s.all[i]
                + r.backward_and_step_s.all[i];
            assert!(parts <= *t + 1e-9 && parts > 0.5 * t, "{parts} of {t}");
            assert!(r.logprobs_s.all[i] > 0.0 && r.backward_and_step_s.all[i] > 0.0);
        }
        assert!(r.mean_completion_tokens > 0.0 && r.mean_completion_tokens <= 8.0);
        assert!(
            r.log.iter().all(|(reward, loss)| (0.0..=1.0).contains(reward) && loss.is_finite())
        );
    }
}
