//! The GRPO job of the embedded default: warm start, baseline on the held-out split, GRPO
//! iterations with real rollouts (in-process model, sandboxed python, verifier, rewards),
//! checkpoints (atomic; best 5 by validation plus the latest), early stopping, the budget,
//! cancellation, resume from the last complete checkpoint, and the final evaluation with
//! McNemar's exact test.
//!
//! A job lives in `<data_dir>/runs/<job_id>/`: `job.json` (its settings), `checkpoints/ckpt-NNNNN/`
//! (weights, optimizer moments, RNG state and `job_state.json`), and at the end `report.md` and
//! the learning curves (written by [`crate::report`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use agentcore_agent::backend::{InProcessBackend, Sampling};
use agentcore_agent::rollout::{AgentRuntime, CallFormat, run_batch};
use agentcore_agent::sandbox::PythonSandbox;
use agentcore_agent::tools::{PythonTool, Toolbox};
use agentcore_agent::trajectory::Trajectory;
use agentcore_fs::{write_atomic, write_dir_atomic};
use agentcore_grpo::GRPOConfig;
use agentcore_grpo::advantages::group_advantages;
use agentcore_grpo::budget::{Budget, BudgetState};
use agentcore_grpo::loss::LossSettings;
use agentcore_grpo::stats::{McNemarTest, mcnemar_exact, wilson_interval};
use agentcore_model::checkpoint::{checkpoint_files, load_checkpoint, restore_checkpoint};
use agentcore_model::decoder::{Decoder, LoraConfig};
use agentcore_model::hub::{LoadedModel, load_model};
use agentcore_model::optim::{AdamW, AdamWConfig};
use agentcore_model::tokenizer::{ByteTokenizer, SpecialToken, TextTokenizer};
use agentcore_tasks::Task;
use agentcore_tasks::judge::{RewardInput, RewardRegistry, Verifiers};
use agentcore_tasks::seed::{self, SplitSpec};
use candle_core::Device;
use rand::SeedableRng;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;
use rust_decimal::Decimal;
use rust_decimal::prelude::FromPrimitive;
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::update::{UpdateRow, policy_update};
use crate::warmstart::{WarmStartProgress, WarmStartSettings, warm_start};

/// Padded tokens of one micro-batch of the update.
const UPDATE_TOKEN_BUDGET: usize = 4096;
/// Checkpoints kept besides the latest: the best this many by validation success.
pub const KEEP_BEST_CHECKPOINTS: usize = 5;
/// The id the built-in agent is registered under.
pub const SEED_AGENT_ID: &str = "seed-agent";
/// The job-state file inside a checkpoint directory.
pub const JOB_STATE_FILE: &str = "job_state.json";
/// The settings file of a run directory.
pub const JOB_FILE: &str = "job.json";

/// Everything the job needs: saved as `job.json` in the run directory, so `--resume` runs the
/// same job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSettings {
    /// The GRPO config (iterations, batch, group size, learning rate, sampling, loss, seed ...).
    pub config: GRPOConfig,
    /// The warm start (model size, demonstrations, steps).
    pub warm_start: WarmStartSettings,
    /// Seed tasks generated for the job (split into train and held-out).
    pub n_tasks: usize,
    /// Share of each family held out for evaluation.
    pub eval_fraction: f64,
    /// Hardest task difficulty (1..=3).
    pub max_difficulty: u8,
    /// Price of one hour of this machine in US dollars: the cost of a local model is this
    /// times the job's wall time.
    pub price_per_hour_usd: Decimal,
    /// A pretrained model (GGUF file or Hugging Face directory) trained with LoRA instead of
    /// the warm-started built-in model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ExternalModel>,
    /// The reward function by its registry name: `outcome` (1 when verified, else 0; `shaped`
    /// when `reward_shaping.enabled`), `shaped`, `response_accuracy` (partial credit for a
    /// close answer), `code_quality`, `task_efficiency`.
    #[serde(default = "default_reward")]
    pub reward: String,
    /// The caller's tasks instead of the generated seed suite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<JobData>,
    /// A reward computed by an HTTP endpoint (the remote-reward protocol of
    /// [`agentcore_tasks::judge::remote_reward`]) instead of `reward`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_reward: Option<RemoteReward>,
}

/// A reward served over HTTP (e.g. a Python function registered with the SDK).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteReward {
    /// Its registry name.
    pub name: String,
    /// The endpoint: POST `{query, expected_outcome, final_answer, steps, success, ...}`,
    /// answer `{"score": number}`.
    pub url: String,
    /// The endpoint may be on a loopback or private address.
    #[serde(default)]
    pub allow_private: bool,
}

/// A job's own tasks (the guide's `training_data` / `evaluation_data`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobData {
    /// Training tasks (at least [`agentcore_tasks::data::MIN_TRAINING_TASKS`]).
    pub train: Vec<Task>,
    /// Held-out tasks; when empty, a seeded `eval_fraction` of `train` (per family) is held out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub eval: Vec<Task>,
}

fn default_reward() -> String {
    "outcome".into()
}

/// A pretrained policy: loaded dequantized to f32, frozen, with LoRA adapters trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalModel {
    /// A `.gguf` file or a Hugging Face model directory.
    pub path: PathBuf,
    /// The adapters.
    #[serde(default)]
    pub lora: LoraConfig,
    /// The system prompt of the agent.
    #[serde(default = "default_system_prompt")]
    pub system_prompt: String,
}

impl ExternalModel {
    /// `path` with default LoRA settings and the default system prompt.
    #[must_use]
    pub fn default_for(path: PathBuf) -> Self {
        Self { path, lora: LoraConfig::default(), system_prompt: default_system_prompt() }
    }
}

