//! `POST /api/v1/jsonrpc` and `/metrics`: authentication, rate limits, JSON-RPC envelopes
//! (single calls, batches, notifications), and the methods of the contract.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use agentcore_api::{
    CancelResult, Cost, JobStatus, ListResult, Progress, Request, Response as RpcResponse,
    RpcError, StartResult, SubscribeResult, WEBHOOK_EVENTS, codes, methods,
};
use agentcore_grpo::GrpoError;
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

fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Caller, Box<Response>> {
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

/// The JSON-RPC endpoint.
pub async fn handle(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = match authenticate(&state, &headers) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            let err = RpcError::new(codes::PARSE_ERROR, format!("parse error: {e}"));
            return axum::Json(RpcResponse::err(Value::Null, err)).into_response();
        }
    };
    let (items, batch) = match parsed {
        Value::Array(items) if items.is_empty() => {
            let err = RpcError::new(codes::INVALID_REQUEST, "invalid request: empty batch");
            return axum::Json(RpcResponse::err(Value::Null, err)).into_response();
        }
        Value::Array(items) => (items, true),
        other => (vec![other], false),
    };
    // Rate limits first, for every call of the request.
    let now = unix_now();
    let mut shown: Option<Decision> = None;
    for item in &items {
        let Some(method) = item.get("method").and_then(Value::as_str) else { continue };
        if let Some(d) = state.limiter.check(&caller.subject, method, now) {
            if !d.allowed {
                let err = RpcError::new(
                    codes::INVALID_REQUEST,
                    format!("rate limit of {method} exceeded: {} calls per minute", d.limit),
                );
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

/// One call; `None` for a notification.
async fn call(state: &Arc<AppState>, caller: &Caller, item: Value) -> Option<RpcResponse> {
    let id = item.get("id").cloned();
    let request: Request = match serde_json::from_value(item) {
        Ok(r) => r,
        Err(e) => {
            let err = RpcError::new(codes::INVALID_REQUEST, format!("invalid request: {e}"));
            return Some(RpcResponse::err(id.unwrap_or(Value::Null), err));
        }
    };
    if request.jsonrpc != "2.0" {
        let err = RpcError::new(
            codes::INVALID_REQUEST,
            format!("invalid request: jsonrpc must be \"2.0\", got {:?}", request.jsonrpc),
        );
        return Some(RpcResponse::err(id.unwrap_or(Value::Null), err));
    }
    let params = match request.params {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(other) => {
            let err = RpcError::new(
                codes::INVALID_PARAMS,
                format!("params must be an object, got {}", kind(&other)),
            );
            return request.id.map(|id| RpcResponse::err(id, err));
        }
    };
    let result = dispatch(state, caller, &request.method, params).await;
    let id = request.id?;
    Some(match result {
        Ok(v) => RpcResponse::ok(id, v),
        Err(e) => RpcResponse::err(id, e),
    })
}

/// An internal error: logged with a correlation id, which the caller gets instead of the cause.
pub(crate) fn internal(context: &str, e: impl std::fmt::Display) -> RpcError {
    let correlation = uuid::Uuid::new_v4().simple().to_string();
    tracing::error!(correlation = %correlation, context, error = %e, "internal error");
    RpcError::new(codes::INTERNAL_ERROR, format!("internal error (correlation id {correlation})"))
}

fn need(caller: &Caller, permission: &str) -> Result<(), RpcError> {
    if caller.can(permission) {
        Ok(())
    } else {
        Err(RpcError::new(
            codes::PERMISSION_DENIED,
            format!("permission denied: {permission} is required"),
        )
        .with_data(json!({"permission": permission})))
    }
}

fn string(params: &Map<String, Value>, name: &str) -> Result<Option<String>, RpcError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(RpcError::new(
            codes::INVALID_PARAMS,
            format!("{name} must be a string, got {}", kind(other)),
        )),
    }
}

fn required(params: &Map<String, Value>, name: &str) -> Result<String, RpcError> {
    string(params, name)?
        .ok_or_else(|| RpcError::new(codes::INVALID_PARAMS, format!("{name} is required")))
}

fn uint(params: &Map<String, Value>, name: &str, default: u64) -> Result<u64, RpcError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_u64().ok_or_else(|| {
            RpcError::new(
                codes::INVALID_PARAMS,
                format!("{name} must be a non-negative integer, got {v}"),
            )
        }),
    }
}

