//! Integration tests of `agentcore-tasks`.

mod data;
mod judge;
mod seed;
mod verify;
