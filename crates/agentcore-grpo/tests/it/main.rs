//! Integration tests of `agentcore-grpo`: one binary, one module per concern.

mod config;
mod math_vectors;
mod properties;
mod scipy;
mod stats_behaviour;
