//! Wire types of the agentcore service (`../shared/api-contract.md`): the JSON-RPC 2.0
//! envelope, the error codes, the methods' names, params and results, and the messages of the
//! WebSocket and of webhooks. Shared by the server, the Rust client and the CLI.
//!
//! Results are typed where clients read fields (`StartResult`, `JobStatus`, ...); free-form
//! parts (metrics, metadata, trajectories' steps) stay JSON values.
#![deny(missing_docs)]

mod kinds;
pub mod params;

pub use kinds::{EventKind, JobStatus, UnknownName, WebhookEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The JSON-RPC endpoint.
pub const RPC_PATH: &str = "/api/v1/jsonrpc";

/// Error codes of the contract.
pub mod codes {
    /// Invalid JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// Invalid request, or a config value out of range (`data: {field, error}`).
    pub const INVALID_REQUEST: i64 = -32600;
    /// No such method.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Malformed params.
    pub const INVALID_PARAMS: i64 = -32602;
    /// Internal error (the message carries a correlation id).
    pub const INTERNAL_ERROR: i64 = -32603;
    /// No such job, checkpoint or agent.
    pub const NOT_FOUND: i64 = -32001;
    /// The pre-flight estimate is over `max_budget_usd`.
    pub const BUDGET_EXCEEDED: i64 = -40001;
    /// Training data validation failed.
    pub const DATA_VALIDATION: i64 = -40002;
    /// The job cannot be cancelled (already ended).
    pub const CANNOT_CANCEL: i64 = -40003;
    /// Evaluation failed.
    pub const EVALUATION_FAILED: i64 = -40004;
    /// `limit` over 10000.
    pub const EXPORT_LIMIT: i64 = -40005;
    /// The deployment gate: the checkpoint's evaluation is not significantly better.
    pub const DEPLOYMENT_GATE: i64 = -40006;
    /// No deployment or A/B test for that agent and environment.
    pub const NO_DEPLOYMENT: i64 = -40007;
    /// The token lacks a permission.
    pub const PERMISSION_DENIED: i64 = -40103;
}

/// Method names.
pub mod methods {
    /// Start a GRPO job.
    pub const START: &str = "training.start_grpo";
    /// A job's status.
    pub const STATUS: &str = "training.get_status";
    /// Cancel a job.
    pub const CANCEL: &str = "training.cancel";
    /// List jobs.
    pub const LIST: &str = "training.list_jobs";
    /// Evaluate a checkpoint against the baseline.
    pub const EVALUATE: &str = "training.evaluate";
    /// Export trajectories.
    pub const EXPORT: &str = "training.export_trajectories";
    /// Subscribe a webhook.
    pub const SUBSCRIBE: &str = "training.subscribe_webhook";
    /// Register an agent.
    pub const AGENTS_REGISTER: &str = "agents.register";
    /// One agent.
    pub const AGENTS_GET: &str = "agents.get";
    /// All agents.
    pub const AGENTS_LIST: &str = "agents.list";
    /// Serve an agent type's rewards from an HTTP endpoint (the SDK's registry).
    pub const REWARDS_REGISTER: &str = "rewards.register_remote";
    /// The OpenRPC document.
    pub const DISCOVER: &str = "rpc.discover";
    /// Deploy a checkpoint to an environment.
    pub const DEPLOY: &str = "training.deploy_checkpoint";
    /// Roll an environment back to its previous deployment.
    pub const ROLLBACK: &str = "training.rollback_deployment";
    /// An agent's deployments.
    pub const LIST_DEPLOYMENTS: &str = "training.list_deployments";
    /// Split an environment's traffic between two checkpoints.
    pub const CONFIGURE_AB: &str = "training.configure_ab_test";
    /// An A/B test's report.
    pub const GET_AB: &str = "training.get_ab_test";
    /// Stop an A/B test (optionally promoting the experiment).
    pub const STOP_AB: &str = "training.stop_ab_test";
    /// Run the deployed agent on one query.
    pub const INVOKE: &str = "agents.invoke";
    /// The outcome of an invocation.
    pub const FEEDBACK: &str = "agents.feedback";
    /// An agent's invocations with their trajectories and outcomes.
    pub const EXPORT_INVOCATIONS: &str = "agents.export_invocations";
}

/// A JSON-RPC request (a notification when `id` is absent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Always `"2.0"`.
    pub jsonrpc: String,
    /// The method.
    pub method: String,
    /// Its params (an object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
    /// The id; absent for a notification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
}

