//! `POST /api/v1/jsonrpc` and `/metrics`: authentication, rate limits, JSON-RPC envelopes
//! (single calls, batches, notifications), and the methods of the contract.

use std::str::FromStr;
use std::sync::Arc;

use agentcore_api::params::{
    AgentParams, CancelParams, EvaluateParams, ExportParams, JobParams, ListParams, NoParams,
    RewardsRegisterParams, StartParams, SubscribeParams,
};
use agentcore_api::{
    AgentList, BaselineComparison, EvalMetrics, EvaluateResult, ExportResult, RewardEndpoint,
};
use agentcore_api::{
    CancelResult, Cost, JobStatus, ListResult, Progress, Request, Response as RpcResponse,
    StartResult, StatusResult, SubscribeResult, methods,
};
use agentcore_store::{
    CancelOutcome, JobFilter, JobRow, NewJob, Store, TrajectoryFilter, WebhookRow,
};
use agentcore_tasks::Task;
use agentcore_train::settings::JobData;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde_json::{Map, Value, json};

use agentcore_tasks::data::kind;

use crate::AppState;
use crate::auth::Caller;
use crate::errors::ApiError;
use crate::limits::{Decision, unix_now};

/// The bearer token of a request.
#[must_use]
pub fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
}

fn unauthorized(message: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
        axum::Json(json!({"error": message})),
    )
        .into_response()
}

pub(crate) fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Caller, Box<Response>> {
    let Some(token) = bearer(headers) else {
        return Err(Box::new(unauthorized("missing bearer token")));
    };
    state.auth.verify(&token).map_err(|e| Box::new(unauthorized(&e)))
}

fn with_limit_headers(mut response: Response, d: Option<Decision>) -> Response {
    if let Some(d) = d {
        let h = response.headers_mut();
        for (name, value) in [
            ("x-ratelimit-limit", d.limit.to_string()),
            ("x-ratelimit-remaining", d.remaining.to_string()),
            ("x-ratelimit-reset", d.reset.to_string()),
        ] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        }
    }
    response
}

/// Most calls in one batch: a larger batch is refused whole, before any call runs (a 2 MB batch
/// of a million calls used to answer 132 MB).
pub const MAX_BATCH_LEN: usize = 100;

/// The JSON-RPC endpoint. The token is checked before the body is read: an unauthenticated
/// request costs the server its headers only.
pub async fn handle(
    State(state): State<Arc<AppState>>,
    request: axum::extract::Request,
) -> Response {
    let caller = match authenticate(&state, request.headers()) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let body: Bytes = match axum::body::to_bytes(request.into_body(), state.config.body_limit).await
    {
        Ok(b) => b,
        Err(e) => {
            let message = format!(
                "the request body could not be read (at most {} bytes): {e}",
                state.config.body_limit
            );
            return (StatusCode::PAYLOAD_TOO_LARGE, axum::Json(json!({"error": message})))
                .into_response();
        }
    };
    let (items, batch) = match envelope(&body) {
        Ok(x) => x,
        Err(response) => return axum::Json(*response).into_response(),
    };
    // Rate limits first, for every call of the request.
    let now = unix_now();
    let mut shown: Option<Decision> = None;
    for item in &items {
        let Some(method) = item.get("method").and_then(Value::as_str) else { continue };
        if let Some(d) = state.limiter.check(&caller.org, &caller.subject, method, now) {
            if !d.allowed {
                let err =
                    ApiError::RateLimited { method: method.to_owned(), limit: d.limit }.into();
                let body = axum::Json(RpcResponse::err(
                    item.get("id").cloned().unwrap_or(Value::Null),
                    err,
                ));
                let mut r = (StatusCode::TOO_MANY_REQUESTS, body).into_response();
                if let Ok(v) = HeaderValue::from_str(&d.retry_after(now).to_string()) {
                    r.headers_mut().insert(header::RETRY_AFTER, v);
                }
                return with_limit_headers(r, Some(d));
            }
            if shown.is_none_or(|s| d.remaining < s.remaining) {
                shown = Some(d);
            }
        }
    }
    let mut responses = Vec::new();
    for item in items {
        if let Some(r) = call(&state, &caller, item).await {
            responses.push(r);
        }
    }
    let response = if responses.is_empty() {
        StatusCode::NO_CONTENT.into_response()
    } else if batch {
        axum::Json(responses).into_response()
    } else {
        axum::Json(responses.remove(0)).into_response()
    };
    with_limit_headers(response, shown)
}

