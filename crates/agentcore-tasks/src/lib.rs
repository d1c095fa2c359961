//! Tasks: what the agent is asked to do and how its answer is judged.
//!
//! - [`task`]: a task in the guide's shape, `{query, expected_outcome}`, with optional
//!   `metadata` (family, difficulty).
//! - [`seed`]: the built-in `seed` suite: seeded generators for the guide's kind of tasks (sort,
//!   max, min, sum, ... small word problems), difficulty levels, and train / held-out splits.
//! - [`data`]: loading user data (a JSON array, JSONL, or a Hugging Face dataset folder of JSONL
//!   split files) with validation that names the item and the rule it breaks.
//! - [`verify`]: comparing a final answer with `expected_outcome.result` by JSON type. The
//!   agent's own claim of success never counts: only the comparison does.
//! - [`judge`]: verdicts on whole trajectories (`result`, `tests` run in the sandbox, custom
//!   verifiers) and the reward registry (built-ins, strategies per `agent_type`, remote rewards).
#![deny(missing_docs)]

pub mod data;
mod error;
pub mod judge;
pub mod seed;
pub mod task;
pub mod verify;

pub use error::{Result, TaskError};
pub use task::{Task, TaskMetadata};
