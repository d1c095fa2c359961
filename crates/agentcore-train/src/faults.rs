//! The fault-injection seam of the job runner: named points of an iteration and of a checkpoint
//! write where a test makes the job fail (an error), panic, or abort the process (as `kill -9`
//! would: no destructors, no flush), to prove that every such failure leaves a job that resumes
//! to the result of an uninterrupted run.
//!
//! In-process tests register faults on the job's [`Faults`] (`JobContext::faults`); a test that
//! runs the CLI as a subprocess sets `AGENTCORE_CRASH_AT=<point>:<iteration>` (abort), or
//! `AGENTCORE_SIGTERM_AT=<point>:<iteration>` (the process sends itself SIGTERM there and goes
//! on: a graceful stop at a known moment).

use std::sync::{Arc, Mutex, PoisonError};

use crate::TrainError;

/// Where a fault can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// After an iteration's rollouts, before they are scored.
    Rollout,
    /// After the policy update, before anything of the iteration is recorded.
    Update,
    /// After the held-out evaluation of an iteration.
    Evaluation,
    /// Before an iteration's metrics are recorded (its trajectories are).
    Record,
    /// Half-way through writing a checkpoint's files.
    Checkpoint,
}

impl FaultPoint {
    /// Every point.
    pub const ALL: [Self; 5] =
        [Self::Rollout, Self::Update, Self::Evaluation, Self::Record, Self::Checkpoint];

    /// The name (`AGENTCORE_CRASH_AT` uses it).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Rollout => "rollout",
            Self::Update => "update",
            Self::Evaluation => "evaluation",
            Self::Record => "record",
            Self::Checkpoint => "checkpoint",
        }
    }
}

/// With `AGENTCORE_SIGTERM_AT` naming a point of `iteration`: waits (at most 30 s) until the
/// process has turned the signal it sent itself into `stop`, so the graceful stop lands on that
/// iteration however late the signal handler runs (a test's determinism; nothing otherwise).
pub fn await_own_sigterm(iteration: u32, stop: &std::sync::atomic::AtomicBool) {
    let Ok(spec) = std::env::var("AGENTCORE_SIGTERM_AT") else { return };
    if spec.rsplit_once(':').and_then(|(_, i)| i.parse::<u32>().ok()) != Some(iteration) {
        return;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !stop.load(std::sync::atomic::Ordering::SeqCst) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// What happens at the point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    /// The step fails with [`TrainError::Injected`].
    Error,
    /// The step panics.
    Panic,
    /// The process aborts.
    Abort,
}

/// The faults armed for one job; each fires once. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct Faults(Arc<Mutex<Vec<(FaultPoint, u32, FaultAction)>>>);

impl Faults {
    /// Arms `action` at `point` of `iteration`.
    pub fn inject(&self, point: FaultPoint, iteration: u32, action: FaultAction) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).push((point, iteration, action));
    }

    /// Called by the runner at `point` of `iteration`: fires an armed fault (once), or the
    /// `AGENTCORE_CRASH_AT` hook.
    ///
    /// # Errors
    /// [`TrainError::Injected`] for an armed error.
    ///
    /// # Panics
    /// For an armed panic.
    pub fn hit(&self, point: FaultPoint, iteration: u32) -> Result<(), TrainError> {
        if let Ok(spec) = std::env::var("AGENTCORE_CRASH_AT")
            && spec == format!("{}:{iteration}", point.name())
        {
            std::process::abort();
        }
        if let Ok(spec) = std::env::var("AGENTCORE_SIGTERM_AT")
            && spec == format!("{}:{iteration}", point.name())
        {
            // What Kubernetes sends a pod it stops, at a known point of the iteration: the
            // process's own signal handling takes it from here (the iteration goes on).
            let pid = std::process::id().to_string();
            if let Err(e) = std::process::Command::new("kill").args(["-TERM", &pid]).status() {
                tracing::warn!(error = %e, "AGENTCORE_SIGTERM_AT: could not run kill");
            }
        }
        let action = {
            let mut armed = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            let found = armed.iter().position(|&(p, i, _)| p == point && i == iteration);
            found.map(|k| armed.remove(k).2)
        };
        match action {
            None => Ok(()),
            Some(FaultAction::Error) => {
                Err(TrainError::Injected { point: point.name(), iteration })
            }
            Some(FaultAction::Panic) => {
                panic!("injected panic at {} of iteration {iteration}", point.name())
            }
            Some(FaultAction::Abort) => std::process::abort(),
        }
    }
}