/// Two worked examples of the call format. A small pretrained model (Gemma 3 270M) does not
/// follow instructions alone: told to call the tool, it wrote prose in 32 of 32 samples (0
/// calls, 0 correct); with these examples it called the tool in 10 of 32 and answered 2
/// correctly (llama.cpp, temperature 1, 8 seed-suite tasks x 4 samples), so groups get a
/// spread of rewards to learn from.
fn default_system_prompt() -> String {
    r#"Solve each task with the python tool. Examples:

Task: Compute the product of [3, 4, 2]
<tool_call>{"name": "python", "arguments": {"code": "print(3 * 4 * 2)"}}</tool_call>
<tool_response>
24
</tool_response>
<answer>24</answer>

Task: Find the minimum value in [7, 1, 9]
<tool_call>{"name": "python", "arguments": {"code": "print(min([7, 1, 9]))"}}</tool_call>
<tool_response>
1
</tool_response>
<answer>1</answer>"#
        .into()
}

impl Default for JobSettings {
    fn default() -> Self {
        Self {
            config: GRPOConfig::default(),
            warm_start: WarmStartSettings::default(),
            n_tasks: 1200,
            eval_fraction: 0.2,
            max_difficulty: 2,
            price_per_hour_usd: Decimal::new(10, 2),
            model: None,
            reward: default_reward(),
            data: None,
            remote_reward: None,
        }
    }
}

impl JobSettings {
    /// Problems that stop the job before any work: each names the field, the rule and the value.
    #[must_use]
    pub fn violations(&self) -> Vec<String> {
        let mut out: Vec<String> =
            self.config.violations().iter().map(ToString::to_string).collect();
        if self.n_tasks < 2 {
            out.push(format!("n_tasks must be >= 2, got {}", self.n_tasks));
        }
        if !(self.eval_fraction > 0.0 && self.eval_fraction < 1.0) {
            out.push(format!("eval_fraction must be in (0, 1), got {}", self.eval_fraction));
        }
        if !(1..=3).contains(&self.max_difficulty) {
            out.push(format!("max_difficulty must be in 1..=3, got {}", self.max_difficulty));
        }
        if self.price_per_hour_usd < Decimal::ZERO {
            out.push(format!("price_per_hour_usd must be >= 0, got {}", self.price_per_hour_usd));
        }
        let mut registry = RewardRegistry::with_builtins(self.config.reward_shaping.clone());
        if let Err(e) = registry.set_default(&self.reward) {
            out.push(format!("reward: {e}"));
        }
        if let Some(m) = &self.model {
            if !m.path.exists() {
                out.push(format!("model.path {} does not exist", m.path.display()));
            }
            if let Err(e) = m.lora.validate() {
                out.push(format!("model.lora: {e}"));
            }
        }
        if let Some(d) = &self.data {
            let min = agentcore_tasks::data::MIN_TRAINING_TASKS;
            if d.train.len() < min {
                out.push(format!(
                    "data.train must have at least {min} queries, got {}",
                    d.train.len()
                ));
            }
            for (name, tasks) in [("train", &d.train), ("eval", &d.eval)] {
                if let Some(i) = tasks.iter().position(|t| t.query.trim().is_empty()) {
                    out.push(format!("data.{name}[{i}].query must be a non-empty string"));
                }
            }
        }
        if self.warm_start.model.max_seq_len < 64 {
            out.push(format!(
                "warm_start.model.max_seq_len must be >= 64, got {}",
                self.warm_start.model.max_seq_len
            ));
        }
        out
    }
}

/// Where and as what the job runs.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// The data directory (warm-start cache, `runs/`).
    pub data_dir: PathBuf,
    /// The job's id (a UUID for new jobs).
    pub job_id: String,
    /// Set to stop after the current iteration with a checkpoint (Ctrl-C).
    pub stop: Arc<AtomicBool>,
}

impl JobContext {
    /// The run directory of the job.
    #[must_use]
    pub fn run_dir(&self) -> PathBuf {
        run_dir(&self.data_dir, &self.job_id)
    }
}

/// The agent a job trains: `seed-agent` (the built-in model), or `<model file stem>-agent` for a
/// pretrained model.
#[must_use]
pub fn agent_id(settings: &JobSettings) -> String {
    match &settings.model {
        None => SEED_AGENT_ID.to_string(),
        Some(m) => format!(
            "{}-agent",
            m.path.file_stem().map_or_else(|| "model".into(), |s| s.to_string_lossy())
        ),
    }
}

/// `<data_dir>/runs/<job_id>`.
#[must_use]
pub fn run_dir(data_dir: &Path, job_id: &str) -> PathBuf {
    data_dir.join("runs").join(job_id)
}

/// Per-iteration metrics (TRL's names and the guide's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IterationMetrics {
    /// 1-based.
    pub iteration: u32,
    /// The loss minimised.
    pub train_loss: f64,
    /// Mean reward.
    pub avg_reward: f64,
    /// Std of rewards over the batch.
    pub reward_std: f64,
    /// Share of groups whose rewards were all equal.
    pub frac_reward_zero_std: f64,
    /// Share of trajectories the verifier accepted.
    pub success_rate: f64,
    /// k3 KL to the reference (when `beta > 0`).
    pub kl: Option<f64>,
    /// Clip fractions.
    #[serde(rename = "clip_ratio/region_mean")]
    pub clip_ratio: f64,
    /// Mean sampled tokens per trajectory.
    #[serde(rename = "completions/mean_length")]
    pub mean_length: f64,
    /// Share of tool calls without error.
    pub tool_accuracy: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Sampled tokens per second of rollout.
    pub rollout_tokens_per_s: f64,
    /// Seconds generating and running tools.
    pub rollout_seconds: f64,
    /// Seconds scoring and updating.
    pub update_seconds: f64,
    /// Held-out success when evaluated this iteration.
    pub eval_success_rate: Option<f64>,
    /// Dollars spent by the job so far.
    pub cost_usd: Decimal,
}

