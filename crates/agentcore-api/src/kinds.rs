//! The closed sets of names the service's parts share: a job's status, the kinds of events the
//! store's log records, and the contract's webhook events. On the wire and in the database they
//! are the strings [`JobStatus::as_str`], [`EventKind::as_str`] and [`WebhookEvent::as_str`]
//! name.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A job's status (`training.get_status`'s `status`, the store's `jobs.status`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for a worker.
    Queued,
    /// A worker runs it.
    Running,
    /// It ran to its end (all iterations, early stopping or the budget).
    Completed,
    /// It failed (the error says why).
    Failed,
    /// It was cancelled (with a checkpoint when it had started).
    Cancelled,
}

impl JobStatus {
    /// Every status.
    pub const ALL: [Self; 5] =
        [Self::Queued, Self::Running, Self::Completed, Self::Failed, Self::Cancelled];

    /// The wire name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether the job has ended.
    #[must_use]
    pub const fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

/// What the store's event log records (`events.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum EventKind {
    /// The job started or resumed on a worker.
    #[serde(rename = "training.job.started")]
    JobStarted,
    /// The baseline evaluation.
    #[serde(rename = "training.baseline")]
    Baseline,
    /// An iteration's metrics.
    #[serde(rename = "training.iteration")]
    Iteration,
    /// A checkpoint was written.
    #[serde(rename = "training.checkpoint.saved")]
    CheckpointSaved,
    /// The budget crossed 75% or 90%.
    #[serde(rename = "training.budget.warning")]
    BudgetWarning,
    /// The budget was used up.
    #[serde(rename = "training.budget.exceeded")]
    BudgetExceeded,
    /// The job completed.
    #[serde(rename = "training.job.completed")]
    JobCompleted,
    /// The job failed.
    #[serde(rename = "training.job.failed")]
    JobFailed,
    /// The job was cancelled.
    #[serde(rename = "training.job.cancelled")]
    JobCancelled,
    /// A checkpoint of the job was deployed to an environment.
    #[serde(rename = "training.deployment.created")]
    DeploymentCreated,
    /// A deployment of a checkpoint of the job was rolled back.
    #[serde(rename = "training.deployment.rolled_back")]
    DeploymentRolledBack,
    /// An A/B test whose experiment is a checkpoint of the job reached a decision, or changed
    /// its split by its rules.
    #[serde(rename = "training.ab_test.decision")]
    AbTestDecision,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [Self; 12] = [
        Self::JobStarted,
        Self::Baseline,
        Self::Iteration,
        Self::CheckpointSaved,
        Self::BudgetWarning,
        Self::BudgetExceeded,
        Self::JobCompleted,
        Self::JobFailed,
        Self::JobCancelled,
        Self::DeploymentCreated,
        Self::DeploymentRolledBack,
        Self::AbTestDecision,
    ];

    /// The stored name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::JobStarted => "training.job.started",
            Self::Baseline => "training.baseline",
            Self::Iteration => "training.iteration",
            Self::CheckpointSaved => "training.checkpoint.saved",
            Self::BudgetWarning => "training.budget.warning",
            Self::BudgetExceeded => "training.budget.exceeded",
            Self::JobCompleted => "training.job.completed",
            Self::JobFailed => "training.job.failed",
            Self::JobCancelled => "training.job.cancelled",
            Self::DeploymentCreated => "training.deployment.created",
            Self::DeploymentRolledBack => "training.deployment.rolled_back",
            Self::AbTestDecision => "training.ab_test.decision",
        }
    }

    /// The event of a job ending with `status` (none for a status that is not an end).
    #[must_use]
    pub const fn ended(status: JobStatus) -> Option<Self> {
        match status {
            JobStatus::Completed => Some(Self::JobCompleted),
            JobStatus::Failed => Some(Self::JobFailed),
            JobStatus::Cancelled => Some(Self::JobCancelled),
            JobStatus::Queued | JobStatus::Running => None,
        }
    }

    /// The job's status after this event, for the events that change it.
    #[must_use]
    pub const fn status(self) -> Option<JobStatus> {
        match self {
            Self::JobStarted => Some(JobStatus::Running),
            Self::JobCompleted => Some(JobStatus::Completed),
            Self::JobFailed => Some(JobStatus::Failed),
            Self::JobCancelled => Some(JobStatus::Cancelled),
            _ => None,
        }
    }
}