/// The calls of a request body: one call (`false`) or a batch (`true`) of at most
/// [`MAX_BATCH_LEN`]; else the one error response for the whole body (a parse error, an empty
/// or too large batch).
///
/// # Errors
/// The response to send instead.
pub fn envelope(body: &[u8]) -> Result<(Vec<Value>, bool), Box<RpcResponse>> {
    let parsed: Value = serde_json::from_slice(body).map_err(|e| {
        Box::new(RpcResponse::err(Value::Null, ApiError::Parse(e.to_string()).into()))
    })?;
    match parsed {
        Value::Array(items) if items.is_empty() => Err(Box::new(RpcResponse::err(
            Value::Null,
            ApiError::InvalidRequest("empty batch".into()).into(),
        ))),
        Value::Array(items) if items.len() > MAX_BATCH_LEN => Err(Box::new(RpcResponse::err(
            Value::Null,
            ApiError::InvalidRequest(format!(
                "a batch holds at most {MAX_BATCH_LEN} calls, got {}",
                items.len()
            ))
            .into(),
        ))),
        Value::Array(items) => Ok((items, true)),
        other => Ok((vec![other], false)),
    }
}

/// One call of a request, read.
#[derive(Debug)]
pub struct ParsedCall {
    /// The method.
    pub method: String,
    /// The params (an object; none reads as empty).
    pub params: Map<String, Value>,
    /// The id (`None`: a notification).
    pub id: Option<Value>,
}

/// One call of a request; else the error response (`None` for a notification whose params are
/// wrong: nobody is there to read it).
///
/// # Errors
/// An invalid request, params that are not an object.
pub fn parse_call(item: Value) -> Result<ParsedCall, Option<Box<RpcResponse>>> {
    let id = item.get("id").cloned();
    let request: Request = serde_json::from_value(item).map_err(|e| {
        let err = ApiError::InvalidRequest(e.to_string()).into();
        Some(Box::new(RpcResponse::err(id.clone().unwrap_or(Value::Null), err)))
    })?;
    if request.jsonrpc != "2.0" {
        let err =
            ApiError::InvalidRequest(format!("jsonrpc must be \"2.0\", got {:?}", request.jsonrpc))
                .into();
        return Err(Some(Box::new(RpcResponse::err(id.unwrap_or(Value::Null), err))));
    }
    let params = match request.params {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(other) => {
            let err =
                ApiError::params(format!("params must be an object, got {}", kind(&other))).into();
            return Err(request.id.map(|id| Box::new(RpcResponse::err(id, err))));
        }
    };
    Ok(ParsedCall { method: request.method, params, id: request.id })
}

/// One call; `None` for a notification.
async fn call(state: &Arc<AppState>, caller: &Caller, item: Value) -> Option<RpcResponse> {
    let ParsedCall { method, params, id } = match parse_call(item) {
        Ok(x) => x,
        Err(response) => return response.map(|r| *r),
    };
    let result = dispatch(state, caller, &method, params).await;
    let id = id?;
    Some(match result {
        Ok(v) => RpcResponse::ok(id, v),
        Err(e) => RpcResponse::err(id, e.into()),
    })
}

fn need(caller: &Caller, permission: &str) -> Result<(), ApiError> {
    if caller.can(permission) {
        Ok(())
    } else {
        Err(ApiError::PermissionDenied(permission.to_owned()))
    }
}

/// The params of a method as its type (`agentcore_api::params`): a missing or unknown key, or a
/// value of the wrong type, is refused naming the field.
fn typed<T: serde::de::DeserializeOwned>(params: Map<String, Value>) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(Value::Object(params)).map_err(|e| {
        let field = e.path().to_string();
        let message = e.into_inner().to_string();
        let at = if field == "." { String::new() } else { format!(".{field}") };
        ApiError::InvalidParams { message: format!("params{at}: {message}"), field: Some(field) }
    })
}

fn check_job_id(id: &str) -> Result<(), ApiError> {
    if uuid::Uuid::parse_str(id).is_err() {
        return Err(ApiError::param("job_id", format!("invalid job_id {id:?}: must be a UUID")));
    }
    Ok(())
}

/// The caller's job, or not found (another organisation's job is not found either).
async fn owned_job(state: &AppState, caller: &Caller, id: &str) -> Result<JobRow, ApiError> {
    match state.store.job(id).await? {
        Some(j) if j.org == caller.org => Ok(j),
        _ => Err(ApiError::no_job(id)),
    }
}