/// Why the job stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// All iterations ran.
    Completed,
    /// Validation did not improve for `early_stopping_patience` evaluations.
    EarlyStopped,
    /// The next iteration would have exceeded `max_budget_usd`.
    BudgetExhausted,
    /// Stopped by the user (Ctrl-C, cancel).
    Cancelled,
}

impl StopReason {
    /// The snake-case name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::EarlyStopped => "early_stopped",
            Self::BudgetExhausted => "budget_exhausted",
            Self::Cancelled => "cancelled",
        }
    }
}

/// A saved checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    /// `<job_id>-ckpt-NNNNN`.
    pub checkpoint_id: String,
    /// Iteration after which it was taken.
    pub iteration: u32,
    /// Its directory.
    pub path: PathBuf,
    /// The latest validation success at or before that iteration (None before the first).
    pub eval_success_rate: Option<f64>,
    /// Seconds writing it took (in the `checkpoint` event; 0 in the saved job state).
    #[serde(default)]
    pub save_seconds: f64,
}

/// The job's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The job.
    pub job_id: String,
    /// The agent trained.
    pub agent_id: String,
    /// Held-out success of the warm-started model.
    pub baseline_success_rate: f64,
    /// Held-out success after GRPO.
    pub final_success_rate: f64,
    /// Wilson 95% interval of the baseline.
    pub baseline_interval: (f64, f64),
    /// Wilson 95% interval of the final.
    pub final_interval: (f64, f64),
    /// McNemar's exact p-value (paired, same queries).
    pub p_value: f64,
    /// The paired counts.
    pub mcnemar: McNemarTest,
    /// Held-out queries.
    pub eval_queries: usize,
    /// Training tasks.
    pub train_queries: usize,
    /// Iterations run.
    pub iterations: u32,
    /// Why the job stopped.
    pub stop_reason: StopReason,
    /// Wall time of the whole job (all attempts when resumed).
    pub wall_seconds: f64,
    /// Of which warm start (0 when cached).
    pub warm_start_seconds: f64,
    /// Whether the warm start came from the cache.
    pub warm_start_cached: bool,
    /// Dollars spent.
    pub cost_usd: Decimal,
    /// The budget.
    pub budget_usd: Decimal,
    /// The checkpoint with the best validation success.
    pub best_checkpoint_id: Option<String>,
    /// Its validation success.
    pub best_eval_success_rate: Option<f64>,
    /// Held-out success per task family: (baseline, final).
    pub per_family: std::collections::BTreeMap<String, (f64, f64)>,
    /// The run directory.
    pub run_dir: PathBuf,
}

/// One trajectory of an iteration with its verdict, reward and advantage (what the store keeps).
#[derive(Debug, Clone, Serialize)]
pub struct RolloutRecord {
    /// Index of the query in the batch.
    pub query_index: usize,
    /// Index of the sample in the group.
    pub sample_index: usize,
    /// The expected outcome.
    pub expected_outcome: serde_json::Value,
    /// Whether the verifier accepted the final answer.
    pub success: bool,
    /// The reward.
    pub reward: f64,
    /// Its advantage.
    pub advantage: f64,
    /// The trajectory (steps, token-exact trace, usage).
    pub trajectory: Trajectory,
}

/// What the job reports as it runs.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A warm-start step.
    WarmStart(WarmStartProgress),
    /// The job runs (fresh or resumed).
    Started {
        /// The job.
        job_id: String,
        /// Its run directory.
        run_dir: PathBuf,
        /// The checkpoint's iteration it resumed from.
        resumed_from: Option<u32>,
        /// Iterations configured.
        total_iterations: u32,
        /// The settings.
        settings: Box<JobSettings>,
    },
    /// The baseline evaluation.
    Baseline {
        /// Held-out success.
        success_rate: f64,
        /// Queries.
        eval_queries: usize,
    },
    /// The trajectories of an iteration (not printed; the store keeps them).
    Rollouts {
        /// The iteration.
        iteration: u32,
        /// Its trajectories.
        records: Vec<RolloutRecord>,
    },
    /// An iteration.
    Iteration(IterationMetrics),
    /// A checkpoint was written.
    Checkpoint(CheckpointInfo),
    /// A checkpoint fell out of the retained set and was deleted.
    CheckpointRemoved {
        /// Its id.
        checkpoint_id: String,
    },
    /// The budget crossed 75%, 90% or 100%.
    Budget {
        /// `warning_75`, `warning_90`, `exceeded`.
        state: BudgetState,
        /// Spent so far.
        spent_usd: Decimal,
        /// The budget.
        budget_usd: Decimal,
    },
    /// The end.
    Done(Box<Summary>),
}

/// What a checkpoint carries besides the model: everything to continue the job exactly.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct JobState {
    iteration: u32,
    baseline: Vec<bool>,
    history: Vec<IterationMetrics>,
    evals: Vec<(u32, f64)>,
    best_eval: Option<f64>,
    evals_since_best: u32,
    checkpoints: Vec<CheckpointInfo>,
    wall_seconds: f64,
    warm_start_seconds: f64,
    warm_start_cached: bool,
    api_cost_usd: Decimal,
    stop_reason: Option<StopReason>,
}

/// Test hook: `AGENTCORE_CRASH_AT=<point>:<iteration>` aborts the process (as a kill -9 would:
/// no destructors, no flush) at `rollout`, `update` or `checkpoint` (half-way through writing
/// the checkpoint's files) of that iteration.
fn crash_point(point: &str, iteration: u32) {
    if let Ok(spec) = std::env::var("AGENTCORE_CRASH_AT")
        && spec == format!("{point}:{iteration}")
    {
        std::process::abort();
    }
}

/// How the agent talks: the built-in model's tag format, or a chat model's Hermes tool calls
/// under a system prompt.
#[derive(Debug, Clone)]
pub struct AgentStyle {
    /// The call format.
    pub format: CallFormat,
    /// The system prompt.
    pub system_prompt: String,
    /// Most tokens of a whole conversation, prompt included.
    pub max_tokens: u64,
}

