//! Integration tests of `agentcore-model`.

mod common;
mod gemma;
mod generation;
mod gradients;
mod loss;
mod training;
