//! Checkpoints of a job: `checkpoints/ckpt-NNNNN/` in its run directory, each written atomically
//! (the policy's files and `job_state.json`), the retention rule (the best
//! [`KEEP_BEST_CHECKPOINTS`] by validation plus the latest), and reading them back.

use std::path::{Path, PathBuf};
use std::time::Instant;

use agentcore_artifacts::Artifacts;
use agentcore_fs::{write_atomic, write_dir_atomic};
use rand_chacha::ChaCha8Rng;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::defaults::{JOB_STATE_FILE, KEEP_BEST_CHECKPOINTS, MANIFEST_FILE};
use crate::events::{CheckpointInfo, Event, IterationMetrics, StopReason};
use crate::faults::{FaultPoint, Faults};
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
    save_with(
        run_dir,
        job_id,
        policy,
        rng,
        state,
        on_event,
        &Faults::default(),
        &Artifacts::local(),
    )
}

/// [`save`] with the job's fault-injection seam ([`FaultPoint::Checkpoint`] fires half-way
/// through writing the files) and its artifact store: with object storage the checkpoint is
/// uploaded (manifest last) before it is announced, and the ones retention drops are removed
/// there too. `run_dir` must then be `<data_dir>/runs/<job_id>`.
///
/// # Errors
/// File errors, an injected fault, the artifact store failed.
#[expect(clippy::too_many_arguments, reason = "the save seams: faults and the artifact store")]
pub fn save_with(
    run_dir: &Path,
    job_id: &str,
    policy: &dyn Policy,
    rng: &ChaCha8Rng,
    state: &mut JobState,
    on_event: &mut dyn FnMut(&Event),
    faults: &Faults,
    artifacts: &Artifacts,
) -> Result<(), TrainError> {
    let data_dir = match crate::sync::data_dir_of(run_dir, job_id) {
        Some(d) => Some(d.to_path_buf()),
        None if artifacts.is_remote() => {
            return Err(TrainError::Io {
                path: run_dir.to_path_buf(),
                message: format!(
                    "a run directory with an artifact store must be <data_dir>/runs/{job_id}"
                ),
            });
        }
        None => None,
    };
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
    let mut files = policy.checkpoint_files(rng)?;
    // Paths relative to the run directory: a moved data directory still reads its checkpoints.
    let mut stored = state.clone();
    for c in &mut stored.checkpoints {
        c.path = relative_to(run_dir, &c.path);
    }
    let job_state = serde_json::to_vec_pretty(&stored)
        .map_err(|e| TrainError::CorruptState { path: path.clone(), message: e.to_string() })?;
    files.push((JOB_STATE_FILE.to_owned(), job_state));
    let manifest = Manifest::of(&files);
    write_dir_atomic(&path, |tmp| -> Result<(), TrainError> {
        for (k, (name, bytes)) in files.iter().enumerate() {
            write_atomic(&tmp.join(name), bytes)?;
            if k == 0 {
                faults.hit(FaultPoint::Checkpoint, iteration)?;
            }
        }
        write_atomic(&tmp.join(MANIFEST_FILE), &manifest)?;
        Ok(())
    })?;
    if let Some(data_dir) = &data_dir {
        artifacts.put_dir(
            data_dir,
            &crate::sync::checkpoint_key(job_id, iteration),
            MANIFEST_FILE,
        )?;
    }
    on_event(&Event::Checkpoint(CheckpointInfo {
        save_seconds: save_started.elapsed().as_secs_f64(),
        ..info
    }));
    // Only after the new checkpoint is complete may the old ones go.
    for d in dropped {
        if data_dir.is_some()
            && let Err(e) = artifacts
                .remove_dir(&crate::sync::checkpoint_key(job_id, d.iteration), MANIFEST_FILE)
        {
            tracing::warn!(job_id, checkpoint = %d.checkpoint_id, error = %e,
                "could not delete a dropped checkpoint from the artifact store");
        }
        if let Err(e) = std::fs::remove_dir_all(&d.path) {
            tracing::warn!(job_id, checkpoint = %d.path.display(), error = %e,
                "could not delete a checkpoint the retention rule dropped");
        }
        on_event(&Event::CheckpointRemoved { checkpoint_id: d.checkpoint_id });
    }
    Ok(())
}

/// The manifest of a checkpoint: every file with its size and SHA-256.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    format: String,
    files: Vec<ManifestEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestEntry {
    name: String,
    bytes: u64,
    sha256: String,
}

const MANIFEST_FORMAT: &str = "agentcore.checkpoint v1";

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

