//! Recording a job in the store: every event the job reports becomes rows (iteration metrics,
//! trajectories with their token traces, checkpoints, events) and, at the end, the job's status.

use agentcore_store::{BlockingStore, CheckpointRow, EventKind, JobStatus, TrajectoryRow};
use serde_json::{Value, json};

use crate::events::{Event, StopReason};

/// Writes what the job reports into the store.
pub struct Recorder<'a> {
    store: &'a BlockingStore,
    job_id: String,
    lease_owner: Option<String>,
    hold_finish: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    error: Option<String>,
}

impl<'a> Recorder<'a> {
    /// Records the events of `job_id` in `store`.
    #[must_use]
    pub fn new(store: &'a BlockingStore, job_id: &str) -> Self {
        Self { store, job_id: job_id.to_owned(), lease_owner: None, hold_finish: None, error: None }
    }

    /// As a queue worker holding the job's lease: the final status is written only while the
    /// lease is still `worker`'s.
    #[must_use]
    pub fn leased(mut self, worker: &str) -> Self {
        self.lease_owner = Some(worker.to_owned());
        self
    }

    /// When `flag` is set by the time the job ends, its end is not recorded: the job stopped
    /// because its worker is shutting down, and another worker continues it.
    #[must_use]
    pub fn hold_finish_when(mut self, flag: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.hold_finish = Some(flag);
        self
    }

    /// The first store error, if recording failed (recording stops at the first error).
    pub fn take_error(&mut self) -> Option<String> {
        self.error.take()
    }

    /// Records one event.
    pub fn record(&mut self, event: &Event) {
        if self.error.is_some() {
            return;
        }
        let job = self.job_id.as_str();
        let result = match event {
            Event::WarmStart(_) => Ok(()),
            Event::Started { resumed_from, total_iterations, .. } => {
                let payload =
                    json!({"resumed_from": resumed_from, "total_iterations": total_iterations});
                self.store.call(|s| s.record_event(job, EventKind::JobStarted, &payload))
            }
            Event::Baseline { success_rate, eval_queries } => {
                let payload = json!({"success_rate": success_rate, "eval_queries": eval_queries});
                self.store.call(|s| s.record_event(job, EventKind::Baseline, &payload))
            }
            Event::Rollouts { iteration, records } => {
                let rows: Vec<TrajectoryRow> = records
                    .iter()
                    .map(|r| TrajectoryRow {
                        id: 0,
                        job_id: job.to_string(),
                        iteration: *iteration,
                        query_index: u32::try_from(r.query_index).unwrap_or(u32::MAX),
                        sample_index: u32::try_from(r.sample_index).unwrap_or(u32::MAX),
                        query: r.trajectory.query.clone(),
                        expected_outcome: r.expected_outcome.clone(),
                        success: r.success,
                        reward: r.reward,
                        advantage: r.advantage,
                        trajectory: serde_json::to_value(&r.trajectory).unwrap_or(Value::Null),
                        created_at: String::new(),
                    })
                    .collect();
                self.store.call(|s| s.insert_trajectories(&rows))
            }
            Event::Iteration(m) => {
                let metrics = serde_json::to_value(m).unwrap_or(Value::Null);
                let cost = m.cost_usd.to_string();
                self.store.call(|s| s.record_iteration(job, m.iteration, &metrics, &cost)).and_then(
                    |()| self.store.call(|s| s.record_event(job, EventKind::Iteration, &metrics)),
                )
            }
            Event::Checkpoint(c) => {
                let row = CheckpointRow {
                    id: c.checkpoint_id.clone(),
                    job_id: job.to_string(),
                    iteration: c.iteration,
                    path: c.path.display().to_string(),
                    eval_success_rate: c.eval_success_rate,
                    deleted: false,
                    created_at: String::new(),
                };
                let payload = json!({"checkpoint_id": c.checkpoint_id, "iteration": c.iteration});
                self.store.call(|s| s.record_checkpoint(&row)).and_then(|()| {
                    self.store.call(|s| s.record_event(job, EventKind::CheckpointSaved, &payload))
                })
            }
            Event::CheckpointRemoved { checkpoint_id } => {
                self.store.call(|s| s.mark_checkpoint_deleted(checkpoint_id))
            }
            Event::Budget { state, spent_usd, budget_usd } => {
                let kind = if *state == agentcore_grpo::budget::BudgetState::Exceeded {
                    EventKind::BudgetExceeded
                } else {
                    EventKind::BudgetWarning
                };
                let payload =
                    json!({"state": state, "spent_usd": spent_usd, "budget_usd": budget_usd});
                self.store.call(|s| s.record_event(job, kind, &payload))
            }
            Event::Done(_)
                if self
                    .hold_finish
                    .as_ref()
                    .is_some_and(|f| f.load(std::sync::atomic::Ordering::SeqCst)) =>
            {
                Ok(())
            }
            Event::Done(summary) => {
                let value = serde_json::to_value(summary).unwrap_or(Value::Null);
                let status = match summary.stop_reason {
                    StopReason::Cancelled => JobStatus::Cancelled,
                    _ => JobStatus::Completed,
                };
                let (reason, best) =
                    (Some(summary.stop_reason.as_str()), summary.best_checkpoint_id.as_deref());
                let payload = json!({
                    "status": status,
                    "stop_reason": reason,
                    "baseline_success_rate": summary.baseline_success_rate,
                    "final_success_rate": summary.final_success_rate,
                    "p_value": summary.p_value,
                    "best_checkpoint_id": best,
                    "cost_usd": summary.cost_usd,
                });
                let kind = EventKind::ended(status).unwrap_or(EventKind::JobCompleted);
                if let Err(e) = self.store.call(|s| s.record_event(job, kind, &payload)) {
                    self.error = Some(e.to_string());
                    return;
                }
                match &self.lease_owner {
                    None => self
                        .store
                        .call(|s| s.finish_job(job, status, reason, Some(&value), best, None)),
                    Some(w) => self
                        .store
                        .call(|s| {
                            s.finish_leased_job(job, w, status, reason, Some(&value), best, None)
                        })
                        .map(|_| ()),
                }
            }
        };
        if let Err(e) = result {
            self.error = Some(e.to_string());
        }
    }
}

