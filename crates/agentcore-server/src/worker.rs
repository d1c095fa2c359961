//! Workers: claim a job from the store's queue, run it on a blocking thread with a heartbeat
//! renewing the lease, record everything it reports, and finish it. A job whose worker died is
//! claimed again after its lease expires and continues from its last complete checkpoint (the
//! job's run directory, under the shared data directory). A cancel request or a lost lease stops
//! the job after the current iteration, with a checkpoint.
//!
//! The server runs a pool of these in-process; `agentcore worker` runs them as separate
//! processes against the same store and data directory.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agentcore_agent::sandbox::PythonSandbox;
use agentcore_artifacts::Artifacts;
use agentcore_store::{BlockingStore, EventKind, JobRow, JobStatus, Store};
use agentcore_train::checkpoints::resume_point_among;
use agentcore_train::events::Event;
use agentcore_train::job::JobContext;
use agentcore_train::record::Recorder;
use agentcore_train::settings::JobSettings;
use serde_json::json;

use crate::metrics::Metrics;

/// How workers behave.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Run directories and the warm-start cache.
    pub data_dir: PathBuf,
    /// Lease length; heartbeats renew it every third of it.
    pub lease: Duration,
    /// Wait between polls of an empty queue.
    pub poll: Duration,
    /// Where checkpoints and reports go beyond this machine (local: the data directory is
    /// shared instead).
    pub artifacts: Arc<Artifacts>,
}

impl WorkerConfig {
    /// Defaults: 30 s leases, polls every 500 ms.
    #[must_use]
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            lease: Duration::from_secs(30),
            poll: Duration::from_millis(500),
            artifacts: Arc::new(Artifacts::local()),
        }
    }
}

