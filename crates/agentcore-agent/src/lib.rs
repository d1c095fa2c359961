//! The agent loop: a model turn, tool calls, observations, until a final answer.
//!
//! - [`toolcall`]: reading tool calls out of model output (the Hermes / Qwen `<tool_call>`
//!   convention and OpenAI's `tool_calls`) and checking their arguments against the tool's JSON
//!   Schema, with errors worded for the model to read and correct.
//! - [`sandbox`]: running model-written Python in restricted, warm child processes.
//! - [`tools`]: `python`, `calculator`, HTTP and MCP tools behind one [`tools::Tool`] trait.
//! - [`backend`]: model turns from the in-process engine (token-exact) or an OpenAI-compatible
//!   server.
//! - [`definition`]: the agent definition file (YAML/JSON).
//! - [`rollout`]: the loop itself, many trajectories at once; [`trajectory`]: what it records.
#![deny(missing_docs)]

pub mod backend;
pub mod definition;
pub mod mcp;
pub mod rollout;
pub mod sandbox;
pub mod testing;
pub mod toolcall;
pub mod tools;
pub mod trajectory;