fn job_id(params: &Map<String, Value>) -> Result<String, RpcError> {
    let id = required(params, "job_id")?;
    if uuid::Uuid::parse_str(&id).is_err() {
        return Err(RpcError::new(
            codes::INVALID_PARAMS,
            format!("invalid job_id {id:?}: must be a UUID"),
        ));
    }
    Ok(id)
}

/// The caller's job, or not found (another organisation's job is not found either).
async fn owned_job(state: &AppState, caller: &Caller, id: &str) -> Result<JobRow, RpcError> {
    match state.store.job(id).await {
        Ok(Some(j)) if j.org == caller.org => Ok(j),
        Ok(_) => Err(RpcError::new(codes::NOT_FOUND, format!("job not found: {id:?}"))),
        Err(e) => Err(internal("job lookup", e)),
    }
}

async fn dispatch(
    state: &Arc<AppState>,
    caller: &Caller,
    method: &str,
    params: Map<String, Value>,
) -> Result<Value, RpcError> {
    fn to_value<T: serde::Serialize>(v: Result<T, RpcError>) -> Result<Value, RpcError> {
        v.and_then(|r| serde_json::to_value(r).map_err(|e| internal("result", e)))
    }
    match method {
        methods::START => {
            need(caller, "training:start")?;
            to_value(start(state, caller, params).await)
        }
        methods::STATUS => {
            need(caller, "training:view")?;
            let id = job_id(&params)?;
            let job = owned_job(state, caller, &id).await?;
            to_value(status(&state.store, &job).await)
        }
        methods::LIST => {
            need(caller, "training:view")?;
            to_value(list(state, caller, &params).await)
        }
        methods::CANCEL => {
            need(caller, "training:cancel")?;
            to_value(cancel(state, caller, &params).await)
        }
        methods::EVALUATE => {
            need(caller, "training:evaluate")?;
            evaluate(state, caller, &params).await
        }
        methods::EXPORT => {
            need(caller, "data:export")?;
            export(state, caller, &params).await
        }
        methods::SUBSCRIBE => {
            need(caller, "training:start")?;
            to_value(subscribe(state, caller, &params).await)
        }
        methods::AGENTS_REGISTER => {
            need(caller, "agents:manage")?;
            crate::agents::register(state, caller, &params).await
        }
        methods::AGENTS_GET => {
            need(caller, "training:view")?;
            let id = required(&params, "agent_id")?;
            crate::agents::visible_agent(state, caller, &id).await
        }
        methods::AGENTS_LIST => {
            need(caller, "training:view")?;
            let all = state.store.agents().await.map_err(|e| internal(method, e))?;
            let agents: Vec<Value> = all
                .into_iter()
                .filter(|(_, d)| crate::agents::visible(d, caller))
                .map(|(_, d)| d)
                .collect();
            Ok(json!({"agents": agents, "count": agents.len()}))
        }
        methods::REWARDS_REGISTER => {
            need(caller, "agents:manage")?;
            let agent_type = required(&params, "agent_type")?;
            let name = required(&params, "name")?;
            let url = required(&params, "url")?;
            let allow = state.config.webhooks.allow_private;
            let check = url.clone();
            tokio::task::spawn_blocking(move || crate::webhooks::check_target(&check, allow))
                .await
                .map_err(|e| internal(method, e))?
                .map_err(|e| {
                    RpcError::new(codes::INVALID_PARAMS, e).with_data(json!({"field": "url"}))
                })?;
            state
                .store
                .set_reward_endpoint(&caller.org, &agent_type, &name, &url)
                .await
                .map_err(|e| internal(method, e))?;
            Ok(json!({"agent_type": agent_type, "name": name, "url": url}))
        }
        methods::DISCOVER => Ok(openrpc()),
        "training.deploy_checkpoint" | "training.configure_ab_test" | "agents.invoke" => {
            Err(RpcError::new(
                codes::METHOD_NOT_FOUND,
                format!(
                    "method not found: {method} is not served by this version (deployment comes later)"
                ),
            ))
        }
        other => {
            Err(RpcError::new(codes::METHOD_NOT_FOUND, format!("method not found: {other:?}")))
        }
    }
}