/// What the workers of one process share.
pub struct Workers {
    store: Store,
    config: WorkerConfig,
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Workers {
    /// Workers on `store`.
    #[must_use]
    pub fn new(store: Store, config: WorkerConfig, metrics: Option<Arc<Metrics>>) -> Arc<Self> {
        Arc::new(Self { store, config, metrics })
    }

    /// A pool of interpreters for one job: pools are never shared across jobs (nor, so, across
    /// organisations), so nothing one job's code leaves in an interpreter reaches another's.
    fn sandbox() -> Result<Arc<PythonSandbox>, String> {
        Ok(Arc::new(PythonSandbox::detect().map_err(|e| format!("python sandbox: {e}"))?))
    }

    /// Starts `n` worker loops on the current runtime; they stop when `shutdown` turns true
    /// (a running job is asked to stop with a checkpoint; its lease then expires and another
    /// worker, or this server after a restart, continues it).
    pub fn spawn(
        self: &Arc<Self>,
        n: usize,
        shutdown: &tokio::sync::watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
        (0..n)
            .map(|k| {
                let id =
                    format!("{host}-{}-{k}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
                let me = Arc::clone(self);
                let shutdown = shutdown.clone();
                tokio::spawn(async move { me.run_loop(id, shutdown).await })
            })
            .collect()
    }

    async fn run_loop(
        self: Arc<Self>,
        id: String,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            if *shutdown.borrow() {
                return;
            }
            match self.store.claim_job(&id, self.config.lease).await {
                Ok(Some(job)) => {
                    let me = Arc::clone(&self);
                    let id = id.clone();
                    let handle = tokio::runtime::Handle::current();
                    let stop = Arc::new(AtomicBool::new(false));
                    let shutting_down = Arc::new(AtomicBool::new(false));
                    let (stop_on_shutdown, flag) = (Arc::clone(&stop), Arc::clone(&shutting_down));
                    let mut watch = shutdown.clone();
                    let guard = tokio::spawn(async move {
                        if watch.wait_for(|v| *v).await.is_ok() {
                            flag.store(true, Ordering::SeqCst);
                            stop_on_shutdown.store(true, Ordering::SeqCst);
                        }
                    });
                    let job_id = job.id.clone();
                    if let Err(e) = tokio::task::spawn_blocking(move || {
                        me.run_job(&id, job, handle, stop, shutting_down);
                    })
                    .await
                    {
                        tracing::error!(job_id = %job_id, error = %e, "the job's thread panicked");
                    }
                    guard.abort();
                }
                Ok(None) => {
                    tokio::select! {
                        () = tokio::time::sleep(self.config.poll) => {}
                        _ = shutdown.changed() => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(worker = %id, error = %e, "claiming a job failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(self.config.poll) => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
        }
    }

    /// Runs one claimed job to its end on this (blocking) thread.
    fn run_job(
        &self,
        worker: &str,
        job: JobRow,
        handle: tokio::runtime::Handle,
        stop: Arc<AtomicBool>,
        shutting_down: Arc<AtomicBool>,
    ) {
        let db = BlockingStore::with_handle(self.store.clone(), handle.clone());
        // Every write about the job goes through the lease fence: once another worker has
        // taken the job over, nothing this one still does reaches the store.
        let fenced = BlockingStore::with_handle(self.store.fenced(&job.id, worker), handle.clone());
        let fail = |message: String| {
            tracing::error!(job_id = %job.id, error = %message, "job failed");
            let payload = json!({"error": message});
            if let Err(e) = fenced.call(|s| s.record_event(&job.id, EventKind::JobFailed, &payload))
            {
                tracing::error!(job_id = %job.id, error = %e, "could not record the failure event");
            }
            if let Err(e) = db.call(|s| {
                s.finish_leased_job(
                    &job.id,
                    worker,
                    JobStatus::Failed,
                    Some("failed"),
                    None,
                    None,
                    Some(&message),
                )
            }) {
                tracing::error!(job_id = %job.id, error = %e, "could not mark the job failed");
            }
        };
        let settings: JobSettings = match serde_json::from_value(job.settings.clone()) {
            Ok(s) => s,
            Err(e) => return fail(format!("stored job settings do not parse: {e}")),
        };
        let sandbox = match Self::sandbox() {
            Ok(s) => s,
            Err(e) => return fail(e),
        };
        // Only checkpoints the store records (written by a lease holder) count; on a machine
        // that shares only the store and the artifact store they come down first.
        let recorded: Vec<u32> = match db.call(|s| s.checkpoints(&job.id)) {
            Ok(rows) => rows.iter().filter(|c| !c.deleted).map(|c| c.iteration).collect(),
            Err(e) => return fail(format!("reading the job's checkpoints: {e}")),
        };
        let ctx = JobContext {
            data_dir: self.config.data_dir.clone(),
            job_id: job.id.clone(),
            stop: Arc::clone(&stop),
            faults: agentcore_train::faults::Faults::default(),
            artifacts: Arc::clone(&self.config.artifacts),
            recorded_checkpoints: Some(recorded.clone()),
        };
        if let Err(e) = agentcore_train::sync::restore_recorded(
            &self.config.artifacts,
            &self.config.data_dir,
            &job.id,
            Some(&recorded),
        ) {
            return fail(e.to_string());
        }
        // A job taken over from a dead worker continues from its last checkpoint: what was
        // recorded after it is run again.
        let forget_from = match resume_point_among(&self.config.data_dir, &job.id, &recorded) {
            Some(point) => Some(point),
            None => (job.attempts > 1).then_some(0),
        };
        if let Some(point) = forget_from {
            tracing::info!(job_id = %job.id, point, attempts = job.attempts,
                "continuing a job from its last checkpoint");
            if let Err(e) = fenced.call(|s| s.forget_after(&job.id, point)) {
                return fail(format!("forgetting what was recorded after iteration {point}: {e}"));
            }
        }
        let done = Arc::new(AtomicBool::new(false));
        let heartbeat = {
            let (store, lease, job_id, worker) =
                (self.store.clone(), self.config.lease, job.id.clone(), worker.to_owned());
            let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
            std::thread::spawn(move || {
                let every = lease / 3;
                let mut last = Instant::now();
                while !done.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50).min(every));
                    if last.elapsed() < every {
                        continue;
                    }
                    last = Instant::now();
                    match handle.block_on(store.heartbeat(&job_id, &worker, lease)) {
                        Ok(l) if l.held && !l.cancel_requested => {}
                        Ok(_) => stop.store(true, Ordering::SeqCst),
                        Err(e) => tracing::warn!(job_id = %job_id, error = %e,
                            "heartbeat failed; retrying"),
                    }
                }
            })
        };
        let mut recorder = Recorder::new(&fenced, &job.id)
            .leased(worker)
            .hold_finish_when(Arc::clone(&shutting_down));
        let mut last_iteration = Instant::now();
        let metrics = self.metrics.clone();
        let result = agentcore_train::job::run(&settings, &ctx, sandbox, &mut |event| {
            recorder.record(event);
            if let Some(m) = &metrics {
                match event {
                    Event::Iteration(it) => {
                        m.observe(
                            "training_trajectory_generation_duration_seconds",
                            it.rollout_seconds,
                        );
                        m.observe("training_policy_update_duration_seconds", it.update_seconds);
                        m.observe(
                            "training_iteration_duration_seconds",
                            last_iteration.elapsed().as_secs_f64(),
                        );
                        last_iteration = Instant::now();
                    }
                    Event::Checkpoint(c) => {
                        m.observe("training_checkpoint_save_duration_seconds", c.save_seconds)
                    }
                    Event::Baseline { .. } => last_iteration = Instant::now(),
                    _ => {}
                }
            }
        });
        done.store(true, Ordering::SeqCst);
        if heartbeat.join().is_err() {
            tracing::error!(job_id = %job.id, "the heartbeat thread panicked");
        }
        if shutting_down.load(Ordering::SeqCst) {
            // Stopped with a checkpoint for the shutdown: the next worker continues it.
            tracing::info!(job_id = %job.id, "stopped for the shutdown with a checkpoint");
            if let Err(e) = db.call(|s| s.release_lease(&job.id, worker)) {
                tracing::warn!(job_id = %job.id, error = %e,
                    "could not release the lease; it expires on its own");
            }
            return;
        }
        match result {
            Ok(_) => {
                if let Some(e) = recorder.take_error() {
                    fail(format!("recording the job failed: {e}"));
                }
            }
            // Stopped before its first checkpoint (the warm start), and not for a shutdown: the
            // job was cancelled (or its lease lost, when the update below changes nothing).
            Err(agentcore_train::TrainError::Interrupted(why)) => {
                tracing::info!(job_id = %job.id, %why, "cancelled before its first checkpoint");
                let payload = json!({"reason": why});
                match db.call(|s| {
                    s.finish_leased_job(
                        &job.id,
                        worker,
                        JobStatus::Cancelled,
                        Some("cancelled"),
                        None,
                        None,
                        None,
                    )
                }) {
                    Ok(true) => {
                        if let Err(e) = fenced
                            .call(|s| s.record_event(&job.id, EventKind::JobCancelled, &payload))
                        {
                            tracing::warn!(job_id = %job.id, error = %e,
                                "could not record the cancellation event");
                        }
                    }
                    Ok(false) => {}
                    Err(e) => tracing::error!(job_id = %job.id, error = %e,
                        "could not mark the job cancelled"),
                }
            }
            Err(e) => fail(e.to_string()),
        }
    }
}
