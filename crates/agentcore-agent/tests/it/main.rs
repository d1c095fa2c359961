//! Integration tests of `agentcore-agent`.

mod definition;
mod mcp;
mod openai;
mod rollout;
mod sandbox;
mod toolcall;
