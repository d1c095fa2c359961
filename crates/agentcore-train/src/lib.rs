//! The GRPO job: warm start of the built-in agent, rollouts with the agent loop, verification,
//! rewards, group advantages, policy updates, and held-out evaluation with a significance test.
//!
//! An iteration, module by module (the job loop is [`job::run`]):
//! 1. [`rollout`]: sample tasks with the job's RNG, roll out a group per task;
//! 2. [`scoring`]: verify each trajectory, reward it, group-relative advantages;
//! 3. [`policy`]: [`policy::Policy::update`] learns from the scored batch ([`policy::weights`]:
//!    the micro-batched GRPO loss of [`update`] and AdamW);
//! 4. [`iteration`]: the phases in order and the iteration's metrics;
//! 5. [`evaluate`]: held-out evaluation (baseline, every `eval_interval`, the end);
//! 6. [`cost`]: spend and whether the next iteration fits the budget;
//! 7. [`checkpoints`]: atomic checkpoints and their retention;
//!
//! and around it: [`spec`] (an agent definition, a config and data into the job's settings: the
//! one place the CLI and the server make jobs), [`settings`] (the job's settings, validated;
//! [`defaults`] holds every default),
//! [`resume`] (start fresh or from the last checkpoint), [`summary`] (the final statistics),
//! [`events`] (what the job reports), [`record`] (events into the store), [`report`]
//! (`report.md` and the learning curves), [`eval`] (`agentcore eval`: a checkpoint against the
//! baseline, paired), [`warmstart`] and [`demos`] (the built-in model's supervised warm start),
//! [`tasks`] (the generated seed suite).
#![deny(missing_docs)]

pub mod bench_grpo;
pub mod checkpoints;
pub mod cost;
pub mod defaults;
pub mod demos;
pub mod eval;
pub mod evaluate;
pub mod events;
pub mod faults;
pub mod iteration;
pub mod job;
pub mod policy;
pub mod record;
pub mod report;
pub mod resume;
pub mod rollout;
pub mod scoring;
pub mod serve;
pub mod settings;
pub mod spec;
pub mod summary;
pub mod sync;
pub mod tasks;
pub mod tracking;
pub mod update;
pub mod warmstart;

use std::path::PathBuf;

/// Errors of the job. [`TrainError::is_invalid_input`] tells the caller's mistakes (exit code 2,
/// JSON-RPC invalid params) from failures while running (exit code 1, internal error).
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The artifact store (object storage) failed: an upload, a download, a checksum.
    #[error(transparent)]
    Artifacts(#[from] agentcore_artifacts::ArtifactError),
    /// A tracker of `report_to` could not be opened (the event file, the MLflow run).
    #[error("report_to: {0}")]
    Tracking(String),
    /// The job was asked to stop (cancelled, or the process is shutting down) before it had a
    /// checkpoint: during the warm start.
    #[error("interrupted: {0}")]
    Interrupted(String),
    /// A fault a test injected (see [`faults`]).
    #[error("injected fault at {point} of iteration {iteration}")]
    Injected {
        /// The point.
        point: &'static str,
        /// The iteration.
        iteration: u32,
    },
    /// The job's settings break rules; each problem names the field, the rule and the value.
    #[error("invalid job settings: {}", problems.join("; "))]
    Settings {
        /// The problems.
        problems: Vec<String>,
    },
    /// A GRPO config that does not parse or breaks a range (the field named).
    #[error(transparent)]
    Config(agentcore_grpo::GrpoError),
    /// No job of that id in the data directory.
    #[error("{message}")]
    NoSuchJob {
        /// The id asked for.
        job_id: String,
        /// What was looked for where.
        message: String,
    },
    /// The job has no checkpoint of that id (or none yet).
    #[error("job `{job_id}` has {}", match checkpoint_id {
        Some(id) => format!("no checkpoint `{id}` (kept: {})", kept.join(", ")),
        None => "no checkpoint yet".to_string(),
    })]
    NoSuchCheckpoint {
        /// The job.
        job_id: String,
        /// The checkpoint asked for (None: any).
        checkpoint_id: Option<String>,
        /// The checkpoints the job keeps.
        kept: Vec<String>,
    },
    /// A job was resumed with settings other than its own.
    #[error(
        "job `{job_id}` exists with other settings ({}); resume it without changing them",
        path.display()
    )]
    SettingsChanged {
        /// The job.
        job_id: String,
        /// Its saved settings.
        path: PathBuf,
    },
    /// Evaluation data without tasks, or another problem of the caller's data.
    #[error("{0}")]
    InvalidData(String),
    /// A file of the job's state (settings, job state) that does not parse.
    #[error("corrupt job state {}: {message}", path.display())]
    CorruptState {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A file or directory that could not be written or read.
    #[error("{}: {message}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS's message.
        message: String,
    },
    /// A reward function failed.
    #[error("reward: {0}")]
    Reward(String),
    /// The learning curves could not be drawn.
    #[error("drawing the learning curves: {0}")]
    Plot(String),
    /// The update's inputs are inconsistent (a bug of the caller of [`update::policy_update`]).
    #[error("policy update: {0}")]
    Update(String),
    /// The rollout backend failed.
    #[error("backend: {0}")]
    Backend(String),
    /// Config or algorithm error.
    #[error(transparent)]
    Grpo(#[from] agentcore_grpo::GrpoError),
    /// Model engine error.
    #[error(transparent)]
    Model(#[from] agentcore_model::ModelError),
    /// Task error.
    #[error(transparent)]
    Tasks(#[from] agentcore_tasks::TaskError),
    /// Tensor error.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// File error.
    #[error(transparent)]
    Fs(#[from] agentcore_fs::FsError),
}

impl TrainError {
    /// Whether the error is the caller's (bad settings, an unknown job or checkpoint, changed
    /// settings, bad data) rather than a failure while running.
    #[must_use]
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            Self::Settings { .. }
                | Self::Config(_)
                | Self::NoSuchJob { .. }
                | Self::NoSuchCheckpoint { .. }
                | Self::SettingsChanged { .. }
                | Self::InvalidData(_)
        )
    }
}
