//! `rpc.discover`: the OpenRPC document of the served methods.

use super::*;

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
