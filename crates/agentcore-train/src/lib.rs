//! The GRPO job: warm start of the built-in agent, rollouts with the agent loop, verification,
//! rewards, group advantages, policy updates, and held-out evaluation with a significance test.
//!
//! - [`demos`]: the imperfect demonstrations of the warm start.
//! - [`warmstart`]: supervised warm start, cached in the data directory.
//! - [`eval`]: a checkpoint against the agent before training, paired.
//! - [`job`]: the job itself.
//! - [`record`]: the job's events into the store.
//! - [`report`]: `report.md` and the learning curves of a finished job.
//! - [`update`]: one policy update (micro-batched GRPO loss, AdamW step).
#![deny(missing_docs)]

pub mod demos;
pub mod eval;
pub mod job;
pub mod record;
pub mod report;
pub mod update;
pub mod warmstart;

/// Errors of the job.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
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
    /// Anything else about the job.
    #[error("{0}")]
    Job(String),
}