impl Request {
    /// A call with an id.
    #[must_use]
    pub fn new(method: &str, params: Value, id: u64) -> Self {
        Self {
            jsonrpc: "2.0".into(),
            method: method.into(),
            params: Some(params),
            id: Some(id.into()),
        }
    }
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpcError {
    /// One of [`codes`].
    pub code: i64,
    /// What went wrong, for people.
    pub message: String,
    /// Details (e.g. `{field, error}` for a config value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl RpcError {
    /// An error without data.
    #[must_use]
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), data: None }
    }

    /// With data.
    #[must_use]
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)?;
        if let Some(d) = &self.data {
            write!(f, " {d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RpcError {}

/// A JSON-RPC response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Always `"2.0"`.
    pub jsonrpc: String,
    /// The result, on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// The error, on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RpcError>,
    /// The request's id (`null` when it could not be read).
    pub id: Value,
}

impl Response {
    /// A success.
    #[must_use]
    pub fn ok(id: Value, result: Value) -> Self {
        Self { jsonrpc: "2.0".into(), result: Some(result), error: None, id }
    }

    /// A failure.
    #[must_use]
    pub fn err(id: Value, error: RpcError) -> Self {
        Self { jsonrpc: "2.0".into(), result: None, error: Some(error), id }
    }
}

/// `training.start_grpo` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StartResult {
    /// The new job (a UUID).
    pub job_id: String,
    /// `queued`.
    pub status: JobStatus,
    /// The agent trained.
    pub agent_id: String,
    /// Iterations configured.
    pub total_iterations: u32,
    /// The budget (decimal string).
    pub budget_usd: String,
    /// RFC 3339.
    pub created_at: String,
}

/// `progress` of a status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Progress {
    /// Iterations done.
    pub current_iteration: u32,
    /// Iterations configured.
    pub total_iterations: u32,
    /// 0..=100.
    pub percent_complete: f64,
}

/// `cost` of a status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Cost {
    /// Spent (decimal string).
    pub cost_usd: String,
    /// The budget (decimal string).
    pub budget_usd: String,
    /// Left (decimal string).
    pub budget_remaining_usd: String,
}

/// `training.get_status` result (also the items of `training.list_jobs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StatusResult {
    /// The job.
    pub job_id: String,
    /// Its agent.
    pub agent_id: String,
    /// `queued`, `running`, `completed`, `failed`, `cancelled`.
    pub status: JobStatus,
    /// Iterations done.
    pub current_iteration: u32,
    /// Iterations configured.
    pub total_iterations: u32,
    /// 0..=100.
    pub progress_percent: f64,
    /// `train_loss`, `validation_accuracy`, `avg_reward`, `success_rate`,
    /// `trajectories_generated` and the algorithm metrics of the last iteration.
    pub metrics: Value,
    /// Spent (decimal string).
    pub cost_usd: String,
    /// The budget (decimal string).
    pub budget_usd: String,
    /// Share of the budget left, 0..=100.
    pub budget_remaining_percent: f64,
    /// RFC 3339, when a worker took the job.
    pub started_at: Option<String>,
    /// RFC 3339, a linear estimate from the iterations so far.
    pub estimated_completion: Option<String>,
    /// The best checkpoint so far.
    pub best_checkpoint_id: Option<String>,
    /// Why it failed.
    pub error_message: Option<String>,
    /// `completed`, `early_stopped`, `budget_exhausted`, `cancelled`, ...
    pub stop_reason: Option<String>,
    /// Nested progress.
    pub progress: Progress,
    /// Nested cost.
    pub cost: Cost,
    /// The caller's metadata.
    #[serde(default)]
    pub metadata: Option<Value>,
    /// RFC 3339.
    pub created_at: String,
}

/// `training.cancel` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CancelResult {
    /// The job.
    pub job_id: String,
    /// `cancelled`, or `cancelling` while the worker finishes the iteration.
    pub status: String,
    /// RFC 3339.
    pub cancelled_at: String,
    /// Iterations done.
    pub iterations_completed: u32,
    /// A checkpoint exists for the job (the worker writes one when it stops).
    pub checkpoint_saved: bool,
    /// The latest checkpoint, when there is one.
    pub checkpoint_id: Option<String>,
}

/// `training.list_jobs` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ListResult {
    /// The page.
    pub jobs: Vec<StatusResult>,
    /// Jobs in the page.
    pub count: usize,
    /// Jobs matching.
    pub total_count: u64,
}

/// `training.subscribe_webhook` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SubscribeResult {
    /// The subscription.
    pub subscription_id: String,
    /// The signing secret (`whsec_` + base64).
    pub secret: String,
}

/// Aggregates of one agent on the evaluation queries (`metrics`, `baseline_metrics`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EvalMetrics {
    /// Share verified.
    pub success_rate: f64,
    /// Mean reward.
    pub avg_reward: f64,
    /// Mean agent steps.
    pub avg_steps: f64,
    /// Share of tool calls without error.
    pub tool_accuracy: f64,
}

