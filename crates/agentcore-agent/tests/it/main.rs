//! Integration tests of `agentcore-agent`.

mod toolcall;
