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
