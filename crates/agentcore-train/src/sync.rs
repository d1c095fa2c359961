//! A job's artifacts beyond the machine that runs it: its run directory mirrored to the
//! [`Artifacts`] store (a no-op for the local store, the embedded default).
//!
//! Keys mirror the data directory: `runs/<job>/job.json`, `runs/<job>/checkpoints/ckpt-NNNNN/…`
//! (uploaded file by file, the manifest last), `runs/<job>/report.md` and the curves. A worker
//! that takes over a job on another machine, `agentcore eval` on a third, and the server's
//! deploy and invoke calls first [`restore_run`]: the job's settings and every complete
//! checkpoint the store has come down, each verified against its manifest before it is put in
//! place; local checkpoints the store no longer has (retention dropped them elsewhere) go.

use std::path::Path;

use agentcore_artifacts::Artifacts;

use crate::TrainError;
use crate::checkpoints;
use crate::defaults::{JOB_FILE, MANIFEST_FILE};
use crate::settings::{JobSettings, run_dir};
use agentcore_model::checkpoint::STATE_FILE;

/// The key (and path under the data directory) of `sub` in the run of `job_id`.
#[must_use]
pub fn run_key(job_id: &str, sub: &str) -> String {
    format!("runs/{job_id}/{sub}")
}

/// The key of a checkpoint directory of a job.
#[must_use]
pub fn checkpoint_key(job_id: &str, iteration: u32) -> String {
    run_key(job_id, &format!("checkpoints/ckpt-{iteration:05}"))
}

/// What [`restore_run`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Restored {
    /// Whether `job.json` came down.
    pub job_file: bool,
    /// Checkpoints downloaded (directory names).
    pub downloaded: Vec<String>,
    /// Local checkpoints removed because the store no longer has them.
    pub removed: Vec<String>,
}

/// Brings the run directory of `job_id` under `data_dir` up to date from the store (see the
/// module). The local store: nothing to do.
///
/// # Errors
/// The store failed; a checkpoint that does not verify is skipped with a warning, not an error
/// (an earlier one is used, as for local checkpoints).
pub fn restore_run(
    artifacts: &Artifacts,
    data_dir: &Path,
    job_id: &str,
) -> Result<Restored, TrainError> {
    restore_recorded(artifacts, data_dir, job_id, None)
}

/// [`restore_run`] for a worker taking a job over: only the checkpoints of `recorded` (the
/// iterations the job store records as kept, written by a lease holder) count. Any other
/// checkpoint, here or in the object store, was written by a worker that lost its lease (or
/// died before recording it): it is not downloaded, and a local copy is removed, so the job
/// continues exactly where its recorded history ends. With the local store (a shared data
/// directory) only that pruning happens.
///
/// # Errors
/// As [`restore_run`].
pub fn restore_recorded(
    artifacts: &Artifacts,
    data_dir: &Path,
    job_id: &str,
    recorded: Option<&[u32]>,
) -> Result<Restored, TrainError> {
    let mut done = Restored::default();
    let run = run_dir(data_dir, job_id);
    let counts = |name: &str| {
        recorded.is_none_or(|r| {
            name.strip_prefix("ckpt-")
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|i| r.contains(&i))
        })
    };
    if !artifacts.is_remote() {
        if recorded.is_some() {
            done.removed = prune(&run, job_id, |name| counts(name));
        }
        return Ok(done);
    }
    if !run.join(JOB_FILE).is_file() {
        done.job_file = artifacts.get_file(data_dir, &run_key(job_id, JOB_FILE))?;
    }
    let mut remote = artifacts.list_dirs(&run_key(job_id, "checkpoints"))?;
    remote.retain(|name| counts(name));
    for name in &remote {
        let local = run.join("checkpoints").join(name);
        if local.is_dir() && checkpoints::verify(&local).is_ok() {
            continue;
        }
        let key = run_key(job_id, &format!("checkpoints/{name}"));
        match artifacts.get_dir(data_dir, &key, MANIFEST_FILE, checkpoints::verify) {
            Ok(true) => done.downloaded.push(name.clone()),
            // Being written (no manifest yet) or removed meanwhile.
            Ok(false) => {}
            Err(e) => tracing::warn!(job_id, checkpoint = %name, error = %e,
                "a checkpoint in the artifact store does not verify; an earlier one is used"),
        }
    }
    if !remote.is_empty() || recorded.is_some() {
        done.removed = prune(&run, job_id, |name| remote.iter().any(|r| r == name));
    }
    if !done.downloaded.is_empty() || done.job_file {
        tracing::info!(job_id, store = %artifacts.describe(), downloaded = ?done.downloaded,
            removed = ?done.removed, "run restored from the artifact store");
    }
    Ok(done)
}