/// `baseline_comparison` of `training.evaluate`: the checkpoint against the agent before
/// training on the same queries, paired.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BaselineComparison {
    /// Trained minus baseline success rate.
    pub success_rate_improvement: f64,
    /// Trained minus baseline mean reward.
    pub avg_reward_improvement: f64,
    /// McNemar's exact p-value on success.
    pub p_value: f64,
    /// p below the significance level (0.05).
    pub statistically_significant: bool,
    /// The test's name.
    pub test: String,
    /// Interval of the success-rate improvement (`{low, high, level}`).
    pub confidence_interval: Value,
    /// Baseline success rate.
    pub baseline_success_rate: f64,
    /// Trained success rate.
    pub trained_success_rate: f64,
    /// Paired t-test on the rewards, when defined.
    pub reward_t_test: Option<Value>,
    /// Bootstrap interval of the mean reward difference.
    pub reward_confidence_interval: Value,
}

/// `training.evaluate` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EvaluateResult {
    /// The job.
    pub job_id: String,
    /// The checkpoint evaluated.
    pub checkpoint_id: String,
    /// Its iteration.
    pub iteration: u32,
    /// The checkpoint's metrics.
    pub metrics: EvalMetrics,
    /// The agent before training.
    pub baseline_metrics: EvalMetrics,
    /// The paired comparison.
    pub baseline_comparison: BaselineComparison,
    /// p < 0.05.
    pub statistically_significant: bool,
    /// Queries evaluated.
    pub queries_evaluated: usize,
    /// Wall time of the evaluation, ms.
    pub evaluation_duration_ms: u64,
}

/// `training.export_trajectories` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ExportResult {
    /// The job.
    pub job_id: String,
    /// Trajectories in the guide's export shape.
    pub trajectories: Vec<Value>,
    /// Trajectories matching the filter.
    pub total_count: u64,
    /// In this page.
    pub returned_count: u64,
    /// More pages follow.
    pub has_more: bool,
}

/// `agents.list` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AgentList {
    /// The agents the caller sees (stored definitions).
    pub agents: Vec<Value>,
    /// How many.
    pub count: usize,
}

/// `rewards.register_remote` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RewardEndpoint {
    /// The agent type.
    pub agent_type: String,
    /// The reward's name.
    pub name: String,
    /// The endpoint.
    pub url: String,
}

/// The webhook events of the contract, by name.
pub const WEBHOOK_EVENTS: [&str; 7] = [
    WebhookEvent::JobStarted.as_str(),
    WebhookEvent::JobProgress.as_str(),
    WebhookEvent::JobCompleted.as_str(),
    WebhookEvent::JobFailed.as_str(),
    WebhookEvent::JobCancelled.as_str(),
    WebhookEvent::BudgetWarning.as_str(),
    WebhookEvent::CheckpointSaved.as_str(),
];

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn envelopes_round_trip_and_omit_absent_members() {
        let r = Request::new(methods::STATUS, json!({"job_id": "x"}), 7);
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(
            text,
            r#"{"jsonrpc":"2.0","method":"training.get_status","params":{"job_id":"x"},"id":7}"#
        );
        let n: Request = serde_json::from_str(r#"{"jsonrpc":"2.0","method":"m"}"#).unwrap();
        assert_eq!((n.id, n.params), (None, None));
        let ok = serde_json::to_value(Response::ok(json!(1), json!({"a": 1}))).unwrap();
        assert_eq!(ok, json!({"jsonrpc": "2.0", "result": {"a": 1}, "id": 1}));
        let e =
            RpcError::new(codes::INVALID_REQUEST, "bad").with_data(json!({"field": "batch_size"}));
        let err = serde_json::to_value(Response::err(Value::Null, e.clone())).unwrap();
        assert_eq!(
            err,
            json!({"jsonrpc": "2.0", "error": {"code": -32600, "message": "bad", "data": {"field": "batch_size"}}, "id": null})
        );
        assert_eq!(e.to_string(), r#"bad (code -32600) {"field":"batch_size"}"#);
    }
}

/// The evaluation a deployment rests on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeploymentEvaluation {
    /// McNemar's exact p-value against the baseline (the agent before training).
    pub p_value: f64,
    /// Held-out success rate, checkpoint minus baseline.
    pub success_rate_improvement: f64,
    /// Held-out queries evaluated.
    pub queries_evaluated: usize,
    /// Success rate of the checkpoint.
    pub success_rate: f64,
    /// Success rate of the baseline.
    pub baseline_success_rate: f64,
}

