//! Integration tests of `agentcore-agent`.

mod sandbox;
mod toolcall;