impl AgentStyle {
    /// The style of a job's agent.
    #[must_use]
    pub fn of(settings: &JobSettings) -> Self {
        match &settings.model {
            // The built-in model's conversations are short: a query, a call, a result, an answer.
            None => {
                Self { format: CallFormat::Tags, system_prompt: String::new(), max_tokens: 200 }
            }
            // A chat model's prompt (system prompt with examples, the tool's schema) alone is
            // some 330 tokens for Gemma 3.
            Some(m) => Self {
                format: CallFormat::Hermes,
                system_prompt: m.system_prompt.clone(),
                max_tokens: 1024,
            },
        }
    }
}

fn runtime(
    sandbox: &Arc<PythonSandbox>,
    style: &AgentStyle,
    sampling: Sampling,
    max_steps: u32,
) -> AgentRuntime {
    let mut toolbox = Toolbox::new();
    toolbox.add(Arc::new(PythonTool::new(Arc::clone(sandbox)))).expect("one tool");
    let mut rt = AgentRuntime::new(toolbox, style.format);
    rt.system_prompt = style.system_prompt.clone();
    rt.sampling = sampling;
    rt.max_steps = max_steps;
    rt.max_tokens = style.max_tokens;
    // Tool output is context the small model must carry: keep it short (tracebacks keep their
    // last line, which names the error).
    rt.max_observation_chars = 100;
    rt
}

/// The policy of a job before training: the warm-started built-in model (trained or from the
/// cache), or the pretrained model with fresh LoRA adapters. Returns the model and whether the
/// warm start came from the cache.
///
/// # Errors
/// Model or file errors.
pub fn initial_policy(
    settings: &JobSettings,
    data_dir: &Path,
    sandbox: &PythonSandbox,
    progress: &mut dyn FnMut(WarmStartProgress),
) -> Result<(LoadedModel, bool), TrainError> {
    match &settings.model {
        None => {
            let (model, _dir, cached) =
                warm_start(&settings.warm_start, data_dir, sandbox, progress)?;
            Ok((loaded(model), cached))
        }
        Some(m) => Ok((lora_policy(settings, m)?, true)),
    }
}

/// The pretrained model, frozen, with fresh LoRA adapters (initial values from the job's seed;
/// B starts at 0 anyway).
fn lora_policy(settings: &JobSettings, m: &ExternalModel) -> Result<LoadedModel, TrainError> {
    let mut model = load_model(&m.path, false, &Device::Cpu)?;
    let mut rng = ChaCha8Rng::seed_from_u64(settings.config.seed ^ 0x10_7a);
    model.model.enable_lora(&m.lora, &mut rng)?;
    Ok(model)
}

/// The policy of a checkpoint of a job.
///
/// # Errors
/// Model or file errors, a checkpoint of another model.
pub fn checkpoint_policy(
    settings: &JobSettings,
    dir: &Path,
) -> Result<(LoadedModel, AdamW, ChaCha8Rng), TrainError> {
    match &settings.model {
        None => {
            let ck = load_checkpoint(dir, &Device::Cpu)?;
            Ok((loaded(ck.model), ck.optimizer, ck.rng))
        }
        Some(m) => {
            let model = lora_policy(settings, m)?;
            let (opt, rng, _) = restore_checkpoint(dir, &model.model)?;
            Ok((model, opt, rng))
        }
    }
}

/// The built-in model with the byte tokenizer.
#[must_use]
pub fn loaded(model: Decoder) -> LoadedModel {
    let tok = ByteTokenizer::new();
    LoadedModel {
        model,
        tokenizer: TextTokenizer::Byte(tok.clone()),
        chat_template: None,
        stop_token_ids: vec![tok.special(SpecialToken::Eos)],
        source: "built-in".into(),
    }
}

/// The learning rate of optimizer step `step` (0-based): linear warm-up over `warmup_steps`,
/// then constant.
#[must_use]
pub fn learning_rate_at(config: &GRPOConfig, step: u64) -> f64 {
    let warmup = u64::from(config.warmup_steps);
    if step < warmup {
        config.learning_rate * (step + 1) as f64 / (warmup + 1) as f64
    } else {
        config.learning_rate
    }
}

/// One evaluated query.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EvalOutcome {
    /// The verifier accepted the answer.
    pub passed: bool,
    /// The outcome reward.
    pub reward: f64,
    /// Agent steps taken.
    pub steps: usize,
    /// Tool calls.
    pub tool_calls: u32,
    /// Tool calls without error.
    pub successful_tool_calls: u32,
}

/// Greedy evaluation of `tasks`.
///
/// # Errors
/// Model errors.
pub fn evaluate(
    model: &LoadedModel,
    style: &AgentStyle,
    sandbox: &Arc<PythonSandbox>,
    tasks: &[Task],
    verifiers: &Verifiers,
    max_steps: u32,
) -> Result<Vec<EvalOutcome>, TrainError> {
    let backend = InProcessBackend::new(model).map_err(|e| TrainError::Job(e.0))?;
    let sampling = Sampling { temperature: 0.0, top_p: 1.0, top_k: None, max_tokens_per_turn: 96 };
    let rt = runtime(sandbox, style, sampling, max_steps);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let registry = RewardRegistry::with_builtins(agentcore_grpo::rewards::RewardShaping::default());
    let mut out = Vec::with_capacity(tasks.len());
    for chunk in tasks.chunks(128) {
        let queries: Vec<String> = chunk.iter().map(|t| t.query.clone()).collect();
        let trajs = run_batch(&rt, &backend, &queries, &mut rng);
        for (t, tr) in chunk.iter().zip(&trajs) {
            let verdict = verifiers.verify(t, tr);
            let reward = registry
                .reward(
                    "seed",
                    &RewardInput { task: t, trajectory: tr, verdict: &verdict, max_steps },
                )
                .map_err(|e| TrainError::Job(e.to_string()))?;
            out.push(EvalOutcome {
                passed: verdict.passed,
                reward,
                steps: tr.steps.len(),
                tool_calls: tr.tool_calls,
                successful_tool_calls: tr.successful_tool_calls,
            });
        }
    }
    Ok(out)
}

