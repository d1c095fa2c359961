//! The params of every method (closed: an unknown key is refused with its name). The server
//! parses requests into these, the OpenRPC document (`rpc.discover`) is generated from them and
//! from the result types, so the two cannot drift.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{JobStatus, WebhookEvent};

/// `training.start_grpo`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StartParams {
    /// A registered agent.
    pub agent_id: String,
    /// GRPOConfig keys; the rest come from the agent and the defaults.
    #[serde(default)]
    pub config: Option<Map<String, Value>>,
    /// At least 100 tasks `{query, expected_outcome, metadata?}` (`training_queries` is the
    /// guide's older name).
    #[serde(default, alias = "training_queries")]
    pub training_data: Option<Vec<Value>>,
    /// Held-out tasks [default: a seeded 20% of `training_data`].
    #[serde(default)]
    pub evaluation_data: Option<Vec<Value>>,
    /// The caller's labels, returned with the job.
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    /// Experiment trackers of the job's scalars: `tensorboard` (event files in the job's run
    /// directory on the server), `mlflow` (the server's tracking server, `agentcore serve
    /// --mlflow-tracking-uri`; experiment `ORG/AGENT_ID`).
    #[serde(default)]
    pub report_to: Option<Vec<String>>,
}

/// `training.get_status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobParams {
    /// The job (a UUID).
    pub job_id: String,
}

/// `training.cancel`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelParams {
    /// The job (a UUID).
    pub job_id: String,
    /// Why (kept with the job).
    #[serde(default)]
    pub reason: Option<String>,
}

/// `training.list_jobs`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only this agent's jobs.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// Only jobs with this status.
    #[serde(default)]
    pub status: Option<JobStatus>,
    /// At most this many [default: 50, at most 1000].
    #[serde(default)]
    pub limit: Option<u64>,
    /// Skip this many.
    #[serde(default)]
    pub offset: Option<u64>,
}

/// `training.evaluate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluateParams {
    /// The job (a UUID).
    pub job_id: String,
    /// The checkpoint [default: the job's best].
    #[serde(default)]
    pub checkpoint_id: Option<String>,
    /// Tasks to evaluate on [default: the job's held-out split].
    #[serde(default)]
    pub evaluation_queries: Option<Vec<Value>>,
}

/// `training.export_trajectories`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportParams {
    /// The job (a UUID).
    pub job_id: String,
    /// Only trajectories the verifier accepted.
    #[serde(default)]
    pub success_only: Option<bool>,
    /// Only trajectories with at least this reward.
    #[serde(default)]
    pub min_reward: Option<f64>,
    /// At most this many [default: 1000, at most 10000].
    #[serde(default)]
    pub limit: Option<u64>,
    /// Skip this many.
    #[serde(default)]
    pub offset: Option<u64>,
}

/// `training.subscribe_webhook`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscribeParams {
    /// The events to deliver [default: all].
    #[serde(default)]
    pub events: Vec<WebhookEvent>,
    /// Where to POST them (http or https; private addresses only where the server allows).
    pub url: String,
}

/// `agents.get`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentParams {
    /// The agent.
    pub agent_id: String,
}

/// `agents.list`, `rpc.discover`: no params.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// `rewards.register_remote`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RewardsRegisterParams {
    /// The agent type whose rewards the endpoint computes.
    pub agent_type: String,
    /// The reward's name.
    pub name: String,
    /// The endpoint (the remote-reward protocol).
    pub url: String,
}

/// `training.deploy_checkpoint`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployParams {
    /// The agent the checkpoint's job trained.
    pub agent_id: String,
    /// The checkpoint (of a completed or running job of the agent).
    pub checkpoint_id: String,
    /// `staging`, `production`, or a name of the caller's.
    pub environment: String,
    /// Deploy to `production` even when the evaluation is not significantly better (recorded).
    #[serde(default)]
    pub force: bool,
}

/// `training.rollback_deployment`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackParams {
    /// The agent.
    pub agent_id: String,
    /// The environment to roll back.
    pub environment: String,
}

/// `training.list_deployments`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListDeploymentsParams {
    /// The agent.
    pub agent_id: String,
    /// Only this environment.
    #[serde(default)]
    pub environment: Option<String>,
    /// At most this many [default: 50, at most 1000].
    #[serde(default)]
    pub limit: Option<u64>,
    /// Skip this many.
    #[serde(default)]
    pub offset: Option<u64>,
}

