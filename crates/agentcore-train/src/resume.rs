//! Where a job starts: its run directory and `job.json` (a job resumed with other settings is
//! refused), then either its last complete checkpoint (policy, RNG and job state, so the
//! continuation is exact) or a fresh policy and state.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use agentcore_agent::sandbox::PythonSandbox;
use agentcore_fs::write_atomic;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::TrainError;
use crate::checkpoints::{self, JobState};
use crate::defaults::JOB_FILE;
use crate::events::{Event, StopReason};
use crate::policy::{self, Policy};
use crate::settings::{JobSettings, read_job_settings, run_dir};

/// A job ready for its next iteration.
pub struct Start {
    /// The policy.
    pub policy: Box<dyn Policy>,
    /// The job's RNG.
    pub rng: ChaCha8Rng,
    /// Its state.
    pub state: JobState,
    /// The iteration of the checkpoint it resumed from.
    pub resumed_from: Option<u32>,
}

/// Creates the run directory and writes `job.json`, or checks that the saved one holds the same
/// settings.
///
/// # Errors
/// [`TrainError::SettingsChanged`], file errors.
pub fn prepare_run_dir(
    settings: &JobSettings,
    data_dir: &Path,
    job_id: &str,
) -> Result<PathBuf, TrainError> {
    let dir = run_dir(data_dir, job_id);
    std::fs::create_dir_all(&dir)
        .map_err(|e| TrainError::Io { path: dir.clone(), message: e.to_string() })?;
    let job_file = dir.join(JOB_FILE);
    if job_file.is_file() {
        let saved = read_job_settings(data_dir, job_id)?;
        if &saved != settings {
            return Err(TrainError::SettingsChanged { job_id: job_id.to_string(), path: job_file });
        }
    } else {
        let bytes = serde_json::to_vec_pretty(settings).map_err(|e| TrainError::CorruptState {
            path: job_file.clone(),
            message: e.to_string(),
        })?;
        write_atomic(&job_file, &bytes)?;
    }
    Ok(dir)
}

/// The job's starting point: its last complete checkpoint, or (none yet) the initial policy,
/// warm-started when it needs one, with a fresh state and the RNG seeded from the config.
///
/// # Errors
/// Model or file errors, a corrupt job state.
pub fn start(
    settings: &JobSettings,
    ctx: &crate::job::JobContext,
    run_dir: &Path,
    sandbox: &Arc<PythonSandbox>,
    on_event: &mut dyn FnMut(&Event),
) -> Result<Start, TrainError> {
    let (data_dir, stop) = (ctx.data_dir.as_path(), ctx.stop.as_ref());
    // The newest checkpoint that verifies and loads (finite weights); a broken one is skipped
    // with a warning and an earlier one used. A queue worker only continues from checkpoints
    // the job store records.
    let mut candidates = checkpoints::verified(run_dir);
    if let Some(recorded) = &ctx.recorded_checkpoints {
        candidates.retain(|(_, state)| recorded.contains(&state.iteration));
    }
    let mut refused = Vec::new();
    for (dir, mut state) in candidates {
        match policy::from_checkpoint(settings, &dir) {
            Ok((policy, rng)) => {
                // A cancelled job continues when resumed; other stops are final.
                if state.stop_reason == Some(StopReason::Cancelled) {
                    state.stop_reason = None;
                }
                let resumed_from = Some(state.iteration);
                return Ok(Start { policy, rng, state, resumed_from });
            }
            Err(e) => {
                tracing::warn!(checkpoint = %dir.display(), error = %e,
                    "a checkpoint does not load; an earlier one is used");
                refused.push(format!("{}: {e}", dir.display()));
            }
        }
    }
    if !refused.is_empty() {
        return Err(TrainError::CorruptState {
            path: run_dir.join("checkpoints"),
            message: format!("no checkpoint of the job loads: {}", refused.join("; ")),
        });
    }
    // A warm-start cache another machine built comes down from the artifact store.
    crate::sync::restore_warm_start(&ctx.artifacts, data_dir, settings)?;
    let ws_start = Instant::now();
    // The warm start stops (nothing cached) at the next step once `stop` is set, or once its
    // compute has used up the job's budget.
    let budget = settings.config.max_budget_usd;
    let (policy, cached) = policy::initial(settings, data_dir, sandbox, &mut |p| {
        on_event(&Event::WarmStart(p));
        let spent = crate::cost::usd(ws_start.elapsed().as_secs_f64(), settings.price_per_hour_usd);
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            std::ops::ControlFlow::Break(crate::warmstart::WarmStop::Interrupt)
        } else if spent > budget {
            std::ops::ControlFlow::Break(crate::warmstart::WarmStop::Budget)
        } else {
            std::ops::ControlFlow::Continue(())
        }
    })?;
    let warm = if cached { 0.0 } else { ws_start.elapsed().as_secs_f64() };
    if !cached {
        crate::sync::publish_warm_start(&ctx.artifacts, data_dir, settings)?;
    }
    Ok(Start {
        policy,
        rng: ChaCha8Rng::seed_from_u64(settings.config.seed),
        state: JobState::new(warm, cached),
        resumed_from: None,
    })
}