/// A stored trajectory in the guide's export shape (`trajectory_id`, `query`, `steps`, `reward`,
/// `normalized_reward` in 0..=1 between the failure and success rewards, `advantage`, `success`,
/// `execution_time_ms`, `iteration`); `flat` writes tool actions and results as JSON text (one
/// type per column, for Arrow).
#[must_use]
pub fn export_record(
    t: &TrajectoryRow,
    success_reward: f64,
    failure_reward: f64,
    flat: bool,
) -> Value {
    let steps = t.trajectory.get("steps").cloned().unwrap_or(Value::Array(Vec::new()));
    let steps = if flat {
        // Arrow needs one type per column: tool arguments and results as JSON text.
        Value::Array(
            steps
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|s| {
                            json!({
                                "state": s.get("state").cloned().unwrap_or(Value::Null),
                                "action": s.get("action").map(Value::to_string),
                                "result": s.get("result").map(Value::to_string),
                                "timestamp": s.get("timestamp").cloned().unwrap_or(Value::Null),
                                "duration_ms": s.get("duration_ms").cloned().unwrap_or(Value::Null),
                            })
                        })
                        .collect()
                })
                .unwrap_or_default(),
        )
    } else {
        steps
    };
    let span = success_reward - failure_reward;
    let normalized = if span.abs() < f64::EPSILON {
        0.0
    } else {
        ((t.reward - failure_reward) / span).clamp(0.0, 1.0)
    };
    let mut row = json!({
        "trajectory_id": t.id,
        "job_id": t.job_id,
        "iteration": t.iteration,
        "query": t.query,
        "expected_outcome": if flat { Value::String(t.expected_outcome.to_string()) } else { t.expected_outcome.clone() },
        "final_answer": t.trajectory.get("final_answer").cloned().unwrap_or(Value::Null),
        "steps": steps,
        "reward": t.reward,
        "normalized_reward": normalized,
        "advantage": t.advantage,
        "success": t.success,
        "execution_time_ms": t.trajectory.get("execution_time_ms").cloned().unwrap_or(Value::Null),
    });
    // The prompt a prompt policy rendered for it (system prompt and the items shown).
    if let Some(c) = t.trajectory.get("context").filter(|c| !c.is_null()) {
        row["context"] = if flat { Value::String(c.to_string()) } else { c.clone() };
    }
    row
}

/// The reward shaping of a stored job's settings (`config.reward_shaping`; the default when
/// absent): what [`export_record`] normalizes rewards with.
#[must_use]
pub fn reward_shaping(settings: &Value) -> agentcore_grpo::rewards::RewardShaping {
    settings
        .get("config")
        .and_then(|c| c.get("reward_shaping"))
        .and_then(|r| serde_json::from_value(r.clone()).ok())
        .unwrap_or_default()
}