fn config_error(e: &GrpoError) -> RpcError {
    let (field, error) = match e {
        GrpoError::InvalidConfig(f) => (
            Some(f.field.clone()),
            format!("{} must {}, got {}", f.field, f.rule.trim_start_matches("must "), f.value),
        ),
        GrpoError::UnknownConfigField { field, .. } => (Some(field.clone()), e.to_string()),
        GrpoError::ConfigParse { field, .. } => (field.clone(), e.to_string()),
        other => (None, other.to_string()),
    };
    RpcError::new(codes::INVALID_REQUEST, e.to_string())
        .with_data(json!({"field": field, "error": error}))
}

fn tasks(name: &str, value: &Value) -> Result<Vec<Task>, RpcError> {
    let Value::Array(items) = value else {
        return Err(RpcError::new(
            codes::DATA_VALIDATION,
            format!("{name} must be an array of {{query, expected_outcome}}, got {}", kind(value)),
        ));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            agentcore_tasks::data::task_from_value(i, v.clone()).map_err(|e| {
                RpcError::new(codes::DATA_VALIDATION, format!("{name}[{i}]: {e}"))
                    .with_data(json!({"field": name, "index": i}))
            })
        })
        .collect()
}

/// A job's settings error as the contract's codes: a config that does not parse or breaks a
/// range names its field in `data`; anything else about the agent or the job is an invalid
/// request that says what is wrong.
fn settings_error(agent_id: &str, e: &agentcore_train::TrainError) -> RpcError {
    match e {
        agentcore_train::TrainError::Config(g) => config_error(g),
        other => RpcError::new(codes::INVALID_REQUEST, format!("agent {agent_id}: {other}")),
    }
}

async fn start(
    state: &Arc<AppState>,
    caller: &Caller,
    params: Map<String, Value>,
) -> Result<StartResult, RpcError> {
    let agent_id = required(&params, "agent_id")?;
    let stored = crate::agents::visible_agent(state, caller, &agent_id).await?;
    let agent = crate::agents::definition(&stored)?;
    let config = match params.get("config") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m.clone()),
        Some(other) => {
            return Err(RpcError::new(
                codes::INVALID_PARAMS,
                format!("config must be an object, got {}", kind(other)),
            ));
        }
    };
    let data = params.get("training_data").or_else(|| params.get("training_queries")).ok_or_else(
        || {
            RpcError::new(
                codes::DATA_VALIDATION,
                "training_data is required (at least 100 queries)",
            )
        },
    )?;
    let train = tasks("training_data", data)?;
    let min = agentcore_tasks::data::MIN_TRAINING_TASKS;
    if train.len() < min {
        return Err(RpcError::new(
            codes::DATA_VALIDATION,
            format!("training_data must have at least {min} queries, got {}", train.len()),
        )
        .with_data(json!({"field": "training_data", "count": train.len()})));
    }
    let eval = match params.get("evaluation_data") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => tasks("evaluation_data", v)?,
    };
    let metadata = match params.get("metadata") {
        None | Some(Value::Null) => None,
        Some(m @ Value::Object(_)) => Some(m.clone()),
        Some(other) => {
            return Err(RpcError::new(
                codes::INVALID_PARAMS,
                format!("metadata must be an object, got {}", kind(other)),
            ));
        }
    };
    let mut settings =
        agentcore_train::spec::resolve(&agent, config.as_ref(), Some(JobData { train, eval }))
            .map_err(|e| settings_error(&agent_id, &e))?;
    if let Some((name, url)) = state
        .store
        .reward_endpoint(&caller.org, settings.agent_type())
        .await
        .map_err(|e| internal("start", e))?
    {
        settings.remote_reward = Some(agentcore_train::settings::RemoteReward {
            name,
            url,
            allow_private: state.config.webhooks.allow_private,
        });
    }
    // Pre-flight: the local compute this job would take at the configured price.
    let c = &settings.config;
    let estimate = agentcore_train::spec::estimated_cost_usd(&settings);
    let trajectories = c.batch_size * c.n_trajectories_per_query;
    if estimate > c.max_budget_usd {
        return Err(RpcError::new(
            codes::BUDGET_EXCEEDED,
            format!(
                "estimated cost ${estimate} exceeds max_budget_usd ${} ({} iterations x {} trajectories at ${}/hour)",
                c.max_budget_usd,
                c.n_iterations,
                trajectories,
                settings.price_per_hour_usd
            ),
        )
        .with_data(json!({"estimated_cost_usd": estimate.to_string(), "max_budget_usd": c.max_budget_usd.to_string()})));
    }
    let id = uuid::Uuid::new_v4().to_string();
    let run_dir = agentcore_train::settings::run_dir(&state.config.data_dir, &id);
    let new_job = NewJob {
        id: id.clone(),
        agent_id: agent_id.clone(),
        settings: serde_json::to_value(&settings).map_err(|e| internal("start", e))?,
        total_iterations: settings.config.n_iterations,
        budget_usd: settings.config.max_budget_usd.to_string(),
        run_dir: run_dir.display().to_string(),
    };
    state
        .store
        .enqueue_job(&new_job, &caller.org, &caller.subject, metadata.as_ref())
        .await
        .map_err(|e| internal("start", e))?;
    let row = state.store.job(&id).await.map_err(|e| internal("start", e))?;
    Ok(StartResult {
        job_id: id,
        status: "queued".into(),
        agent_id,
        total_iterations: new_job.total_iterations,
        budget_usd: new_job.budget_usd,
        created_at: row.map(|r| r.created_at).unwrap_or_default(),
    })
}