/// A deployment (`training.deploy_checkpoint`, `training.list_deployments`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Deployment {
    /// Its id.
    pub deployment_id: String,
    /// The agent.
    pub agent_id: String,
    /// The environment.
    pub environment: String,
    /// 1, 2, ... per environment.
    pub version: i64,
    /// The checkpoint served.
    pub checkpoint_id: String,
    /// The checkpoint's job.
    pub job_id: String,
    /// The deployment active before this one.
    pub previous_deployment_id: Option<String>,
    /// RFC 3339.
    pub deployed_at: String,
    /// Who deployed it.
    pub deployed_by: String,
    /// The evaluation it rests on (none where none was run, e.g. a staging deploy).
    pub evaluation: Option<DeploymentEvaluation>,
    /// Deployed past the gate with `force`.
    pub forced: bool,
    /// `active`, `superseded` or `rolled_back`.
    pub status: String,
    /// Why (a promotion, a guardrail rollback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// `training.rollback_deployment` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RollbackResult {
    /// The deployment now active again.
    pub deployment: Deployment,
    /// The deployment rolled back.
    pub rolled_back: Deployment,
}

/// `training.list_deployments` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeploymentList {
    /// Newest first.
    pub deployments: Vec<Deployment>,
    /// Returned.
    pub count: usize,
    /// Matching in all.
    pub total_count: u64,
}

/// One arm of an A/B report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AbArm {
    /// The checkpoint of the arm.
    pub checkpoint_id: String,
    /// Invocations answered by it.
    pub invocations: u64,
    /// Invocations with an outcome (verified or fed back).
    pub outcomes: u64,
    /// Successful outcomes.
    pub successes: u64,
    /// Successes / outcomes (null without outcomes).
    pub success_rate: Option<f64>,
    /// Wilson 95% interval of the rate (null without outcomes).
    pub success_interval: Option<[f64; 2]>,
    /// Mean latency (null without invocations).
    pub mean_latency_ms: Option<f64>,
    /// Cost of its invocations (decimal string).
    pub cost_usd: String,
}

/// An A/B test (`training.configure_ab_test`, `training.get_ab_test`, `training.stop_ab_test`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AbTest {
    /// Its id.
    pub ab_test_id: String,
    /// The agent.
    pub agent_id: String,
    /// The environment.
    pub environment: String,
    /// `running`, `stopped` or `rolled_back`.
    pub status: String,
    /// Share of users sent to the experiment now.
    pub traffic_split: f64,
    /// Level of the sequential test.
    pub alpha: f64,
    /// Roll back when significantly worse.
    pub guardrail: bool,
    /// The raise rule, if any.
    pub auto_raise: Option<params::RaiseRule>,
    /// The baseline arm.
    pub baseline: AbArm,
    /// The experiment arm.
    pub experiment: AbArm,
    /// Experiment minus baseline success rate (null until both have outcomes).
    pub difference: Option<f64>,
    /// The always-valid p-value of the sequential test (valid however often it is read).
    pub p_value: f64,
    /// The sequential test: `mixture likelihood ratio (KT mixture / pooled MLE)`.
    pub test: String,
    /// `continue`, `experiment_better` or `experiment_worse`.
    pub decision: String,
    /// RFC 3339.
    pub created_at: String,
    /// The deployment made by `stop_ab_test(promote: true)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted: Option<Deployment>,
}

/// `agents.invoke` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct InvokeResult {
    /// The invocation (give it to `agents.feedback`).
    pub invocation_id: String,
    /// The agent's final answer (null when it gave none).
    pub answer: Option<String>,
    /// `baseline` or `experiment`.
    pub arm: String,
    /// The checkpoint that answered.
    pub checkpoint_id: String,
    /// The stored trajectory (the invocation id).
    pub trajectory_id: String,
    /// The verifier's verdict, when `expected_outcome` was given.
    pub success: Option<bool>,
    /// Wall time of the call on the server.
    pub latency_ms: u64,
    /// Cost (decimal string).
    pub cost_usd: String,
    /// The environment.
    pub environment: String,
    /// The A/B test that routed it.
    pub ab_test_id: Option<String>,
}

/// `agents.export_invocations` result: one page, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct InvocationExport {
    /// The agent.
    pub agent_id: String,
    /// The invocations: ids, environment, arm, checkpoint, query, answer, the trajectory,
    /// outcome (`success`, `reward`, `outcome_source`), latency, cost, time (never the user
    /// key, only whether one was given).
    pub invocations: Vec<Value>,
    /// Invocations matching the filter.
    pub total_count: u64,
    /// In this page.
    pub returned_count: u64,
    /// More pages follow.
    pub has_more: bool,
}

/// `agents.feedback` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FeedbackResult {
    /// The invocation.
    pub invocation_id: String,
    /// The outcome recorded.
    pub success: bool,
    /// The reward recorded.
    pub reward: Option<f64>,
    /// The A/B test's decision after it (when the invocation belongs to one).
    pub decision: Option<String>,
}