impl Manifest {
    fn of(files: &[(String, Vec<u8>)]) -> Vec<u8> {
        let m = Self {
            format: MANIFEST_FORMAT.to_owned(),
            files: files
                .iter()
                .map(|(name, b)| ManifestEntry {
                    name: name.clone(),
                    bytes: b.len() as u64,
                    sha256: sha256_hex(b),
                })
                .collect(),
        };
        serde_json::to_vec_pretty(&m).unwrap_or_default()
    }
}

/// Writes the manifest of a directory that has none (a warm-start cache published to the
/// artifact store): every plain file with its size and SHA-256.
///
/// # Errors
/// A file cannot be read or the manifest written.
pub fn write_manifest(dir: &Path) -> Result<(), TrainError> {
    let io = |e: std::io::Error| TrainError::Io { path: dir.to_path_buf(), message: e.to_string() };
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n != MANIFEST_FILE && !n.starts_with(".tmp-"))
        .collect();
    names.sort();
    let files = names
        .into_iter()
        .map(|n| std::fs::read(dir.join(&n)).map(|b| (n, b)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io)?;
    write_atomic(&dir.join(MANIFEST_FILE), &Manifest::of(&files))?;
    Ok(())
}

/// Checks a checkpoint directory against its manifest: every listed file present, of its size and
/// checksum. A checkpoint written before manifests existed passes with a warning.
///
/// # Errors
/// What does not match, naming the file.
pub fn verify(dir: &Path) -> Result<(), String> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound && dir.join(JOB_STATE_FILE).is_file() =>
        {
            tracing::warn!(checkpoint = %dir.display(),
                "checkpoint without a manifest (written by an earlier version): not verified");
            return Ok(());
        }
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    if manifest.format != MANIFEST_FORMAT {
        return Err(format!(
            "{}: format {:?} is not {MANIFEST_FORMAT:?}",
            path.display(),
            manifest.format
        ));
    }
    for f in &manifest.files {
        let file = dir.join(&f.name);
        if f.name.contains('/') || f.name.contains("..") {
            return Err(format!("{}: file name {:?} is not a plain name", path.display(), f.name));
        }
        let data = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        if data.len() as u64 != f.bytes {
            return Err(format!(
                "{}: {} bytes, the manifest says {} (truncated or replaced)",
                file.display(),
                data.len(),
                f.bytes
            ));
        }
        if sha256_hex(&data) != f.sha256 {
            return Err(format!(
                "{}: SHA-256 does not match the manifest (corrupted)",
                file.display()
            ));
        }
    }
    Ok(())
}

/// `path` relative to `base` when it lies beneath it.
fn relative_to(base: &Path, path: &Path) -> PathBuf {
    path.strip_prefix(base).map_or_else(|_| path.to_path_buf(), Path::to_path_buf)
}

/// A stored checkpoint path, resolved against the run directory it is read from: relative paths
/// (this version) are joined; absolute ones (earlier versions) keep their last two components
/// (`checkpoints/ckpt-NNNNN`), so a data directory that moved still reads its own checkpoints.
fn rebase(run_dir: &Path, path: &Path) -> PathBuf {
    if path.is_relative() {
        return run_dir.join(path);
    }
    let tail: Vec<_> = path.components().rev().take(2).collect();
    tail.into_iter().rev().fold(run_dir.to_path_buf(), |p, c| p.join(c))
}

/// The complete checkpoints of a run directory that verify against their manifests, newest
/// first, with their job states (paths resolved against `run_dir`). Directories being written
/// (`.tmp-*`) are ignored; one that does not verify or whose job state does not parse is skipped
/// with a logged warning, so an earlier one is used.
#[must_use]
pub fn verified(run_dir: &Path) -> Vec<(PathBuf, JobState)> {
    verified_newest_first(run_dir).collect()
}