/// The contract's webhook events (`training.subscribe_webhook`'s `events`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum WebhookEvent {
    /// A job started.
    #[serde(rename = "training.job.started")]
    JobStarted,
    /// Every `progress_every` iterations.
    #[serde(rename = "training.job.progress")]
    JobProgress,
    /// A job completed.
    #[serde(rename = "training.job.completed")]
    JobCompleted,
    /// A job failed.
    #[serde(rename = "training.job.failed")]
    JobFailed,
    /// A job was cancelled.
    #[serde(rename = "training.job.cancelled")]
    JobCancelled,
    /// The budget crossed a warning threshold.
    #[serde(rename = "training.budget.warning")]
    BudgetWarning,
    /// A checkpoint was written.
    #[serde(rename = "training.checkpoint.saved")]
    CheckpointSaved,
    /// A checkpoint was deployed.
    #[serde(rename = "training.deployment.created")]
    DeploymentCreated,
    /// A deployment was rolled back (by a call or an A/B test's guardrail).
    #[serde(rename = "training.deployment.rolled_back")]
    DeploymentRolledBack,
    /// An A/B test decided, or raised its split.
    #[serde(rename = "training.ab_test.decision")]
    AbTestDecision,
}

impl WebhookEvent {
    /// Every event.
    pub const ALL: [Self; 10] = [
        Self::JobStarted,
        Self::JobProgress,
        Self::JobCompleted,
        Self::JobFailed,
        Self::JobCancelled,
        Self::BudgetWarning,
        Self::CheckpointSaved,
        Self::DeploymentCreated,
        Self::DeploymentRolledBack,
        Self::AbTestDecision,
    ];

    /// The wire name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::JobStarted => "training.job.started",
            Self::JobProgress => "training.job.progress",
            Self::JobCompleted => "training.job.completed",
            Self::JobFailed => "training.job.failed",
            Self::JobCancelled => "training.job.cancelled",
            Self::BudgetWarning => "training.budget.warning",
            Self::CheckpointSaved => "training.checkpoint.saved",
            Self::DeploymentCreated => "training.deployment.created",
            Self::DeploymentRolledBack => "training.deployment.rolled_back",
            Self::AbTestDecision => "training.ab_test.decision",
        }
    }

    /// The webhook event of a stored event (progress is sampled by the caller), if any.
    #[must_use]
    pub const fn of(kind: EventKind) -> Option<Self> {
        match kind {
            EventKind::JobStarted => Some(Self::JobStarted),
            EventKind::Iteration => Some(Self::JobProgress),
            EventKind::JobCompleted => Some(Self::JobCompleted),
            EventKind::JobFailed => Some(Self::JobFailed),
            EventKind::JobCancelled => Some(Self::JobCancelled),
            EventKind::BudgetWarning => Some(Self::BudgetWarning),
            EventKind::CheckpointSaved => Some(Self::CheckpointSaved),
            EventKind::DeploymentCreated => Some(Self::DeploymentCreated),
            EventKind::DeploymentRolledBack => Some(Self::DeploymentRolledBack),
            EventKind::AbTestDecision => Some(Self::AbTestDecision),
            EventKind::Baseline | EventKind::BudgetExceeded => None,
        }
    }
}

/// A name that is none of a closed set's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} must be one of {allowed}, got {got:?}")]
pub struct UnknownName {
    /// What was parsed.
    pub what: &'static str,
    /// The allowed names.
    pub allowed: String,
    /// What was given.
    pub got: String,
}

macro_rules! names {
    ($t:ty, $what:literal) => {
        impl FromStr for $t {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::ALL.into_iter().find(|v| v.as_str() == s).ok_or_else(|| UnknownName {
                    what: $what,
                    allowed: Self::ALL.map(Self::as_str).join(", "),
                    got: s.to_owned(),
                })
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }
        impl PartialEq<str> for $t {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }
        impl PartialEq<&str> for $t {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
}

names!(JobStatus, "status");
names!(EventKind, "event kind");
names!(WebhookEvent, "event");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_serde_and_from_str() {
        for s in JobStatus::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
            assert_eq!(s.as_str().parse::<JobStatus>().unwrap(), s);
        }
        for k in EventKind::ALL {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
            assert_eq!(k.as_str().parse::<EventKind>().unwrap(), k);
        }
        for w in WebhookEvent::ALL {
            assert_eq!(serde_json::to_value(w).unwrap(), w.as_str());
            assert_eq!(w.as_str().parse::<WebhookEvent>().unwrap(), w);
        }
        let e = "done".parse::<JobStatus>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "status must be one of queued, running, completed, failed, cancelled, got \"done\""
        );
    }

    #[test]
    fn ends_and_their_events_agree() {
        for s in JobStatus::ALL {
            assert_eq!(EventKind::ended(s).is_some(), s.is_final());
            if let Some(k) = EventKind::ended(s) {
                assert_eq!(k.status(), Some(s));
                assert!(WebhookEvent::of(k).is_some());
            }
        }
    }
}
