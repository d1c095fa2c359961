//! Integration tests of `agentcore-model`.

mod common;
mod generation;
mod gradients;
mod loss;
mod training;
