//! Integration tests of `agentcore-agent`.

mod definition;
mod openai;
mod rollout;
mod sandbox;
mod toolcall;