/// The status of a job as the contract shapes it.
///
/// # Errors
/// Database errors.
pub async fn status(store: &Store, job: &JobRow) -> Result<JobStatus, RpcError> {
    let last = store.last_iteration(&job.id).await.map_err(|e| internal("status", e))?;
    let validation = store.last_validation(&job.id).await.map_err(|e| internal("status", e))?;
    let per_iteration = job
        .settings
        .get("config")
        .map(|c| {
            c.get("batch_size").and_then(Value::as_u64).unwrap_or(0)
                * c.get("n_trajectories_per_query").and_then(Value::as_u64).unwrap_or(0)
        })
        .unwrap_or(0);
    let mut metrics = last.clone().unwrap_or_else(|| json!({}));
    if let Some(m) = metrics.as_object_mut() {
        m.insert(
            "train_loss".into(),
            last.as_ref().and_then(|l| l.get("train_loss").cloned()).unwrap_or(Value::Null),
        );
        let final_rate =
            job.summary.as_ref().and_then(|s| s.get("final_success_rate")).and_then(Value::as_f64);
        m.insert("validation_accuracy".into(), json!(final_rate.or(validation)));
        m.insert(
            "trajectories_generated".into(),
            json!(u64::from(job.iterations_completed) * per_iteration),
        );
        if let Some(s) = &job.summary {
            m.insert(
                "baseline_success_rate".into(),
                s.get("baseline_success_rate").cloned().unwrap_or(Value::Null),
            );
            m.insert("p_value".into(), s.get("p_value").cloned().unwrap_or(Value::Null));
        }
    }
    let cost = Decimal::from_str(&job.cost_usd).unwrap_or_default();
    let budget = Decimal::from_str(&job.budget_usd).unwrap_or_default();
    let remaining = (budget - cost).max(Decimal::ZERO);
    let remaining_percent = if budget > Decimal::ZERO {
        (remaining / budget * Decimal::from(100)).to_f64().unwrap_or(0.0)
    } else {
        0.0
    };
    let total = job.total_iterations.max(1);
    let percent = f64::from(job.iterations_completed.min(total)) / f64::from(total) * 100.0;
    let percent = if job.status == "completed" { 100.0 } else { percent };
    let estimated_completion = match (&job.started_at, job.status.as_str()) {
        (Some(started), "running") if job.iterations_completed > 0 => {
            chrono::DateTime::parse_from_rfc3339(started).ok().map(|s| {
                let elapsed = chrono::Utc::now().signed_duration_since(s);
                let per = elapsed / i32::try_from(job.iterations_completed).unwrap_or(1);
                let left =
                    i32::try_from(job.total_iterations.saturating_sub(job.iterations_completed))
                        .unwrap_or(0);
                (chrono::Utc::now() + per * left).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            })
        }
        _ => job.finished_at.clone(),
    };
    Ok(JobStatus {
        job_id: job.id.clone(),
        agent_id: job.agent_id.clone(),
        status: job.status.clone(),
        current_iteration: job.iterations_completed,
        total_iterations: job.total_iterations,
        progress_percent: (percent * 10.0).round() / 10.0,
        metrics,
        cost_usd: job.cost_usd.clone(),
        budget_usd: job.budget_usd.clone(),
        budget_remaining_percent: (remaining_percent * 10.0).round() / 10.0,
        started_at: job.started_at.clone(),
        estimated_completion,
        best_checkpoint_id: job.best_checkpoint_id.clone(),
        error_message: job.error.clone(),
        stop_reason: job.stop_reason.clone(),
        progress: Progress {
            current_iteration: job.iterations_completed,
            total_iterations: job.total_iterations,
            percent_complete: (percent * 10.0).round() / 10.0,
        },
        cost: Cost {
            cost_usd: job.cost_usd.clone(),
            budget_usd: job.budget_usd.clone(),
            budget_remaining_usd: remaining.to_string(),
        },
        metadata: job.metadata.clone(),
        created_at: job.created_at.clone(),
    })
}

