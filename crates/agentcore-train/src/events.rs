//! What a job reports as it runs: the events (the CLI prints them, the recorder stores them,
//! the service streams them), the per-iteration metrics and the final summary.

use std::path::PathBuf;

use agentcore_agent::trajectory::Trajectory;
use agentcore_grpo::budget::BudgetState;
use agentcore_grpo::stats::McNemarTest;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::settings::JobSettings;
use crate::warmstart::WarmStartProgress;

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
    /// The prompt policy's `library_size`, `exemplar_bank_size`, `exemplars_shown`,
    /// `reflection_ops_applied`, `reflection_ops_rejected` (absent for weights).
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<crate::update::PromptStats>,
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
    /// What was trained and how (the policy's description).
    #[serde(default)]
    pub policy: String,
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
