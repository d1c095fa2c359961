//! Integration tests of `agentcore-agent`.

mod rollout;
mod sandbox;
mod toolcall;
