//! Prometheus metrics at `/metrics`. Durations are histograms with explicit buckets, recorded
//! through the `metrics` facade into this server's own Prometheus recorder (not the global one,
//! so several servers can live in one process). Job counts, the active gauge and the per-job
//! gauges (`training_loss`, `training_reward_mean`, `training_budget_usage_dollars`,
//! `training_budget_limit_dollars`, labelled `job_id`) are read from the store at scrape time:
//! they are right for jobs run by any worker process, and a job's series exist only while it
//! runs.

use metrics::{Key, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// Histograms and their buckets (seconds).
pub const HISTOGRAMS: [(&str, &str, &[f64]); 4] = [
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
