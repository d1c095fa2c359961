//! Integration tests of `agentcore-tasks`.

mod data;
mod e2e;
mod judge;
mod seed;
mod verify;
