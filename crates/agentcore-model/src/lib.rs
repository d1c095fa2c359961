//! Language models for agentcore, in our own candle code.
//!
//! What the trainer needs from a model: one decoder for the built-in tiny model, the Llama /
//! Qwen2 family and Gemma 3, with LoRA ([`decoder`]); loading from Hugging Face directories and
//! GGUF files ([`hub`]); tokenizers, the built-in byte one and Hugging Face ones ([`tokenizer`]); batched generation with a KV cache and seeded sampling, and
//! per-token log-probs of given sequences ([`generate`]); the GRPO loss on tensors, the
//! differentiable twin of `agentcore_grpo::loss` ([`loss`]); AdamW with gradient clipping
//! ([`optim`]); atomic checkpoints with exact resume ([`checkpoint`]).
//!
//! Everything runs on candle's CPU backend in f32. candle's fused ops (`softmax_last_dim`,
//! `rms_norm`, `rope`) have no backward and silently drop gradients, so the training path uses
//! composed ops only; a test checks that every parameter receives a gradient.
#![deny(missing_docs)]

pub mod bench;
pub mod checkpoint;
pub mod decoder;
pub mod device;
mod error;
pub mod fused;
mod fused_block;
pub mod generate;
pub mod hub;
pub mod loss;
pub mod optim;
pub mod params;
pub mod qmatmul;
pub mod tokenizer;

pub use error::{ModelError, Result};
