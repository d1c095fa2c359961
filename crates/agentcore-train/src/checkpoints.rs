//! Checkpoints of a job: `checkpoints/ckpt-NNNNN/` in its run directory, each written atomically
//! (the policy's files and `job_state.json`), the retention rule (the best
//! [`KEEP_BEST_CHECKPOINTS`] by validation plus the latest), and reading them back.

use std::path::{Path, PathBuf};
use std::time::Instant;

use agentcore_fs::{write_atomic, write_dir_atomic};
use rand_chacha::ChaCha8Rng;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::defaults::{JOB_STATE_FILE, KEEP_BEST_CHECKPOINTS};
use crate::events::{CheckpointInfo, Event, IterationMetrics, StopReason};
use crate::policy::Policy;
use crate::settings::run_dir;

/// What a checkpoint carries besides the policy: everything to continue the job exactly.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobState {
    /// Iterations done.
    pub iteration: u32,
    /// The held-out results of the policy before training.
    pub baseline: Vec<bool>,
    /// Every iteration's metrics.
    pub history: Vec<IterationMetrics>,
    /// (iteration, held-out success) of every evaluation.
    pub evals: Vec<(u32, f64)>,
    /// The best held-out success so far.
    pub best_eval: Option<f64>,
    /// Evaluations since the best one (early stopping).
    pub evals_since_best: u32,
    /// The checkpoints kept.
    pub checkpoints: Vec<CheckpointInfo>,
    /// Wall time of the job so far (all attempts).
    pub wall_seconds: f64,
    /// Of which warm start.
    pub warm_start_seconds: f64,
    /// Whether the warm start came from the cache.
    pub warm_start_cached: bool,
    /// API spend so far.
    pub api_cost_usd: Decimal,
    /// Why the job stopped, once it has.
    pub stop_reason: Option<StopReason>,
}

impl JobState {
    /// The state of a job before its first iteration.
    #[must_use]
    pub fn new(warm_start_seconds: f64, warm_start_cached: bool) -> Self {
        Self {
            iteration: 0,
            baseline: Vec::new(),
            history: Vec::new(),
            evals: Vec::new(),
            best_eval: None,
            evals_since_best: 0,
            checkpoints: Vec::new(),
            wall_seconds: 0.0,
            warm_start_seconds,
            warm_start_cached,
            api_cost_usd: Decimal::ZERO,
            stop_reason: None,
        }
    }
}

/// Test hook: `AGENTCORE_CRASH_AT=<point>:<iteration>` aborts the process (as a kill -9 would:
/// no destructors, no flush) at `rollout`, `update` or `checkpoint` (half-way through writing
/// the checkpoint's files) of that iteration.
pub fn crash_point(point: &str, iteration: u32) {
    if let Ok(spec) = std::env::var("AGENTCORE_CRASH_AT")
        && spec == format!("{point}:{iteration}")
    {
        std::process::abort();
    }
}

/// The retention rule: `checkpoints` with `new` added (replacing one of the same iteration),
/// split into those kept (the best `keep_best` by validation success, the later on ties, plus
/// `new` itself) and those dropped. Checkpoints without a validation rank last.
#[must_use]
pub fn retain(
    checkpoints: &[CheckpointInfo],
    new: CheckpointInfo,
    keep_best: usize,
) -> (Vec<CheckpointInfo>, Vec<CheckpointInfo>) {
    let mut older: Vec<CheckpointInfo> =
        checkpoints.iter().filter(|c| c.iteration != new.iteration).cloned().collect();
    older.sort_by(|a, b| {
        b.eval_success_rate
            .unwrap_or(-1.0)
            .total_cmp(&a.eval_success_rate.unwrap_or(-1.0))
            .then(b.iteration.cmp(&a.iteration))
    });
    let dropped = older.split_off(keep_best.min(older.len()));
    older.push(new);
    older.sort_by_key(|c| c.iteration);
    (older, dropped)
}

/// The best checkpoint of a job state: highest validation success, the later on ties.
#[must_use]
pub fn best_checkpoint(checkpoints: &[CheckpointInfo]) -> Option<&CheckpointInfo> {
    checkpoints.iter().filter(|c| c.eval_success_rate.is_some()).max_by(|a, b| {
        a.eval_success_rate
            .unwrap_or(0.0)
            .total_cmp(&b.eval_success_rate.unwrap_or(0.0))
            .then(a.iteration.cmp(&b.iteration))
    })
}

