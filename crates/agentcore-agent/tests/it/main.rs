//! Integration tests of `agentcore-agent`.

mod openai;
mod rollout;
mod sandbox;
mod toolcall;
