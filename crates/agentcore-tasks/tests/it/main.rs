//! Integration tests of `agentcore-tasks`.

mod data;
mod seed;
mod verify;