/// Writes the checkpoint of `state.iteration` (atomically: a crash leaves the previous one
/// whole), then deletes the checkpoints the retention rule drops.
///
/// # Errors
/// File errors.
pub fn save(
    run_dir: &Path,
    job_id: &str,
    policy: &dyn Policy,
    rng: &ChaCha8Rng,
    state: &mut JobState,
    on_event: &mut dyn FnMut(&Event),
) -> Result<(), TrainError> {
    let iteration = state.iteration;
    let path = run_dir.join("checkpoints").join(format!("ckpt-{iteration:05}"));
    let info = CheckpointInfo {
        checkpoint_id: format!("{job_id}-ckpt-{iteration:05}"),
        iteration,
        path: path.clone(),
        eval_success_rate: state.evals.last().map(|e| e.1),
        save_seconds: 0.0,
    };
    let save_started = Instant::now();
    let (kept, dropped) = retain(&state.checkpoints, info.clone(), KEEP_BEST_CHECKPOINTS);
    state.checkpoints = kept;
    let files = policy.checkpoint_files(rng)?;
    let job_state = serde_json::to_vec_pretty(state)
        .map_err(|e| TrainError::CorruptState { path: path.clone(), message: e.to_string() })?;
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
        if let Err(e) = std::fs::remove_dir_all(&d.path) {
            tracing::warn!(job_id, checkpoint = %d.path.display(), error = %e,
                "could not delete a checkpoint the retention rule dropped");
        }
        on_event(&Event::CheckpointRemoved { checkpoint_id: d.checkpoint_id });
    }
    Ok(())
}

/// The last complete checkpoint of a run directory (directories being written are `.tmp-*` and
/// are ignored), with its job state.
///
/// # Errors
/// A job state that does not parse.
pub fn latest(run_dir: &Path) -> Result<Option<(PathBuf, JobState)>, TrainError> {
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
        let file = path.join(JOB_STATE_FILE);
        let Ok(bytes) = std::fs::read(&file) else { continue };
        let state: JobState = serde_json::from_slice(&bytes)
            .map_err(|e| TrainError::CorruptState { path: file, message: e.to_string() })?;
        return Ok(Some((path, state)));
    }
    Ok(None)
}

/// The iteration of the last complete checkpoint of a job (where `--resume` continues).
///
/// # Errors
/// An unreadable job state.
pub fn resume_point(data_dir: &Path, job_id: &str) -> Result<Option<u32>, TrainError> {
    Ok(latest(&run_dir(data_dir, job_id))?.map(|(_, s)| s.iteration))
}

/// The checkpoints of a finished or running job, oldest first.
///
/// # Errors
/// An unreadable job state.
pub fn list(data_dir: &Path, job_id: &str) -> Result<Vec<CheckpointInfo>, TrainError> {
    Ok(latest(&run_dir(data_dir, job_id))?.map(|(_, s)| s.checkpoints).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ck(iteration: u32, eval: Option<f64>) -> CheckpointInfo {
        CheckpointInfo {
            checkpoint_id: format!("j-ckpt-{iteration:05}"),
            iteration,
            path: PathBuf::from(format!("ckpt-{iteration:05}")),
            eval_success_rate: eval,
            save_seconds: 0.0,
        }
    }

    fn iterations(xs: &[CheckpointInfo]) -> Vec<u32> {
        xs.iter().map(|c| c.iteration).collect()
    }

    #[test]
    fn retention_keeps_the_best_by_validation_and_the_latest() {
        let old = vec![
            ck(10, Some(0.5)),
            ck(20, Some(0.7)),
            ck(30, Some(0.6)),
            ck(40, Some(0.7)),
            ck(50, Some(0.4)),
        ];
        // The latest is kept whatever its validation; of the older ones the best 3 (ties: the
        // later).
        let (kept, dropped) = retain(&old, ck(60, Some(0.1)), 3);
        assert_eq!(iterations(&kept), vec![20, 30, 40, 60]);
        assert_eq!(iterations(&dropped), vec![10, 50]);
        // A tie between 20 and 40 with room for one: the later wins.
        let (kept, dropped) = retain(&old[..4], ck(45, None), 1);
        assert_eq!(iterations(&kept), vec![40, 45]);
        assert_eq!(iterations(&dropped), vec![20, 30, 10]);
    }

    #[test]
    fn retention_replaces_a_checkpoint_of_the_same_iteration_and_ranks_unvalidated_last() {
        let old = vec![ck(1, None), ck(2, Some(0.2)), ck(3, None)];
        let (kept, dropped) = retain(&old, ck(3, Some(0.9)), 1);
        assert_eq!(iterations(&kept), vec![2, 3]);
        assert_eq!(kept[1].eval_success_rate, Some(0.9));
        assert_eq!(iterations(&dropped), vec![1]);
        // Room for all: nothing dropped.
        let (kept, dropped) = retain(&old, ck(4, None), 10);
        assert_eq!(iterations(&kept), vec![1, 2, 3, 4]);
        assert!(dropped.is_empty());
    }

    #[test]
    fn best_checkpoint_is_the_highest_validation_the_later_on_ties() {
        let xs = vec![ck(1, Some(0.3)), ck(2, Some(0.8)), ck(3, None), ck(4, Some(0.8))];
        assert_eq!(best_checkpoint(&xs).map(|c| c.iteration), Some(4));
        assert!(best_checkpoint(&[ck(1, None)]).is_none());
    }
}