async fn dispatch(
    state: &Arc<AppState>,
    caller: &Caller,
    method: &str,
    params: Map<String, Value>,
) -> Result<Value, ApiError> {
    fn to_value<T: serde::Serialize>(v: Result<T, ApiError>) -> Result<Value, ApiError> {
        Ok(serde_json::to_value(v?)?)
    }
    match method {
        methods::START => {
            need(caller, "training:start")?;
            to_value(start(state, caller, typed(params)?).await)
        }
        methods::STATUS => {
            need(caller, "training:view")?;
            let p: JobParams = typed(params)?;
            check_job_id(&p.job_id)?;
            let job = owned_job(state, caller, &p.job_id).await?;
            to_value(status(&state.store, &job).await)
        }
        methods::LIST => {
            need(caller, "training:view")?;
            to_value(list(state, caller, typed(params)?).await)
        }
        methods::CANCEL => {
            need(caller, "training:cancel")?;
            to_value(cancel(state, caller, typed(params)?).await)
        }
        methods::EVALUATE => {
            need(caller, "training:evaluate")?;
            to_value(evaluate(state, caller, typed(params)?).await)
        }
        methods::EXPORT => {
            need(caller, "data:export")?;
            to_value(export(state, caller, typed(params)?).await)
        }
        methods::SUBSCRIBE => {
            need(caller, "training:start")?;
            to_value(subscribe(state, caller, typed(params)?).await)
        }
        methods::AGENTS_REGISTER => {
            need(caller, "agents:manage")?;
            crate::agents::register(state, caller, &params).await
        }
        methods::AGENTS_GET => {
            need(caller, "training:view")?;
            let p: AgentParams = typed(params)?;
            crate::agents::visible_agent(state, caller, &p.agent_id).await
        }
        methods::AGENTS_LIST => {
            need(caller, "training:view")?;
            let _: NoParams = typed(params)?;
            let all = state.store.agents().await?;
            let agents: Vec<Value> = all
                .into_iter()
                .filter(|(_, d)| crate::agents::visible(d, caller))
                .map(|(_, d)| d)
                .collect();
            to_value(Ok(AgentList { count: agents.len(), agents }))
        }
        methods::REWARDS_REGISTER => {
            need(caller, "agents:manage")?;
            let RewardsRegisterParams { agent_type, name, url } = typed(params)?;
            let allow = state.config.webhooks.allow_private;
            let check = url.clone();
            tokio::task::spawn_blocking(move || crate::webhooks::check_target(&check, allow))
                .await?
                .map_err(|e| ApiError::param("url", e))?;
            state.store.set_reward_endpoint(&caller.org, &agent_type, &name, &url).await?;
            to_value(Ok(RewardEndpoint { agent_type, name, url }))
        }
        methods::DISCOVER => Ok(openrpc()),
        methods::DEPLOY => {
            need(caller, "training:deploy")?;
            to_value(deploy::deploy(state, caller, typed(params)?).await)
        }
        methods::ROLLBACK => {
            need(caller, "training:deploy")?;
            to_value(deploy::rollback(state, caller, typed(params)?).await)
        }
        methods::LIST_DEPLOYMENTS => {
            need(caller, "training:view")?;
            to_value(deploy::list_deployments(state, caller, typed(params)?).await)
        }
        methods::CONFIGURE_AB => {
            need(caller, "training:deploy")?;
            to_value(deploy::configure_ab_test(state, caller, typed(params)?).await)
        }
        methods::GET_AB => {
            need(caller, "training:view")?;
            to_value(deploy::get_ab_test(state, caller, typed(params)?).await)
        }
        methods::STOP_AB => {
            need(caller, "training:deploy")?;
            to_value(deploy::stop_ab_test(state, caller, typed(params)?).await)
        }
        methods::INVOKE => {
            need(caller, "agents:invoke")?;
            to_value(deploy::invoke(state, caller, typed(params)?).await)
        }
        methods::FEEDBACK => {
            need(caller, "agents:invoke")?;
            to_value(deploy::feedback(state, caller, typed(params)?).await)
        }
        methods::EXPORT_INVOCATIONS => {
            need(caller, "data:export")?;
            to_value(deploy::export_invocations(state, caller, typed(params)?).await)
        }
        other => Err(ApiError::MethodNotFound(format!("{other:?}"))),
    }
}

pub mod deploy;
mod evaluation;
mod jobs;
mod openrpc;
mod subscribe;

use evaluation::{evaluate, export};
pub use jobs::status;
use jobs::{cancel, list, start};
pub use openrpc::{SERVED, openrpc};
use subscribe::subscribe;
