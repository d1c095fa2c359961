//! The agent loop: a model turn, tool calls, observations, until a final answer.
//!
//! So far: [`toolcall`], reading tool calls out of model output (the Hermes / Qwen
//! `<tool_call>` convention and OpenAI's `tool_calls`) and checking their arguments against the
//! tool's JSON Schema, with errors worded for the model to read and correct.
#![deny(missing_docs)]

pub mod toolcall;