/// `n` seed tasks with difficulties 1..=`max_difficulty` in equal shares.
///
/// # Errors
/// A difficulty outside 1..=3.
pub fn seed_tasks(n: usize, seed: u64, max_difficulty: u8) -> Result<Vec<Task>, TrainError> {
    let levels = usize::from(max_difficulty.max(1));
    let mut out = Vec::with_capacity(n);
    for (k, d) in (1..=max_difficulty.max(1)).enumerate() {
        let share = n / levels + usize::from(k < n % levels);
        out.extend(seed::generate(share, seed.wrapping_add(k as u64), Some(d))?);
    }
    Ok(out)
}

/// The job's train and held-out tasks.
///
/// # Errors
/// Bad task settings, an empty split.
pub fn job_tasks(settings: &JobSettings) -> Result<(Vec<Task>, Vec<Task>), TrainError> {
    let tasks = match &settings.data {
        Some(d) if !d.eval.is_empty() => return Ok((d.train.clone(), d.eval.clone())),
        Some(d) => d.train.clone(),
        None => seed_tasks(settings.n_tasks, settings.config.seed, settings.max_difficulty)?,
    };
    let split = seed::split(
        tasks,
        &SplitSpec::Stratified {
            eval_fraction: settings.eval_fraction,
            seed: settings.config.seed,
        },
    )?;
    if split.train.is_empty() || split.eval.is_empty() {
        return Err(TrainError::Job(format!(
            "the split of n_tasks = {} with eval_fraction = {} left no training or no \
             evaluation tasks",
            settings.n_tasks, settings.eval_fraction
        )));
    }
    Ok((split.train, split.eval))
}

fn rate(xs: &[bool]) -> f64 {
    xs.iter().filter(|&&x| x).count() as f64 / xs.len().max(1) as f64
}

fn passed(xs: &[EvalOutcome]) -> Vec<bool> {
    xs.iter().map(|o| o.passed).collect()
}

fn usd(seconds: f64, price_per_hour: Decimal) -> Decimal {
    let hours = Decimal::from_f64(seconds / 3600.0).unwrap_or(Decimal::ZERO);
    (hours * price_per_hour).round_dp(6)
}

/// The last complete checkpoint of a run directory (directories being written are `.tmp-*` and
/// are ignored), with its job state.
fn latest_checkpoint(run_dir: &Path) -> Result<Option<(PathBuf, JobState)>, TrainError> {
    let dir = run_dir.join("checkpoints");
    let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(None) };
    let mut found: Vec<(u32, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n: u32 = name.strip_prefix("ckpt-")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    found.sort();
    for (_, path) in found.into_iter().rev() {
        let Ok(bytes) = std::fs::read(path.join(JOB_STATE_FILE)) else { continue };
        let state: JobState = serde_json::from_slice(&bytes).map_err(|e| {
            TrainError::Job(format!("{}: {e}", path.join(JOB_STATE_FILE).display()))
        })?;
        return Ok(Some((path, state)));
    }
    Ok(None)
}

/// Reads `job.json` of a run directory.
///
/// # Errors
/// No such job, an unreadable file.
pub fn read_job_settings(data_dir: &Path, job_id: &str) -> Result<JobSettings, TrainError> {
    let path = run_dir(data_dir, job_id).join(JOB_FILE);
    let bytes = std::fs::read(&path).map_err(|e| {
        TrainError::Job(format!("no job `{job_id}` in {}: {e}", data_dir.join("runs").display()))
    })?;
    serde_json::from_slice(&bytes).map_err(|e| TrainError::Job(format!("{}: {e}", path.display())))
}

/// The iteration of the last complete checkpoint of a job (where `--resume` continues).
///
/// # Errors
/// An unreadable job state.
pub fn resume_point(data_dir: &Path, job_id: &str) -> Result<Option<u32>, TrainError> {
    Ok(latest_checkpoint(&run_dir(data_dir, job_id))?.map(|(_, s)| s.iteration))
}

/// The checkpoints of a finished or running job, newest last.
///
/// # Errors
/// An unreadable job state.
pub fn list_checkpoints(data_dir: &Path, job_id: &str) -> Result<Vec<CheckpointInfo>, TrainError> {
    Ok(latest_checkpoint(&run_dir(data_dir, job_id))?
        .map(|(_, s)| s.checkpoints)
        .unwrap_or_default())
}

fn save(
    ctx: &JobContext,
    base_model: &str,
    model: &Decoder,
    opt: &AdamW,
    rng: &ChaCha8Rng,
    state: &mut JobState,
    on_event: &mut dyn FnMut(&Event),
) -> Result<(), TrainError> {
    let iteration = state.iteration;
    let path = ctx.run_dir().join("checkpoints").join(format!("ckpt-{iteration:05}"));
    let info = CheckpointInfo {
        checkpoint_id: format!("{}-ckpt-{iteration:05}", ctx.job_id),
        iteration,
        path: path.clone(),
        eval_success_rate: state.evals.last().map(|e| e.1),
        save_seconds: 0.0,
    };
    let save_started = Instant::now();
    // Retention: the best KEEP_BEST_CHECKPOINTS by validation, plus this one (the latest).
    state.checkpoints.retain(|c| c.iteration != iteration);
    state.checkpoints.push(info.clone());
    let mut ranked: Vec<&CheckpointInfo> =
        state.checkpoints.iter().filter(|c| c.iteration != iteration).collect();
    ranked.sort_by(|a, b| {
        b.eval_success_rate
            .unwrap_or(-1.0)
            .total_cmp(&a.eval_success_rate.unwrap_or(-1.0))
            .then(b.iteration.cmp(&a.iteration))
    });
    let dropped: Vec<CheckpointInfo> =
        ranked.iter().skip(KEEP_BEST_CHECKPOINTS).map(|c| (*c).clone()).collect();
    state.checkpoints.retain(|c| !dropped.iter().any(|d| d.iteration == c.iteration));
    let files = checkpoint_files(model, opt, rng, base_model)?;
    let job_state =
        serde_json::to_vec_pretty(state).map_err(|e| TrainError::Job(format!("job state: {e}")))?;
    write_dir_atomic(&path, |tmp| -> Result<(), TrainError> {
        for (k, (name, bytes)) in files.iter().enumerate() {
            write_atomic(&tmp.join(name), bytes)?;
            if k == 0 {
                crash_point("checkpoint", iteration);
            }
        }
        write_atomic(&tmp.join(JOB_STATE_FILE), &job_state)?;
        Ok(())
    })?;
    on_event(&Event::Checkpoint(CheckpointInfo {
        save_seconds: save_started.elapsed().as_secs_f64(),
        ..info
    }));
    // Only after the new checkpoint is complete may the old ones go.
    for d in dropped {
        let _ = std::fs::remove_dir_all(&d.path);
        on_event(&Event::CheckpointRemoved { checkpoint_id: d.checkpoint_id });
    }
    Ok(())
}

