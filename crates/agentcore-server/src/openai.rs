//! `POST /v1/chat/completions`: a deployed agent behind the OpenAI chat API, so any OpenAI
//! client or agent framework calls a trained agent unchanged. `model` names the agent
//! (`agent_id`, or `agent_id@environment`; default environment `production`); the last user
//! message is the query; `user` is the A/B test's user key. The answer is the assistant
//! message; the invocation's id, arm, checkpoint, latency and cost come in an `agentcore`
//! object beside the usual fields. Errors use OpenAI's shape (`{"error": {message, type,
//! code}}`) with its HTTP statuses. Options of the chat API the agent does not take
//! (`temperature`, `max_tokens`, ...) are ignored: the deployed policy decodes as it was
//! evaluated; `stream: true` and `n` > 1 are refused.

use std::sync::Arc;

use agentcore_api::params::{DEFAULT_ENVIRONMENT, InvokeParams};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::AppState;
use crate::errors::ApiError;

fn error(status: StatusCode, kind: &str, code: &str, message: &str) -> Response {
    (status, axum::Json(json!({"error": {"message": message, "type": kind, "code": code}})))
        .into_response()
}

fn from_api(e: ApiError) -> Response {
    let code = e.code();
    let rpc: agentcore_api::RpcError = e.into();
    let (status, kind) = match code {
        agentcore_api::codes::NOT_FOUND | agentcore_api::codes::NO_DEPLOYMENT => {
            (StatusCode::NOT_FOUND, "not_found_error")
        }
        agentcore_api::codes::PERMISSION_DENIED => (StatusCode::FORBIDDEN, "permission_error"),
        agentcore_api::codes::INTERNAL_ERROR => (StatusCode::INTERNAL_SERVER_ERROR, "api_error"),
        _ => (StatusCode::BAD_REQUEST, "invalid_request_error"),
    };
    error(status, kind, &code.to_string(), &rpc.message)
}

/// The text of a message's `content`: a string, or the text parts of an array.
fn text_of(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => {
            let texts: Vec<&str> = parts
                .iter()
                .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect();
            (!texts.is_empty()).then(|| texts.join("\n"))
        }
        _ => None,
    }
}

/// The invocation a chat request asks for, or what is wrong with it.
///
/// # Errors
/// The field and the rule it breaks.
pub fn parse_request(body: &Value) -> Result<InvokeParams, String> {
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .ok_or("model is required: agent_id or agent_id@environment")?;
    let (agent_id, environment) = match model.rsplit_once('@') {
        Some((a, e)) => (a.to_owned(), e.to_owned()),
        None => (model.to_owned(), DEFAULT_ENVIRONMENT.to_owned()),
    };
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        return Err("stream: true is not supported by deployed agents; send stream: false".into());
    }
    if body.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err("n must be 1".into());
    }
    let messages =
        body.get("messages").and_then(Value::as_array).ok_or("messages must be an array")?;
    let query = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .and_then(|m| m.get("content"))
        .and_then(text_of)
        .ok_or("messages must hold a user message with text content")?;
    let user_key = body.get("user").and_then(Value::as_str).map(str::to_owned);
    Ok(InvokeParams { agent_id, query, environment, user_key, expected_outcome: None })
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = match crate::rpc::authenticate(&state, &headers) {
        Ok(c) => c,
        Err(_) => {
            return error(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid_api_key",
                "missing or invalid bearer token (the service's JWT is the API key)",
            );
        }
    };
    if !caller.can("agents:invoke") {
        return from_api(ApiError::PermissionDenied("agents:invoke".into()));
    }
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            let m = format!("the body is not JSON: {e}");
            return error(StatusCode::BAD_REQUEST, "invalid_request_error", "parse_error", &m);
        }
    };
    let params = match parse_request(&parsed) {
        Ok(p) => p,
        Err(m) => return error(StatusCode::BAD_REQUEST, "invalid_request_error", "invalid", &m),
    };
    let model = parsed.get("model").cloned().unwrap_or(Value::Null);
    let r = match crate::rpc::deploy::invoke(&state, &caller, params).await {
        Ok(r) => r,
        Err(e) => return from_api(e),
    };
    let content = r.answer.clone().unwrap_or_default();
    axum::Json(json!({
        "id": format!("chatcmpl-{}", r.invocation_id),
        "object": "chat.completion",
        "created": chrono::Utc::now().timestamp(),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": "stop",
        }],
        "agentcore": r,
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_requests_name_the_agent_environment_query_and_user() {
        let p = parse_request(&json!({
            "model": "sorter@staging",
            "messages": [
                {"role": "system", "content": "ignored"},
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "x"},
                {"role": "user", "content": [{"type": "text", "text": "sort [3, 1]"}]},
            ],
            "user": "u-1", "temperature": 0.2,
        }))
        .unwrap();
        assert_eq!(
            (p.agent_id.as_str(), p.environment.as_str(), p.query.as_str()),
            ("sorter", "staging", "sort [3, 1]")
        );
        assert_eq!(p.user_key.as_deref(), Some("u-1"));
        let p =
            parse_request(&json!({"model": "a", "messages": [{"role": "user", "content": "q"}]}))
                .unwrap();
        assert_eq!(p.environment, "production");
        for (body, rule) in [
            (json!({"messages": []}), "model is required"),
            (
                json!({"model": "a", "messages": [{"role": "system", "content": "s"}]}),
                "user message",
            ),
            (json!({"model": "a", "stream": true, "messages": []}), "stream"),
            (json!({"model": "a", "n": 2, "messages": []}), "n must be 1"),
        ] {
            let e = parse_request(&body).unwrap_err();
            assert!(e.contains(rule), "{e}");
        }
    }
}