async fn list(
    state: &AppState,
    caller: &Caller,
    params: &Map<String, Value>,
) -> Result<ListResult, RpcError> {
    let limit = uint(params, "limit", 50)?.min(1000);
    let offset = uint(params, "offset", 0)?;
    let filter = JobFilter {
        org: Some(caller.org.clone()),
        agent_id: string(params, "agent_id")?,
        status: string(params, "status")?,
        limit: u32::try_from(limit).unwrap_or(50),
        offset: u32::try_from(offset).unwrap_or(u32::MAX),
    };
    let (rows, total) = state.store.list_jobs(&filter).await.map_err(|e| internal("list", e))?;
    let mut jobs = Vec::with_capacity(rows.len());
    for r in &rows {
        jobs.push(status(&state.store, r).await?);
    }
    Ok(ListResult { count: jobs.len(), jobs, total_count: total })
}

async fn cancel(
    state: &AppState,
    caller: &Caller,
    params: &Map<String, Value>,
) -> Result<CancelResult, RpcError> {
    let id = job_id(params)?;
    owned_job(state, caller, &id).await?;
    let reason = string(params, "reason")?;
    match state
        .store
        .request_cancel(&id, reason.as_deref())
        .await
        .map_err(|e| internal("cancel", e))?
    {
        CancelOutcome::NotFound => {
            return Err(RpcError::new(codes::NOT_FOUND, format!("job not found: {id:?}")));
        }
        CancelOutcome::Finished(s) => {
            return Err(RpcError::new(
                codes::CANNOT_CANCEL,
                format!("cannot cancel job {id}: it is already {s}"),
            )
            .with_data(json!({"status": s})));
        }
        CancelOutcome::Cancelled => {}
        CancelOutcome::Requested => {
            // The worker stops after the current iteration with a checkpoint; wait a while.
            for _ in 0..150 {
                match state.store.job(&id).await {
                    Ok(Some(j)) if j.status != "running" => break,
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
    }
    let job = owned_job(state, caller, &id).await?;
    let checkpoints = state.store.checkpoints(&id).await.map_err(|e| internal("cancel", e))?;
    let latest = checkpoints.iter().filter(|c| !c.deleted).max_by_key(|c| c.iteration);
    Ok(CancelResult {
        job_id: id,
        status: if job.status == "running" { "cancelling".into() } else { job.status.clone() },
        cancelled_at: job.finished_at.clone().unwrap_or_else(|| chrono::Utc::now().to_rfc3339()),
        iterations_completed: job.iterations_completed,
        checkpoint_saved: latest.is_some(),
        checkpoint_id: latest.map(|c| c.id.clone()),
    })
}

async fn evaluate(
    state: &AppState,
    caller: &Caller,
    params: &Map<String, Value>,
) -> Result<Value, RpcError> {
    let id = job_id(params)?;
    let job = owned_job(state, caller, &id).await?;
    if job.iterations_completed == 0 && job.best_checkpoint_id.is_none() {
        let checkpoints =
            state.store.checkpoints(&id).await.map_err(|e| internal("evaluate", e))?;
        if checkpoints.iter().all(|c| c.deleted) {
            return Err(RpcError::new(
                codes::EVALUATION_FAILED,
                format!("job {id} has no checkpoint yet (status {})", job.status),
            ));
        }
    }
    let checkpoint = string(params, "checkpoint_id")?;
    if let Some(c) = &checkpoint {
        let known = state.store.checkpoints(&id).await.map_err(|e| internal("evaluate", e))?;
        if !known.iter().any(|k| &k.id == c && !k.deleted) {
            return Err(RpcError::new(codes::NOT_FOUND, format!("checkpoint not found: {c:?}")));
        }
    }
    let queries = match params.get("evaluation_queries") {
        None | Some(Value::Null) => None,
        Some(v) => Some(tasks("evaluation_queries", v)?),
    };
    let data_dir = state.config.data_dir.clone();
    let report = tokio::task::spawn_blocking(move || {
        let sandbox =
            Arc::new(agentcore_agent::sandbox::PythonSandbox::detect().map_err(|e| e.to_string())?);
        agentcore_train::eval::compare(&data_dir, &id, checkpoint.as_deref(), queries, &sandbox)
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| internal("evaluate", e))?
    .map_err(|e| RpcError::new(codes::EVALUATION_FAILED, format!("evaluation failed: {e}")))?;
    let c = &report.baseline_comparison;
    Ok(json!({
        "job_id": report.job_id,
        "checkpoint_id": report.checkpoint_id,
        "iteration": report.iteration,
        "metrics": report.metrics,
        "baseline_metrics": report.baseline_metrics,
        "baseline_comparison": {
            "success_rate_improvement": c.success_rate_improvement,
            "avg_reward_improvement": c.avg_reward_improvement,
            "p_value": c.p_value,
            "statistically_significant": c.statistically_significant,
            "test": c.test,
            "confidence_interval": c.confidence_interval,
            "baseline_success_rate": c.baseline_success_rate,
            "trained_success_rate": c.trained_success_rate,
            "reward_t_test": c.reward_t_test,
            "reward_confidence_interval": c.reward_confidence_interval,
        },
        "statistically_significant": report.statistically_significant,
        "queries_evaluated": report.queries_evaluated,
        "evaluation_duration_ms": report.evaluation_duration_ms,
    }))
}

async fn export(
    state: &AppState,
    caller: &Caller,
    params: &Map<String, Value>,
) -> Result<Value, RpcError> {
    let id = job_id(params)?;
    let job = owned_job(state, caller, &id).await?;
    let limit = uint(params, "limit", 1000)?;
    if limit > 10_000 {
        return Err(RpcError::new(
            codes::EXPORT_LIMIT,
            format!("export limit exceeded: limit must be <= 10000, got {limit}"),
        ));
    }
    let offset = uint(params, "offset", 0)?;
    let success_only = params.get("success_only").and_then(Value::as_bool).unwrap_or(false);
    let min_reward = match params.get("min_reward") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_f64().ok_or_else(|| {
            RpcError::new(codes::INVALID_PARAMS, format!("min_reward must be a number, got {v}"))
        })?),
    };
    let filter = TrajectoryFilter {
        success_only,
        min_reward,
        limit: Some(u32::try_from(limit).unwrap_or(10_000)),
        offset: u32::try_from(offset).unwrap_or(u32::MAX),
    };
    let total =
        state.store.count_trajectories(&id, &filter).await.map_err(|e| internal("export", e))?;
    let rows = state.store.trajectories(&id, &filter).await.map_err(|e| internal("export", e))?;
    let shaping = agentcore_train::record::reward_shaping(&job.settings);
    let trajectories: Vec<Value> = rows
        .iter()
        .map(|r| {
            agentcore_train::record::export_record(
                r,
                shaping.success_reward,
                shaping.failure_reward,
                false,
            )
        })
        .collect();
    let returned = trajectories.len() as u64;
    Ok(json!({
        "job_id": id,
        "trajectories": trajectories,
        "total_count": total,
        "returned_count": returned,
        "has_more": offset + returned < total,
    }))
}

async fn subscribe(
    state: &AppState,
    caller: &Caller,
    params: &Map<String, Value>,
) -> Result<SubscribeResult, RpcError> {
    let url = required(params, "url")?;
    let events: Vec<String> = match params.get("events") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|e| match e.as_str() {
                Some(s) if WEBHOOK_EVENTS.contains(&s) => Ok(s.to_owned()),
                _ => Err(RpcError::new(
                    codes::INVALID_PARAMS,
                    format!("unknown event {e}: expected one of {}", WEBHOOK_EVENTS.join(", ")),
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(RpcError::new(
                codes::INVALID_PARAMS,
                format!("events must be an array of event names, got {}", kind(other)),
            ));
        }
    };
    let allow = state.config.webhooks.allow_private;
    let check_url = url.clone();
    tokio::task::spawn_blocking(move || crate::webhooks::check_target(&check_url, allow))
        .await
        .map_err(|e| internal("subscribe", e))?
        .map_err(|e| RpcError::new(codes::INVALID_PARAMS, e).with_data(json!({"field": "url"})))?;
    let hook = WebhookRow {
        id: uuid::Uuid::new_v4().to_string(),
        org: caller.org.clone(),
        url,
        events,
        secret: crate::webhooks::new_secret(),
        created_at: String::new(),
    };
    state.store.add_webhook(&hook).await.map_err(|e| internal("subscribe", e))?;
    Ok(SubscribeResult { subscription_id: hook.id, secret: hook.secret })
}

/// The OpenRPC document of the served methods.
#[must_use]
pub fn openrpc() -> Value {
    let m = |name: &str, summary: &str, params: &[(&str, bool, &str)], result: &str| {
        json!({
            "name": name,
            "summary": summary,
            "params": params.iter().map(|(n, r, t)| json!({"name": n, "required": r, "schema": {"type": t}})).collect::<Vec<_>>(),
            "result": {"name": result, "schema": {"type": "object"}},
        })
    };
    json!({
        "openrpc": "1.2.6",
        "info": {"title": "agentcore training service", "version": env!("CARGO_PKG_VERSION")},
        "methods": [
            m(methods::START, "Queue a GRPO job", &[("agent_id", true, "string"), ("config", false, "object"), ("training_data", true, "array"), ("evaluation_data", false, "array"), ("metadata", false, "object")], "StartResult"),
            m(methods::STATUS, "A job's status, metrics and cost", &[("job_id", true, "string")], "JobStatus"),
            m(methods::CANCEL, "Cancel a queued or running job", &[("job_id", true, "string"), ("reason", false, "string")], "CancelResult"),
            m(methods::LIST, "The caller's jobs", &[("agent_id", false, "string"), ("status", false, "string"), ("limit", false, "integer"), ("offset", false, "integer")], "ListResult"),
            m(methods::EVALUATE, "A checkpoint against the baseline, paired", &[("job_id", true, "string"), ("checkpoint_id", false, "string"), ("evaluation_queries", false, "array")], "EvaluateResult"),
            m(methods::EXPORT, "A job's trajectories", &[("job_id", true, "string"), ("success_only", false, "boolean"), ("min_reward", false, "number"), ("limit", false, "integer"), ("offset", false, "integer")], "ExportResult"),
            m(methods::SUBSCRIBE, "Webhook deliveries of job events", &[("events", false, "array"), ("url", true, "string")], "SubscribeResult"),
            m(methods::AGENTS_REGISTER, "Register an agent", &[("agent_id", true, "string"), ("agent_type", false, "string"), ("model", false, "object"), ("system_prompt", false, "string"), ("tools", false, "array"), ("policy", false, "string"), ("sampling", false, "object"), ("tool_call_format", false, "string"), ("max_steps_per_trajectory", false, "integer"), ("max_tokens_per_trajectory", false, "integer")], "Agent"),
            m(methods::AGENTS_GET, "One agent", &[("agent_id", true, "string")], "Agent"),
            m(methods::AGENTS_LIST, "Agents", &[], "AgentList"),
            m(methods::REWARDS_REGISTER, "Serve the rewards of an agent type from an HTTP endpoint (the remote-reward protocol)", &[("agent_type", true, "string"), ("name", true, "string"), ("url", true, "string")], "RewardEndpoint"),
            m(methods::DISCOVER, "This document", &[], "OpenRPC"),
        ],
    })
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if !state.config.public_metrics
        && let Err(r) = authenticate(&state, &headers)
    {
        return *r;
    }
    match render_metrics(&state).await {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => {
            (StatusCode::INTERNAL_SERVER_ERROR, internal("metrics", e).message).into_response()
        }
    }
}

async fn render_metrics(state: &AppState) -> Result<String, agentcore_store::StoreError> {
    use crate::metrics::{HISTOGRAMS, family};
    let counts: HashMap<String, u64> = state.store.job_counts().await?.into_iter().collect();
    let count = |s: &str| counts.get(s).copied().unwrap_or(0) as f64;
    let total: u64 = counts.values().sum();
    let mut out = String::new();
    out += &family(
        "training_jobs_created_total",
        "counter",
        "Jobs created.",
        &[(String::new(), total as f64)],
    );
    for (name, status) in [
        ("training_jobs_completed_total", "completed"),
        ("training_jobs_failed_total", "failed"),
        ("training_jobs_cancelled_total", "cancelled"),
    ] {
        out +=
            &family(name, "counter", &format!("Jobs {status}."), &[(String::new(), count(status))]);
    }
    out += &family(
        "training_jobs_active",
        "gauge",
        "Jobs running now.",
        &[(String::new(), count("running"))],
    );
    out += &family(
        "training_jobs_queued",
        "gauge",
        "Jobs waiting for a worker.",
        &[(String::new(), count("queued"))],
    );
    let running = state
        .store
        .list_jobs(&JobFilter {
            status: Some("running".into()),
            limit: 1000,
            ..JobFilter::default()
        })
        .await?
        .0;
    let (mut loss, mut reward, mut spent, mut limit) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for j in &running {
        let label = format!("{{job_id=\"{}\"}}", j.id);
        if let Some(m) = state.store.last_iteration(&j.id).await? {
            if let Some(v) = m.get("train_loss").and_then(Value::as_f64) {
                loss.push((label.clone(), v));
            }
            if let Some(v) = m.get("avg_reward").and_then(Value::as_f64) {
                reward.push((label.clone(), v));
            }
        }
        spent.push((
            label.clone(),
            Decimal::from_str(&j.cost_usd).ok().and_then(|d| d.to_f64()).unwrap_or(0.0),
        ));
        limit.push((
            label,
            Decimal::from_str(&j.budget_usd).ok().and_then(|d| d.to_f64()).unwrap_or(0.0),
        ));
    }
    out += &family("training_loss", "gauge", "Latest GRPO loss of each running job.", &loss);
    out += &family(
        "training_reward_mean",
        "gauge",
        "Latest mean reward of each running job.",
        &reward,
    );
    out += &family(
        "training_budget_usage_dollars",
        "gauge",
        "Spent by each running job, USD.",
        &spent,
    );
    out += &family(
        "training_budget_limit_dollars",
        "gauge",
        "max_budget_usd of each running job.",
        &limit,
    );
    let histograms = state.metrics.render_histograms();
    for (name, help, buckets) in HISTOGRAMS {
        if !histograms.contains(&format!("{name}_bucket")) {
            // Not observed yet in this process: an empty histogram, so the series exist.
            out += &format!("# HELP {name} {help}\n# TYPE {name} histogram\n");
            for b in buckets {
                out += &format!("{name}_bucket{{le=\"{b}\"}} 0\n");
            }
            out += &format!("{name}_bucket{{le=\"+Inf\"}} 0\n{name}_sum 0\n{name}_count 0\n");
        }
    }
    out += &histograms;
    Ok(out)
}
