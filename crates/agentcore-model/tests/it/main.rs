//! Integration tests of `agentcore-model`.
#![expect(clippy::print_stderr, reason = "tests report measured differences and skips on stderr")]

mod common;
mod fused;
mod fused_block;
mod gemma;
mod generation;
mod gradients;
mod hub;
mod lora;
mod loss;
mod training;
