//! `GET /training/ws/{job_id}`: JSON messages as the job runs: `status` first and at every
//! status change, `progress` per iteration (`iteration`, `total`, `loss`, `avg_reward`,
//! `success_rate`, `validation_accuracy`, ...), `checkpoint` (`checkpoint_id`, `iteration`),
//! `budget` (warnings and exhaustion). The socket closes after the job ends.
//!
//! Messages come from the store's event table (so jobs of any worker process are followed),
//! read in pages and sent one at a time: nothing queues up in memory for a slow reader, and a
//! reader that has not taken a message within [`SEND_TIMEOUT`] is dropped.
//!
//! Auth: `Authorization: Bearer` or, for browsers, `?token=`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use agentcore_store::{EventKind, EventRow};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::AppState;

/// A reader slower than this for one message is disconnected.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// The upgrade.
pub async fn handle(
    State(state): State<Arc<AppState>>,
    Path(job_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let token = crate::rpc::bearer(&headers).or_else(|| query.get("token").cloned());
    let caller = match token.as_deref().map(|t| state.auth.verify(t)) {
        Some(Ok(c)) => c,
        Some(Err(e)) => return (StatusCode::UNAUTHORIZED, e).into_response(),
        None => return (StatusCode::UNAUTHORIZED, "missing bearer token").into_response(),
    };
    if !caller.can("training:view") {
        return (StatusCode::FORBIDDEN, "permission denied: training:view").into_response();
    }
    match state.store.job(&job_id).await {
        Ok(Some(j)) if j.org == caller.org => {}
        Ok(_) => {
            return (StatusCode::NOT_FOUND, format!("job not found: {job_id:?}")).into_response();
        }
        Err(e) => {
            tracing::error!(job_id = %job_id, error = %e, "WebSocket: reading the job failed");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    }
    upgrade.on_upgrade(move |socket| follow(state, job_id, socket))
}

/// The WebSocket message for a stored event, if it makes one.
#[must_use]
pub fn message(e: &EventRow, total: u32) -> Option<Value> {
    let p = &e.payload;
    Some(match e.kind {
        EventKind::Iteration => json!({
            "type": "progress",
            "job_id": e.job_id,
            "iteration": p.get("iteration"),
            "total": total,
            "loss": p.get("train_loss"),
            "avg_reward": p.get("avg_reward"),
            "success_rate": p.get("success_rate"),
            "validation_accuracy": p.get("eval_success_rate"),
            "kl": p.get("kl"),
            "cost_usd": p.get("cost_usd"),
            "rollout_seconds": p.get("rollout_seconds"),
            "update_seconds": p.get("update_seconds"),
        }),
        EventKind::CheckpointSaved => json!({
            "type": "checkpoint",
            "job_id": e.job_id,
            "checkpoint_id": p.get("checkpoint_id"),
            "iteration": p.get("iteration"),
        }),
        EventKind::BudgetWarning | EventKind::BudgetExceeded => json!({
            "type": "budget",
            "job_id": e.job_id,
            "state": p.get("state"),
            "spent_usd": p.get("spent_usd"),
            "budget_usd": p.get("budget_usd"),
        }),
        kind => {
            let status = kind.status()?;
            let mut m = json!({"type": "status", "job_id": e.job_id, "status": status});
            if status.is_final() {
                for key in ["stop_reason", "final_success_rate", "best_checkpoint_id", "error"] {
                    if let Some(v) = p.get(key) {
                        m[key] = v.clone();
                    }
                }
            }
            m
        }
    })
}

async fn send(socket: &mut WebSocket, value: &Value) -> bool {
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text(value.to_string().into())))
            .await,
        Ok(Ok(()))
    )
}

async fn follow(state: Arc<AppState>, job_id: String, mut socket: WebSocket) {
    let job = match state.store.job(&job_id).await {
        Ok(Some(job)) => job,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(job_id = %job_id, error = %e, "WebSocket: reading the job failed");
            return;
        }
    };
    let mut status = job.status;
    if !send(&mut socket, &json!({"type": "status", "job_id": job_id, "status": status})).await {
        return;
    }
    let mut cursor = 0;
    let mut shutdown = state.shutdown.clone();
    loop {
        let events = match state.store.events_after(Some(&job_id), cursor, 100).await {
            Ok(events) => events,
            Err(e) => {
                tracing::error!(job_id = %job_id, error = %e,
                    "WebSocket: reading events failed; closing");
                return;
            }
        };
        for e in &events {
            cursor = e.id;
            if let Some(m) = message(e, job.total_iterations) {
                if let Some(s) = e.kind.status() {
                    status = s;
                }
                if !send(&mut socket, &m).await {
                    return;
                }
            }
        }
        if events.len() == 100 {
            continue;
        }
        // After the events, the row: a job cancelled while queued has no events.
        let now = match state.store.job(&job_id).await {
            Ok(Some(now)) => now,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(job_id = %job_id, error = %e,
                    "WebSocket: reading the job failed; closing");
                return;
            }
        };
        if now.status != status {
            status = now.status;
            let more = match state.store.events_after(Some(&job_id), cursor, 1).await {
                Ok(more) => more,
                Err(e) => {
                    tracing::error!(job_id = %job_id, error = %e,
                        "WebSocket: reading events failed; closing");
                    return;
                }
            };
            if more.is_empty()
                && !send(
                    &mut socket,
                    &json!({"type": "status", "job_id": job_id, "status": status}),
                )
                .await
            {
                return;
            }
        }
        if status.is_final()
            && state
                .store
                .events_after(Some(&job_id), cursor, 1)
                .await
                .unwrap_or_default()
                .is_empty()
        {
            let _ = socket.send(Message::Close(None)).await;
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = shutdown.changed() => {
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
            incoming = socket.recv() => {
                // The client closed, or sent something we ignore.
                if matches!(incoming, None | Some(Err(_)) | Some(Ok(Message::Close(_)))) {
                    return;
                }
            }
        }
    }
}