/// [`verified`], lazily: each checkpoint is read and checked only when the caller asks for the
/// next one (the newest that verifies is usually the first, and a check hashes every file).
fn verified_newest_first(run_dir: &Path) -> impl Iterator<Item = (PathBuf, JobState)> + '_ {
    let dir = run_dir.join("checkpoints");
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    let n: u32 = name.strip_prefix("ckpt-")?.parse().ok()?;
                    Some((n, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.into_iter().rev().filter_map(move |(_, path)| {
        let checked = verify(&path).and_then(|()| {
            let file = path.join(JOB_STATE_FILE);
            let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            serde_json::from_slice::<JobState>(&bytes)
                .map_err(|e| format!("{}: {e}", file.display()))
        });
        match checked {
            Ok(mut state) => {
                for c in &mut state.checkpoints {
                    c.path = rebase(run_dir, &c.path);
                }
                Some((path, state))
            }
            Err(reason) => {
                tracing::warn!(checkpoint = %path.display(), %reason,
                    "skipping a checkpoint that does not verify; an earlier one is used");
                None
            }
        }
    })
}

/// The last complete, verified checkpoint of a run directory, with its job state.
///
/// # Errors
/// None today (kept for callers that propagate).
pub fn latest(run_dir: &Path) -> Result<Option<(PathBuf, JobState)>, TrainError> {
    Ok(verified_newest_first(run_dir).next())
}

/// The iteration of the last complete checkpoint of a job (where `--resume` continues).
///
/// # Errors
/// An unreadable job state.
pub fn resume_point(data_dir: &Path, job_id: &str) -> Result<Option<u32>, TrainError> {
    Ok(latest(&run_dir(data_dir, job_id))?.map(|(_, s)| s.iteration))
}

/// [`resume_point`] among the iterations `recorded` (a queue worker's takeover: the
/// checkpoints the job store records; see `JobContext::recorded_checkpoints`).
#[must_use]
pub fn resume_point_among(data_dir: &Path, job_id: &str, recorded: &[u32]) -> Option<u32> {
    verified_newest_first(&run_dir(data_dir, job_id))
        .map(|(_, s)| s.iteration)
        .find(|i| recorded.contains(i))
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

    /// A policy that is only its checkpoint files.
    struct Files(Vec<(String, Vec<u8>)>);

    impl Policy for Files {
        fn describe(&self) -> String {
            "files".into()
        }
        fn backend(&self) -> Result<Box<dyn agentcore_agent::backend::Backend + '_>, TrainError> {
            Err(TrainError::InvalidData("no backend".into()))
        }
        fn update(
            &mut self,
            _batch: &crate::policy::ScoredBatch<'_>,
        ) -> Result<crate::policy::UpdateStats, TrainError> {
            Ok(crate::policy::UpdateStats::default())
        }
        fn checkpoint_files(
            &self,
            _rng: &ChaCha8Rng,
        ) -> Result<Vec<(String, Vec<u8>)>, TrainError> {
            Ok(self.0.clone())
        }
    }

    /// Issue 14, finding 5: a flipped byte loaded silently, a truncated file failed without a
    /// fallback, and the job state's absolute paths broke a moved data directory.
    #[test]
    fn broken_checkpoints_are_skipped_and_a_moved_run_directory_reads_its_own() {
        use rand::SeedableRng;
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("run");
        let rng = ChaCha8Rng::seed_from_u64(0);
        let mut state = JobState::new(0.0, false);
        for i in 1..=3u8 {
            state.iteration = u32::from(i);
            let policy = Files(vec![("model.safetensors".into(), vec![i; 4096])]);
            save(&run, "job", &policy, &rng, &mut state, &mut |_| {}).unwrap();
        }
        let newest = |dir: &Path| latest(dir).unwrap().map(|(_, s)| s.iteration);
        assert_eq!(newest(&run), Some(3));
        let ckpt = |i: u32| run.join("checkpoints").join(format!("ckpt-{i:05}"));
        // One flipped byte: checkpoint 3 no longer verifies, 2 is used.
        let file = ckpt(3).join("model.safetensors");
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[100] ^= 0x01;
        std::fs::write(&file, &bytes).unwrap();
        assert!(verify(&ckpt(3)).unwrap_err().contains("SHA-256 does not match"));
        assert_eq!(newest(&run), Some(2));
        // A truncated file: checkpoint 2 is skipped too.
        let file = ckpt(2).join("model.safetensors");
        std::fs::write(&file, &std::fs::read(&file).unwrap()[..1000]).unwrap();
        assert!(verify(&ckpt(2)).unwrap_err().contains("1000 bytes, the manifest says 4096"));
        assert_eq!(newest(&run), Some(1));
        // The job state stores paths relative to the run directory; a moved one reads its own.
        let raw = std::fs::read_to_string(ckpt(1).join(JOB_STATE_FILE)).unwrap();
        assert!(raw.contains("\"checkpoints/ckpt-00001\""), "{raw}");
        assert!(!raw.contains(&run.display().to_string()), "{raw}");
        let moved = tmp.path().join("moved");
        std::fs::rename(&run, &moved).unwrap();
        let (dir, state) = latest(&moved).unwrap().unwrap();
        assert_eq!(dir, moved.join("checkpoints/ckpt-00001"));
        assert_eq!(state.checkpoints[0].path, moved.join("checkpoints/ckpt-00001"));
        // An earlier version's absolute path is rebased on the run directory it is read from.
        assert_eq!(
            rebase(&moved, Path::new("/old/place/run/checkpoints/ckpt-00007")),
            moved.join("checkpoints/ckpt-00007")
        );
    }

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
