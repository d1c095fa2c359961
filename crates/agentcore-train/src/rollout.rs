//! Phase 1 of an iteration: sample `batch_size` training tasks with the job's RNG and run the
//! policy `n_trajectories_per_query` times on each (sampling at the config's temperature, under
//! the job's step and token limits, tools in the sandbox).

use std::sync::Arc;

use agentcore_agent::rollout::run_batch_with;
use agentcore_agent::sandbox::PythonSandbox;
use agentcore_agent::trajectory::Trajectory;
use agentcore_tasks::Task;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;

use crate::TrainError;
use crate::policy::Policy;
use crate::settings::JobSettings;

/// The tasks of one iteration, drawn without replacement (all of them when there are fewer
/// than `batch_size`).
#[must_use]
pub fn sample_tasks<'t>(
    settings: &JobSettings,
    train: &'t [Task],
    rng: &mut ChaCha8Rng,
) -> Vec<&'t Task> {
    let batch = (settings.config.batch_size as usize).min(train.len());
    sample(rng, train.len(), batch).into_iter().map(|i| &train[i]).collect()
}

/// One group of trajectories per task, group after group.
///
/// # Errors
/// A model the backend cannot run (failures of the model or the tools inside a trajectory are
/// recorded in it, not returned).
pub fn roll_out(
    settings: &JobSettings,
    policy: &dyn Policy,
    sandbox: &Arc<PythonSandbox>,
    tasks: &[&Task],
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Trajectory>, TrainError> {
    let group = settings.config.n_trajectories_per_query as usize;
    let queries: Vec<String> =
        tasks.iter().flat_map(|t| std::iter::repeat_n(t.query.clone(), group)).collect();
    let contexts = policy.contexts(&queries, true, rng);
    let backend = policy.backend()?;
    let rt = settings.runtime(sandbox, settings.sampling());
    Ok(run_batch_with(&rt, backend.as_ref(), &queries, contexts.as_deref(), rng))
}
