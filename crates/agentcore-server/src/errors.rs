//! Errors every part of the server answers with the same way.

use agentcore_api::{RpcError, codes};

/// An internal error: logged with a correlation id, which the caller gets instead of the cause
/// (database paths and messages stay in the server's log).
pub(crate) fn internal(context: &str, e: impl std::fmt::Display) -> RpcError {
    let correlation = uuid::Uuid::new_v4().simple().to_string();
    tracing::error!(correlation = %correlation, context, error = %e, "internal error");
    RpcError::new(codes::INTERNAL_ERROR, format!("internal error (correlation id {correlation})"))
}