/// The rule that raises an A/B test's split (the guide's "raise to 0.5 if the improvement is
/// over 0.05, eventually 1.0").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RaiseRule {
    /// Raise only while the experiment is significantly better by more than this (success
    /// rate difference) [default: 0.05].
    #[serde(default = "default_min_improvement")]
    pub min_improvement: f64,
    /// The splits to raise to, in order [default: 0.5, 1.0].
    #[serde(default = "default_raise_steps")]
    pub steps: Vec<f64>,
    /// Experiment outcomes between two raises [default: 100].
    #[serde(default = "default_outcomes_per_step")]
    pub min_outcomes_per_step: u64,
}

/// The default of [`RaiseRule::min_improvement`].
pub const DEFAULT_MIN_IMPROVEMENT: f64 = 0.05;
/// The default of [`RaiseRule::min_outcomes_per_step`].
pub const DEFAULT_OUTCOMES_PER_STEP: u64 = 100;
/// The default of `alpha` of an A/B test.
pub const DEFAULT_AB_ALPHA: f64 = 0.05;
/// The environment `agents.invoke` and `training.configure_ab_test` use by default.
pub const DEFAULT_ENVIRONMENT: &str = "production";

fn default_min_improvement() -> f64 {
    DEFAULT_MIN_IMPROVEMENT
}
fn default_raise_steps() -> Vec<f64> {
    vec![0.5, 1.0]
}
fn default_outcomes_per_step() -> u64 {
    DEFAULT_OUTCOMES_PER_STEP
}
fn default_alpha() -> f64 {
    DEFAULT_AB_ALPHA
}
fn default_environment() -> String {
    DEFAULT_ENVIRONMENT.to_owned()
}

/// `training.configure_ab_test`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigureAbParams {
    /// The agent [default: the agent whose job made `experiment_checkpoint`, as in the guide's
    /// best-practice call that names only the checkpoints].
    #[serde(default)]
    pub agent_id: Option<String>,
    /// The environment whose traffic is split [default: production].
    #[serde(default = "default_environment")]
    pub environment: String,
    /// The baseline checkpoint [default (null): the environment's active deployment].
    #[serde(default)]
    pub baseline_checkpoint: Option<String>,
    /// The experiment checkpoint.
    pub experiment_checkpoint: String,
    /// Share of users sent to the experiment, 0..=1. Configuring the same experiment again
    /// changes the split of the running test and keeps its outcomes.
    pub traffic_split: f64,
    /// Roll the experiment back when it is significantly worse [default: false].
    #[serde(default)]
    pub guardrail: bool,
    /// Level of the sequential test [default: 0.05].
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Raise the split by these rules [default: never].
    #[serde(default)]
    pub auto_raise: Option<RaiseRule>,
}

/// `training.get_ab_test`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AbTestParams {
    /// The agent.
    pub agent_id: String,
    /// The environment [default: production].
    #[serde(default = "default_environment")]
    pub environment: String,
}

/// `training.stop_ab_test`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StopAbParams {
    /// The agent.
    pub agent_id: String,
    /// The environment [default: production].
    #[serde(default = "default_environment")]
    pub environment: String,
    /// Deploy the experiment to the environment (it must have won the test, or pass the
    /// deployment gate) [default: false].
    #[serde(default)]
    pub promote: bool,
}

/// `agents.invoke`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InvokeParams {
    /// The agent.
    pub agent_id: String,
    /// What the agent is asked.
    pub query: String,
    /// The environment [default: production].
    #[serde(default = "default_environment")]
    pub environment: String,
    /// Who asks: the same key always gets the same A/B arm (stored only as a hash).
    #[serde(default)]
    pub user_key: Option<String>,
    /// What a correct answer produces: verified like a training query and recorded as the
    /// outcome.
    #[serde(default)]
    pub expected_outcome: Option<Map<String, Value>>,
}

/// `agents.export_invocations`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportInvocationsParams {
    /// The agent.
    pub agent_id: String,
    /// Only this environment's [default: every environment].
    #[serde(default)]
    pub environment: Option<String>,
    /// At most this many [default: 1000, at most 10000].
    #[serde(default)]
    pub limit: Option<u64>,
    /// Skip this many.
    #[serde(default)]
    pub offset: Option<u64>,
}

/// `agents.feedback`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedbackParams {
    /// The invocation.
    pub invocation_id: String,
    /// Whether the answer was right.
    #[serde(default)]
    pub success: Option<bool>,
    /// A reward for it (success, when not given, is reward > 0).
    #[serde(default)]
    pub reward: Option<f64>,
}
