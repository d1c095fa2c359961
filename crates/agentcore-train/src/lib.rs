//! The GRPO job: warm start of the built-in agent, rollouts with the agent loop, verification,
//! rewards, group advantages, policy updates, and held-out evaluation with a significance test.
//!
//! - [`demos`]: the imperfect demonstrations of the warm start.
//! - [`warmstart`]: supervised warm start, cached in the data directory.
//! - [`job`]: the job itself.
#![deny(missing_docs)]

pub mod demos;
pub mod job;
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
    /// Anything else about the job.
    #[error("{0}")]
    Job(String),
}