/// Removes the local checkpoints of a run that `keep` refuses; their names.
fn prune(run: &Path, job_id: &str, keep: impl Fn(&str) -> bool) -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(run.join("checkpoints")) else { return removed };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("ckpt-") && !keep(&name) {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => removed.push(name),
                Err(e) => tracing::warn!(job_id, checkpoint = %name, error = %e,
                    "could not remove a checkpoint that does not count"),
            }
        }
    }
    removed.sort();
    removed
}

/// The key of the warm-start cache a job's policy uses (the built-in model's), if any.
fn warm_start_key(settings: &JobSettings) -> Option<String> {
    settings.warm_starts().then(|| format!("warmstart/{}", settings.warm_start.cache_key()))
}

/// Brings the job's warm-start cache from the store when this machine lacks it (a fresh pod
/// then skips the warm start), verified against the manifest it was published with. One that
/// does not verify is ignored (the warm start runs again). `Ok(true)` when it came down.
///
/// # Errors
/// Listing the store failed.
pub fn restore_warm_start(
    artifacts: &Artifacts,
    data_dir: &Path,
    settings: &JobSettings,
) -> Result<bool, TrainError> {
    let Some(key) = warm_start_key(settings) else { return Ok(false) };
    if !artifacts.is_remote() || data_dir.join(&key).join(STATE_FILE).is_file() {
        return Ok(false);
    }
    match artifacts.get_dir(data_dir, &key, MANIFEST_FILE, checkpoints::verify) {
        Ok(got) => Ok(got),
        Err(e) => {
            tracing::warn!(cache = %key, error = %e,
                "the warm-start cache in the artifact store does not verify; warming up again");
            Ok(false)
        }
    }
}

/// Publishes the job's warm-start cache (after it was built here) with a manifest, unless the
/// store has it already.
///
/// # Errors
/// The manifest or the upload failed.
pub fn publish_warm_start(
    artifacts: &Artifacts,
    data_dir: &Path,
    settings: &JobSettings,
) -> Result<(), TrainError> {
    let Some(key) = warm_start_key(settings) else { return Ok(()) };
    let dir = data_dir.join(&key);
    if !artifacts.is_remote() || !dir.join(STATE_FILE).is_file() {
        return Ok(());
    }
    if !dir.join(MANIFEST_FILE).is_file() {
        checkpoints::write_manifest(&dir)?;
    }
    artifacts.put_dir(data_dir, &key, MANIFEST_FILE)?;
    Ok(())
}

/// Uploads the files of the run that exist among `names` (`job.json`, `report.md`, ...).
///
/// # Errors
/// An upload failed.
pub fn publish_run_files(
    artifacts: &Artifacts,
    data_dir: &Path,
    job_id: &str,
    names: &[&str],
) -> Result<(), TrainError> {
    if !artifacts.is_remote() {
        return Ok(());
    }
    let run = run_dir(data_dir, job_id);
    for name in names {
        if run.join(name).is_file() {
            artifacts.put_file(data_dir, &run_key(job_id, name))?;
        }
    }
    Ok(())
}

/// The data directory a run directory lies in (`<data_dir>/runs/<job_id>`), when it does.
#[must_use]
pub fn data_dir_of<'a>(run: &'a Path, job_id: &str) -> Option<&'a Path> {
    let data = run.parent()?.parent()?;
    (run_dir(data, job_id) == run).then_some(data)
}
