//! The GRPO algorithm on plain numbers.
//!
//! This crate is the part of `agentcore` that every other crate agrees on: the training
//! configuration ([`GRPOConfig`]), group-relative advantages ([`advantages`]), a plain-`f64`
//! reference of the clipped surrogate loss that the tensor implementation is tested against
//! ([`loss`]), reward shaping ([`rewards`]), the statistics that decide whether training helped
//! ([`stats`]) and budget arithmetic in exact decimals ([`budget`]).
//!
//! It has no I/O, no async and no global state: every function takes its inputs and returns its
//! outputs, and every random draw comes from an RNG the caller passes in. The formulas follow
//! `shared/grpo-math.md`; each section of that file has tests with its vectors.
//!
//! ```
//! use agentcore_grpo::advantages::{group_advantages, AdvantageEstimator, ScaleRewards};
//!
//! let groups = vec![vec![1.0, 0.0, 0.0, 0.0]];
//! let out = group_advantages(&groups, AdvantageEstimator::Grpo, ScaleRewards::Group)?;
//! // mean 0.25, sample std 0.5: A = (1.5, -0.5, -0.5, -0.5) up to the 1e-4 epsilon.
//! assert!((out.advantages[0][0] - 1.5).abs() < 1e-3);
//! # Ok::<(), agentcore_grpo::GrpoError>(())
//! ```
#![deny(missing_docs)]

pub mod advantages;
pub mod budget;
pub mod config;
mod error;
pub mod loss;
mod numeric;
pub mod rewards;
pub mod sequential;
pub mod stats;

pub use config::{ConfigFormat, GRPOConfig};
pub use error::{FieldError, GrpoError};
