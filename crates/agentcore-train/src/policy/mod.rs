//! The policy seam: what a job trains. The job loop samples tasks, rolls out with
//! [`Policy::backend`], verifies, rewards and computes group advantages, and hands the scored
//! batch to [`Policy::update`]; checkpoints hold [`Policy::checkpoint_files`]. It never knows
//! which kind of policy it runs.
//!
//! - [`weights`]: the weights policy (the built-in model, full weights; a pretrained model with
//!   LoRA adapters): the GRPO loss and an AdamW step.
//! - [`prompt`]: the prompt policy (any model behind an OpenAI-compatible endpoint): the
//!   system prompt plus an experience library and an exemplar bank, rendered per query.

pub mod prompt;
pub mod weights;

use std::path::Path;

use agentcore_agent::backend::Backend;
use agentcore_agent::sandbox::PythonSandbox;
use agentcore_agent::trajectory::{PromptContext, Trajectory};
use agentcore_tasks::Task;
use rand_chacha::ChaCha8Rng;

use crate::TrainError;
use crate::settings::JobSettings;
use crate::warmstart::WarmStartProgress;

pub use crate::update::{PromptStats, UpdateStats};

/// One iteration's scored trajectories: group `g` holds trajectories
/// `g * group_size .. (g + 1) * group_size`, all answering `tasks[g]`.
#[derive(Debug, Clone, Copy)]
pub struct ScoredBatch<'a> {
    /// The iteration (1-based).
    pub iteration: u32,
    /// The task of each group.
    pub tasks: &'a [&'a Task],
    /// Trajectories per group.
    pub group_size: usize,
    /// The trajectories, group after group.
    pub trajectories: &'a [Trajectory],
    /// Their rewards.
    pub rewards: &'a [f64],
    /// Their group-relative advantages.
    pub advantages: &'a [f64],
    /// Whether the verifier accepted each.
    pub passed: &'a [bool],
}

impl ScoredBatch<'_> {
    /// The task trajectory `k` answers.
    #[must_use]
    pub fn task_of(&self, k: usize) -> &Task {
        self.tasks[k / self.group_size.max(1)]
    }
}

/// A trainable policy.
pub trait Policy {
    /// What it is, for reports (model, adapters, what an update changes).
    fn describe(&self) -> String;

    /// The backend rollouts and evaluations run on, as the policy is now.
    ///
    /// # Errors
    /// A model the backend cannot run.
    fn backend(&self) -> Result<Box<dyn Backend + '_>, TrainError>;

    /// The prompt of each query (a rendering per query, recorded in its trajectory), or `None`
    /// for the agent's own system prompt everywhere. `explore`: training rollouts (may draw
    /// from `rng`); otherwise evaluation (deterministic).
    fn contexts(
        &self,
        _queries: &[String],
        _explore: bool,
        _rng: &mut ChaCha8Rng,
    ) -> Option<Vec<PromptContext>> {
        None
    }

    /// API spending the policy did on its own since the last call, outside [`Policy::update`]'s
    /// `api_cost_usd` (the prompt policy's embedding requests while rendering an evaluation);
    /// the job adds it to the evaluation's cost.
    fn take_api_cost(&self) -> rust_decimal::Decimal {
        rust_decimal::Decimal::ZERO
    }

    /// Improves the policy from one scored batch.
    ///
    /// # Errors
    /// Model errors, a diverged loss.
    fn update(&mut self, batch: &ScoredBatch<'_>) -> Result<UpdateStats, TrainError>;

    /// The files of a checkpoint of the policy, with the job's RNG (restored by
    /// [`from_checkpoint`]).
    ///
    /// # Errors
    /// Serialization errors.
    fn checkpoint_files(&self, rng: &ChaCha8Rng) -> Result<Vec<(String, Vec<u8>)>, TrainError>;
}

/// The policy of a job before training, and whether its warm start came from the cache (never,
/// for the prompt policy, which has no warm start).
/// `progress` sees every warm-start step and may stop it: `WarmStop::Interrupt` (cancellation,
/// shutdown) ends in [`TrainError::Interrupted`], `WarmStop::Budget` keeps the model as far as it
/// got (not cached).
///
/// # Errors
/// Model or file errors, an interrupted warm start.
pub fn initial(
    settings: &JobSettings,
    data_dir: &Path,
    sandbox: &PythonSandbox,
    progress: &mut dyn FnMut(
        WarmStartProgress,
    ) -> std::ops::ControlFlow<crate::warmstart::WarmStop>,
) -> Result<(Box<dyn Policy>, bool), TrainError> {
    if let Some(api) = &settings.api {
        return Ok((Box::new(prompt::PromptPolicy::initial(settings, api)), false));
    }
    let (policy, cached) = weights::WeightsPolicy::initial(settings, data_dir, sandbox, progress)?;
    Ok((Box::new(policy), cached))
}

/// The policy saved in a checkpoint directory of a job, with the job's RNG at that point.
///
/// # Errors
/// Model or file errors, a checkpoint of another model.
pub fn from_checkpoint(
    settings: &JobSettings,
    dir: &Path,
) -> Result<(Box<dyn Policy>, ChaCha8Rng), TrainError> {
    if let Some(api) = &settings.api {
        let (policy, rng) = prompt::PromptPolicy::from_checkpoint(settings, api, dir)?;
        return Ok((Box::new(policy), rng));
    }
    let (policy, rng) = weights::WeightsPolicy::from_checkpoint(settings, dir)?;
    Ok((Box::new(policy), rng))
}
