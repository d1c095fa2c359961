//! Prometheus metrics at `/metrics`. Durations are histograms with explicit buckets, recorded
//! through the `metrics` facade into this server's own Prometheus recorder (not the global one,
//! so several servers can live in one process). Job counts, the active gauge and the per-job
//! gauges (`training_loss`, `training_reward_mean`, `training_budget_usage_dollars`,
//! `training_budget_limit_dollars`, labelled `job_id`) are read from the store at scrape time:
//! they are right for jobs run by any worker process, and a job's series exist only while it
//! runs. Per-job series are shown only to an authenticated scrape, and only for the jobs of the
//! token's organisation; an anonymous scrape (where `public_metrics` allows one) sees aggregates.

use std::collections::HashMap;
use std::sync::Arc;

use std::str::FromStr;

use agentcore_store::{JobFilter, JobStatus};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics::{Key, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde_json::Value;

/// The latency histogram of `agents.invoke`.
pub const INVOCATION_HISTOGRAM: &str = "agentcore_invocation_duration_seconds";

/// Histograms and their buckets (seconds).
pub const HISTOGRAMS: [(&str, &str, &[f64]); 5] = [
    (
        "training_trajectory_generation_duration_seconds",
        "Rollout phase of one iteration (all trajectories), seconds.",
        &[0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0],
    ),
    (
        "training_policy_update_duration_seconds",
        "Policy update of one iteration, seconds.",
        &[0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0],
    ),
    (
        "training_iteration_duration_seconds",
        "One whole iteration (rollouts, update, evaluation, checkpoint), seconds.",
        &[1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 900.0],
    ),
    (
        "training_checkpoint_save_duration_seconds",
        "Writing one checkpoint, seconds.",
        &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0],
    ),
    (
        INVOCATION_HISTOGRAM,
        "agents.invoke (and /v1/chat/completions) on the server, seconds.",
        &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
    ),
];

static META: Metadata<'static> = Metadata::new("agentcore", Level::INFO, Some(module_path!()));

/// The server's recorder.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A recorder with the histograms' buckets.
    #[must_use]
    pub fn new() -> Self {
        let mut builder = PrometheusBuilder::new();
        for (name, _, buckets) in HISTOGRAMS {
            builder = builder
                .set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets)
                .unwrap_or_else(|_| PrometheusBuilder::new());
        }
        let recorder = builder.build_recorder();
        for (name, help, _) in HISTOGRAMS {
            recorder.describe_histogram(name.into(), Some(Unit::Seconds), help.into());
        }
        let handle = recorder.handle();
        Self { recorder, handle }
    }

    /// Records one duration.
    pub fn observe(&self, name: &'static str, seconds: f64) {
        self.recorder.register_histogram(&Key::from_static_name(name), &META).record(seconds);
    }

    /// Records one invocation's latency.
    pub fn observe_invocation(&self, seconds: f64) {
        self.observe(INVOCATION_HISTOGRAM, seconds);
    }

    /// The histograms in Prometheus text.
    #[must_use]
    pub fn render_histograms(&self) -> String {
        self.handle.render()
    }
}

/// One gauge or counter line block.
#[must_use]
pub fn family(name: &str, kind: &str, help: &str, samples: &[(String, f64)]) -> String {
    let mut out = format!("# HELP {name} {help}\n# TYPE {name} {kind}\n");
    for (labels, v) in samples {
        out += &format!("{name}{labels} {v}\n");
    }
    out
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<Arc<crate::AppState>>, headers: HeaderMap) -> Response {
    // Without a token (where that is allowed) only aggregates; with one, also the per-job series
    // of the caller's organisation (job ids are not for everyone to list).
    let caller = match crate::rpc::authenticate(&state, &headers) {
        Ok(c) => Some(c),
        Err(_) if state.config.public_metrics => None,
        Err(r) => return *r,
    };
    match render_metrics(&state, caller.as_ref().map(|c| c.org.as_str())).await {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            agentcore_api::RpcError::from(crate::errors::ApiError::internal("metrics", e)).message,
        )
            .into_response(),
    }
}

async fn render_metrics(
    state: &crate::AppState,
    org: Option<&str>,
) -> Result<String, agentcore_store::StoreError> {
    let counts: HashMap<JobStatus, u64> = state.store.job_counts().await?.into_iter().collect();
    let count = |s: JobStatus| counts.get(&s).copied().unwrap_or(0) as f64;
    let total: u64 = counts.values().sum();
    let mut out = String::new();
    out += &family(
        "training_jobs_created_total",
        "counter",
        "Jobs created.",
        &[(String::new(), total as f64)],
    );
    for (name, status) in [
        ("training_jobs_completed_total", JobStatus::Completed),
        ("training_jobs_failed_total", JobStatus::Failed),
        ("training_jobs_cancelled_total", JobStatus::Cancelled),
    ] {
        out +=
            &family(name, "counter", &format!("Jobs {status}."), &[(String::new(), count(status))]);
    }
    out += &family(
        "training_jobs_active",
        "gauge",
        "Jobs running now.",
        &[(String::new(), count(JobStatus::Running))],
    );
    out += &family(
        "training_jobs_queued",
        "gauge",
        "Jobs waiting for a worker.",
        &[(String::new(), count(JobStatus::Queued))],
    );
    // The autoscaling signal of the worker Deployment (k8s/worker-hpa.yaml): the same count
    // under the name the manifests use.
    out += &family(
        "training_queue_depth",
        "gauge",
        "Jobs queued for a worker (the workers' autoscaling signal).",
        &[(String::new(), count(JobStatus::Queued))],
    );
    let running = match org {
        None => Vec::new(),
        Some(org) => {
            state
                .store
                .list_jobs(&JobFilter {
                    org: Some(org.to_owned()),
                    status: Some(JobStatus::Running),
                    limit: 1000,
                    ..JobFilter::default()
                })
                .await?
                .0
        }
    };
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
    // Invocations from the store (every server process's), labelled only for the caller's
    // organisation; an anonymous scrape sees the total.
    let invocations = match org {
        Some(org) => state
            .store
            .invocation_counts(Some(org))
            .await?
            .into_iter()
            .map(|(agent, env, arm, n)| {
                (format!("{{agent=\"{agent}\",environment=\"{env}\",arm=\"{arm}\"}}"), n as f64)
            })
            .collect(),
        None => {
            let all = state.store.invocation_counts(None).await?;
            vec![(String::new(), all.iter().map(|c| c.3).sum::<u64>() as f64)]
        }
    };
    out += &family(
        "agentcore_invocations_total",
        "counter",
        "Invocations of deployed agents (agents.invoke, /v1/chat/completions).",
        &invocations,
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