/// The best checkpoint of a job state: highest validation success, the later on ties.
pub fn best_checkpoint(checkpoints: &[CheckpointInfo]) -> Option<&CheckpointInfo> {
    checkpoints.iter().filter(|c| c.eval_success_rate.is_some()).max_by(|a, b| {
        a.eval_success_rate
            .unwrap_or(0.0)
            .total_cmp(&b.eval_success_rate.unwrap_or(0.0))
            .then(a.iteration.cmp(&b.iteration))
    })
}

/// Runs the job: a new one, or (when its run directory has a checkpoint) the continuation of an
/// interrupted one from its last complete checkpoint; with the same settings both give the same
/// weights.
///
/// # Errors
/// Bad settings (before any work), model errors, file errors.
pub fn run(
    settings: &JobSettings,
    ctx: &JobContext,
    sandbox: Arc<PythonSandbox>,
    on_event: &mut dyn FnMut(&Event),
) -> Result<Summary, TrainError> {
    let started = Instant::now();
    let problems = settings.violations();
    if !problems.is_empty() {
        return Err(TrainError::Job(format!("invalid job settings: {}", problems.join("; "))));
    }
    let config = &settings.config;
    let (train, eval) = job_tasks(settings)?;
    let run_dir = ctx.run_dir();
    std::fs::create_dir_all(&run_dir)
        .map_err(|e| TrainError::Job(format!("{}: {e}", run_dir.display())))?;
    let job_file = run_dir.join(JOB_FILE);
    if job_file.is_file() {
        let saved = read_job_settings(&ctx.data_dir, &ctx.job_id)?;
        if &saved != settings {
            return Err(TrainError::Job(format!(
                "job `{}` exists with other settings ({}); resume it without changing them",
                ctx.job_id,
                job_file.display()
            )));
        }
    } else {
        let bytes = serde_json::to_vec_pretty(settings)
            .map_err(|e| TrainError::Job(format!("job settings: {e}")))?;
        write_atomic(&job_file, &bytes)?;
    }
    let verifiers = Verifiers { sandbox: Some(Arc::clone(&sandbox)), ..Verifiers::default() };
    let max_steps = config.max_steps_per_trajectory.min(4);
    let style = AgentStyle::of(settings);
    let base_model =
        settings.model.as_ref().map(|m| m.path.display().to_string()).unwrap_or_default();

    let resumed = latest_checkpoint(&run_dir)?;
    let resumed_from = resumed.as_ref().map(|(_, s)| s.iteration);
    let (model, mut opt, mut rng, mut state) = match resumed {
        Some((dir, mut state)) => {
            let (model, opt, rng) = checkpoint_policy(settings, &dir)?;
            // A cancelled job continues when resumed; other stops are final.
            if state.stop_reason == Some(StopReason::Cancelled) {
                state.stop_reason = None;
            }
            (model, opt, rng, state)
        }
        None => {
            let ws_start = Instant::now();
            let (model, cached) = initial_policy(settings, &ctx.data_dir, &sandbox, &mut |p| {
                on_event(&Event::WarmStart(p));
            })?;
            let opt = AdamW::new(
                model.model.params(),
                AdamWConfig {
                    learning_rate: config.learning_rate,
                    max_grad_norm: Some(config.max_grad_norm),
                    ..AdamWConfig::default()
                },
            )?;
            let state = JobState {
                iteration: 0,
                baseline: Vec::new(),
                history: Vec::new(),
                evals: Vec::new(),
                best_eval: None,
                evals_since_best: 0,
                checkpoints: Vec::new(),
                wall_seconds: 0.0,
                warm_start_seconds: if cached { 0.0 } else { ws_start.elapsed().as_secs_f64() },
                warm_start_cached: cached,
                api_cost_usd: Decimal::ZERO,
                stop_reason: None,
            };
            (model, opt, ChaCha8Rng::seed_from_u64(config.seed), state)
        }
    };
    on_event(&Event::Started {
        job_id: ctx.job_id.clone(),
        run_dir: run_dir.clone(),
        resumed_from,
        total_iterations: config.n_iterations,
        settings: Box::new(settings.clone()),
    });
    let wall_before = state.wall_seconds;
    let wall = |state_started: &Instant| wall_before + state_started.elapsed().as_secs_f64();
    let spent = |seconds: f64, api: Decimal| usd(seconds, settings.price_per_hour_usd) + api;
    if state.baseline.is_empty() {
        state.baseline = passed(&evaluate(&model, &style, &sandbox, &eval, &verifiers, max_steps)?);
    }
    on_event(&Event::Baseline { success_rate: rate(&state.baseline), eval_queries: eval.len() });

    let mut registry = RewardRegistry::with_builtins(config.reward_shaping.clone());
    let reward_name = if config.reward_shaping.enabled && settings.reward == "outcome" {
        "shaped"
    } else {
        settings.reward.as_str()
    };
    match &settings.remote_reward {
        Some(r) => {
            let f = agentcore_tasks::judge::remote_reward(
                &r.url,
                std::time::Duration::from_secs(30),
                r.allow_private,
            );
            registry.register(&r.name, f).map_err(|e| TrainError::Job(e.to_string()))?;
            registry.set_default(&r.name).map_err(|e| TrainError::Job(e.to_string()))?;
        }
        None => registry.set_default(reward_name).map_err(|e| TrainError::Job(e.to_string()))?,
    }
    let loss_settings = LossSettings::from(config);
    let sampling = Sampling {
        temperature: config.temperature,
        top_p: config.top_p,
        top_k: config.top_k.map(|k| k as usize),
        max_tokens_per_turn: config.max_completion_length as usize,
    };
    let group = config.n_trajectories_per_query as usize;
    let batch = (config.batch_size as usize).min(train.len());
    // Padding is masked out of the loss; any id of the vocabulary will do.
    let pad = if settings.model.is_some() {
        model.stop_token_ids.first().copied().unwrap_or(0)
    } else {
        ByteTokenizer::new().special(SpecialToken::Pad)
    };
    // Micro-batches hold the logits of every position: fewer tokens for large vocabularies.
    let token_budget =
        (UPDATE_TOKEN_BUDGET * 512 / model.model.config().vocab_size.max(1)).max(256);
    let max_len = model.model.config().max_seq_len;
    let mut budget = Budget::with_spent(
        config.max_budget_usd,
        spent(wall(&started), state.api_cost_usd).min(config.max_budget_usd),
    )?;
    let mut last_eval: Option<(u32, Vec<EvalOutcome>)> = None;
    while state.stop_reason.is_none() && state.iteration < config.n_iterations {
        // Budget: the next iteration must fit (estimated from the mean iteration so far).
        let iteration_seconds = if state.history.is_empty() {
            0.0
        } else {
            state.history.iter().map(|m| m.rollout_seconds + m.update_seconds).sum::<f64>()
                / state.history.len() as f64
        };
        let now_spent = spent(wall(&started), state.api_cost_usd);
        let next = usd(iteration_seconds, settings.price_per_hour_usd);
        if now_spent + next > config.max_budget_usd {
            state.stop_reason = Some(StopReason::BudgetExhausted);
            break;
        }
        let iteration = state.iteration + 1;
        // Rollouts.
        let t0 = Instant::now();
        let picked: Vec<usize> = sample(&mut rng, train.len(), batch).into_vec();
        let batch_tasks: Vec<&Task> = picked.iter().map(|&i| &train[i]).collect();
        let queries: Vec<String> =
            batch_tasks.iter().flat_map(|t| std::iter::repeat_n(t.query.clone(), group)).collect();
        let backend = InProcessBackend::new(&model).map_err(|e| TrainError::Job(e.0))?;
        let rt = runtime(&sandbox, &style, sampling.clone(), max_steps);
        let trajs: Vec<Trajectory> = run_batch(&rt, &backend, &queries, &mut rng);
        crash_point("rollout", iteration);
        let rollout_seconds = t0.elapsed().as_secs_f64();
        // Verification and rewards.
        let t1 = Instant::now();
        let mut rewards = Vec::with_capacity(trajs.len());
        let mut verdicts = Vec::with_capacity(trajs.len());
        for (k, tr) in trajs.iter().enumerate() {
            let task = batch_tasks[k / group];
            let verdict = verifiers.verify(task, tr);
            let r = registry
                .reward("seed", &RewardInput { task, trajectory: tr, verdict: &verdict, max_steps })
                .map_err(|e| TrainError::Job(e.to_string()))?;
            verdicts.push(verdict.passed);
            rewards.push(r);
        }
        let successes = verdicts.iter().filter(|&&p| p).count();
        let grouped: Vec<Vec<f64>> = rewards.chunks(group).map(<[f64]>::to_vec).collect();
        let adv = group_advantages(&grouped, config.advantage_estimator, config.scale_rewards)?;
        // The loss over sampled tokens only.
        let rows: Vec<UpdateRow> = trajs
            .iter()
            .enumerate()
            .filter_map(|(k, t)| {
                let tr = t.tokens.as_ref()?;
                (tr.ids.len() >= 2 && tr.ids.len() <= max_len && tr.sampled_len() > 0).then(|| {
                    UpdateRow {
                        ids: tr.ids.clone(),
                        old_logp: tr.logprobs.clone(),
                        mask: tr.mask.iter().map(|&m| m == 1).collect(),
                        advantage: adv.advantages[k / group][k % group] as f32,
                        ref_logp: None,
                    }
                })
            })
            .collect();
        let temperature = if config.temperature > 0.0 { config.temperature } else { 1.0 };
        // `num_iterations` steps on the same rollouts; the first one's loss and clip fraction
        // are the ones reported (later steps see a policy that moved).
        let mut stats = None;
        for _ in 0..config.num_iterations.max(1) {
            opt.set_learning_rate(learning_rate_at(config, opt.step_count()));
            let s = policy_update(
                &model.model,
                &mut opt,
                &rows,
                &loss_settings,
                temperature,
                pad,
                token_budget,
            )?;
            stats.get_or_insert(s);
        }
        let stats = stats.unwrap_or_default();
        crash_point("update", iteration);
        let update_seconds = t1.elapsed().as_secs_f64();
        let n = rewards.len() as f64;
        let mean = rewards.iter().sum::<f64>() / n;
        let std = (rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
        let sampled: usize =
            trajs.iter().filter_map(|t| t.tokens.as_ref()).map(|t| t.sampled_len()).sum();
        let (calls, ok_calls) = trajs
            .iter()
            .fold((0u32, 0u32), |(a, b), t| (a + t.tool_calls, b + t.successful_tool_calls));
        state.api_cost_usd += trajs.iter().map(|t| t.cost_usd).sum::<Decimal>();
        let records: Vec<RolloutRecord> = trajs
            .into_iter()
            .enumerate()
            .map(|(k, trajectory)| RolloutRecord {
                query_index: k / group,
                sample_index: k % group,
                expected_outcome: serde_json::Value::Object(
                    batch_tasks[k / group].expected_outcome.clone(),
                ),
                success: verdicts[k],
                reward: rewards[k],
                advantage: adv.advantages[k / group][k % group],
                trajectory,
            })
            .collect();
        on_event(&Event::Rollouts { iteration, records });
        state.iteration = iteration;
        if ctx.stop.load(Ordering::SeqCst) {
            state.stop_reason = Some(StopReason::Cancelled);
        }
        let last = iteration == config.n_iterations || state.stop_reason.is_some();
        let eval_success_rate = if iteration % config.eval_interval.max(1) == 0 || last {
            let outcomes = evaluate(&model, &style, &sandbox, &eval, &verifiers, max_steps)?;
            let e = rate(&passed(&outcomes));
            last_eval = Some((iteration, outcomes));
            state.evals.push((iteration, e));
            if state.best_eval.is_none_or(|b| e > b) {
                state.best_eval = Some(e);
                state.evals_since_best = 0;
            } else {
                state.evals_since_best += 1;
                if config.early_stopping_patience.is_some_and(|p| state.evals_since_best >= p) {
                    state.stop_reason = Some(StopReason::EarlyStopped);
                }
            }
            Some(e)
        } else {
            None
        };
        let cost_usd = spent(wall(&started), state.api_cost_usd);
        let update = budget.record((cost_usd - budget.spent()).max(Decimal::ZERO))?;
        for crossed in update.crossed {
            on_event(&Event::Budget {
                state: crossed,
                spent_usd: cost_usd,
                budget_usd: config.max_budget_usd,
            });
        }
        let metrics = IterationMetrics {
            iteration,
            train_loss: stats.loss,
            avg_reward: mean,
            reward_std: std,
            frac_reward_zero_std: adv.frac_reward_zero_std,
            success_rate: successes as f64 / n,
            kl: stats.kl,
            clip_ratio: stats.clip_ratio,
            mean_length: sampled as f64 / n,
            tool_accuracy: if calls == 0 { 0.0 } else { f64::from(ok_calls) / f64::from(calls) },
            grad_norm: stats.grad_norm,
            rollout_tokens_per_s: sampled as f64 / rollout_seconds.max(1e-9),
            rollout_seconds,
            update_seconds,
            eval_success_rate,
            cost_usd,
        };
        state.history.push(metrics.clone());
        on_event(&Event::Iteration(metrics));
        if state.stop_reason.is_some() || last || iteration % config.checkpoint_interval == 0 {
            state.wall_seconds = wall(&started);
            save(ctx, &base_model, &model.model, &opt, &rng, &mut state, on_event)?;
        }
    }
    if state.stop_reason == Some(StopReason::BudgetExhausted) {
        // Stopped before an iteration: the last iteration's state may not be saved yet.
        state.wall_seconds = wall(&started);
        save(ctx, &base_model, &model.model, &opt, &rng, &mut state, on_event)?;
    }
    let baseline = state.baseline.clone();
    let final_outcomes = match last_eval {
        Some((i, outcomes)) if i == state.iteration => outcomes,
        _ => evaluate(&model, &style, &sandbox, &eval, &verifiers, max_steps)?,
    };
    let final_results = passed(&final_outcomes);
    let mcnemar = mcnemar_exact(&baseline, &final_results)?;
    let count = |xs: &[bool]| xs.iter().filter(|&&x| x).count() as u64;
    let wilson = |xs: &[bool]| -> Result<(f64, f64), TrainError> {
        let w = wilson_interval(count(xs), xs.len() as u64, 0.95)?;
        Ok((w.low, w.high))
    };
    let mut per_family: std::collections::BTreeMap<String, (f64, f64, f64)> =
        std::collections::BTreeMap::new();
    for ((t, &b), &f) in eval.iter().zip(&baseline).zip(&final_results) {
        let family = t.metadata.as_ref().map_or_else(String::new, |m| m.family.clone());
        let e = per_family.entry(family).or_default();
        e.0 += f64::from(u8::from(b));
        e.1 += f64::from(u8::from(f));
        e.2 += 1.0;
    }
    let per_family = per_family.into_iter().map(|(k, (b, f, n))| (k, (b / n, f / n))).collect();
    let wall_seconds = wall(&started);
    let best = best_checkpoint(&state.checkpoints);
    let summary = Summary {
        job_id: ctx.job_id.clone(),
        agent_id: agent_id(settings),
        baseline_success_rate: rate(&baseline),
        final_success_rate: rate(&final_results),
        baseline_interval: wilson(&baseline)?,
        final_interval: wilson(&final_results)?,
        p_value: mcnemar.p_value,
        mcnemar,
        eval_queries: eval.len(),
        train_queries: train.len(),
        iterations: state.iteration,
        stop_reason: state.stop_reason.unwrap_or(StopReason::Completed),
        wall_seconds,
        warm_start_seconds: state.warm_start_seconds,
        warm_start_cached: state.warm_start_cached,
        cost_usd: spent(wall_seconds, state.api_cost_usd),
        budget_usd: config.max_budget_usd,
        best_checkpoint_id: best.map(|c| c.checkpoint_id.clone()),
        best_eval_success_rate: best.and_then(|c| c.eval_success_rate),
        per_family,
        run_dir: run_dir.clone(),
    };
    crate::report::write(&run_dir, settings, &summary, &state.history, &state.evals)?;
    on_event(&Event::Done(Box::new(summary.clone())));
    Ok(summary)
}
