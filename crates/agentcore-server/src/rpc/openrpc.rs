//! `rpc.discover`: the OpenRPC document of the served methods, generated from the params and
//! result types (`agentcore_api::params`, the result structs, the agent definition), so it
//! cannot drift from what the handlers parse and return.

use agentcore_agent::definition::AgentDefinition;
use schemars::{JsonSchema, SchemaGenerator};

use super::*;
use agentcore_api::params::{
    AbTestParams, ConfigureAbParams, DeployParams, ExportInvocationsParams, FeedbackParams,
    InvokeParams, ListDeploymentsParams, RollbackParams, StopAbParams,
};
use agentcore_api::{
    AbTest, Deployment, DeploymentList, FeedbackResult, InvocationExport, InvokeResult,
    RollbackResult,
};

/// Every method the server answers, with its summary: `dispatch` serves exactly these (a test
/// checks both ways).
pub const SERVED: [&str; 21] = [
    methods::START,
    methods::STATUS,
    methods::CANCEL,
    methods::LIST,
    methods::EVALUATE,
    methods::EXPORT,
    methods::SUBSCRIBE,
    methods::AGENTS_REGISTER,
    methods::AGENTS_GET,
    methods::AGENTS_LIST,
    methods::REWARDS_REGISTER,
    methods::DISCOVER,
    methods::DEPLOY,
    methods::ROLLBACK,
    methods::LIST_DEPLOYMENTS,
    methods::CONFIGURE_AB,
    methods::GET_AB,
    methods::STOP_AB,
    methods::INVOKE,
    methods::FEEDBACK,
    methods::EXPORT_INVOCATIONS,
];

/// The OpenRPC document itself (its shape is OpenRPC's).
#[derive(schemars::JsonSchema)]
#[expect(dead_code, reason = "only its schema is used")]
struct Object(Map<String, Value>);

struct Doc {
    generator: SchemaGenerator,
    methods: Vec<Value>,
}

impl Doc {
    fn method<P: JsonSchema, R: JsonSchema>(&mut self, name: &str, summary: &str) {
        let params = self.generator.root_schema_for::<P>().to_value();
        let required: Vec<&str> = params["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let params: Vec<Value> = params["properties"]
            .as_object()
            .map(|props| {
                props
                    .iter()
                    .map(|(n, s)| {
                        json!({"name": n, "required": required.contains(&n.as_str()), "schema": s})
                    })
                    .collect()
            })
            .unwrap_or_default();
        let result = self.generator.subschema_for::<R>().to_value();
        self.methods.push(json!({
            "name": name,
            "summary": summary,
            "paramStructure": "by-name",
            "params": params,
            "result": {"name": R::schema_name(), "schema": result},
        }));
    }
}

/// The OpenRPC document of the served methods.
#[must_use]
pub fn openrpc() -> Value {
    let mut settings = schemars::generate::SchemaSettings::draft2020_12();
    settings.definitions_path = "#/components/schemas/".into();
    let mut d = Doc { generator: settings.into_generator(), methods: Vec::new() };
    d.method::<StartParams, StartResult>(methods::START, "Queue a GRPO job");
    d.method::<JobParams, StatusResult>(methods::STATUS, "A job's status, metrics and cost");
    d.method::<CancelParams, CancelResult>(methods::CANCEL, "Cancel a queued or running job");
    d.method::<ListParams, ListResult>(methods::LIST, "The caller's jobs");
    d.method::<EvaluateParams, EvaluateResult>(
        methods::EVALUATE,
        "A checkpoint against the baseline, paired (McNemar, paired t-test, bootstrap)",
    );
    d.method::<ExportParams, ExportResult>(methods::EXPORT, "A job's trajectories");
    d.method::<SubscribeParams, SubscribeResult>(
        methods::SUBSCRIBE,
        "Webhook deliveries of job events",
    );
    d.method::<AgentDefinition, AgentDefinition>(
        methods::AGENTS_REGISTER,
        "Register an agent (the document `agentcore train --agent FILE` reads)",
    );
    d.method::<AgentParams, AgentDefinition>(methods::AGENTS_GET, "One agent");
    d.method::<NoParams, AgentList>(methods::AGENTS_LIST, "The agents the caller sees");
    d.method::<RewardsRegisterParams, RewardEndpoint>(
        methods::REWARDS_REGISTER,
        "Serve the rewards of an agent type from an HTTP endpoint (the remote-reward protocol)",
    );
    d.method::<NoParams, Object>(methods::DISCOVER, "This document");
    d.method::<DeployParams, Deployment>(
        methods::DEPLOY,
        "Deploy a checkpoint to an environment (production is gated on its held-out evaluation)",
    );
    d.method::<RollbackParams, RollbackResult>(
        methods::ROLLBACK,
        "Roll an environment back to the deployment before the active one",
    );
    d.method::<ListDeploymentsParams, DeploymentList>(
        methods::LIST_DEPLOYMENTS,
        "An agent's deployments, newest first",
    );
    d.method::<ConfigureAbParams, AbTest>(
        methods::CONFIGURE_AB,
        "Split an environment's users between a baseline and an experiment checkpoint",
    );
    d.method::<AbTestParams, AbTest>(
        methods::GET_AB,
        "An A/B test's arms, Wilson intervals and always-valid sequential test",
    );
    d.method::<StopAbParams, AbTest>(methods::STOP_AB, "Stop an A/B test, optionally promoting");
    d.method::<InvokeParams, InvokeResult>(
        methods::INVOKE,
        "Run the deployed agent on one query (A/B routed by user_key)",
    );
    d.method::<FeedbackParams, FeedbackResult>(
        methods::FEEDBACK,
        "The outcome of an invocation (feeds its A/B test)",
    );
    d.method::<ExportInvocationsParams, InvocationExport>(
        methods::EXPORT_INVOCATIONS,
        "An agent's invocations with their trajectories and outcomes, oldest first",
    );
    let schemas: Map<String, Value> = d.generator.take_definitions(true).into_iter().collect();
    json!({
        "openrpc": "1.2.6",
        "info": {"title": "agentcore training service", "version": env!("CARGO_PKG_VERSION")},
        "methods": d.methods,
        "components": {"schemas": schemas},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_lists_every_served_method_with_its_params() {
        let doc = openrpc();
        let names: Vec<&str> =
            doc["methods"].as_array().unwrap().iter().filter_map(|m| m["name"].as_str()).collect();
        assert_eq!(names, SERVED.to_vec());
        let method = |n: &str| {
            doc["methods"].as_array().unwrap().iter().find(|m| m["name"] == n).unwrap().clone()
        };
        let params = |n: &str| -> Vec<(String, bool)> {
            method(n)["params"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p["name"].as_str().unwrap().to_owned(), p["required"] == true))
                .collect()
        };
        assert!(params(methods::START).contains(&("agent_id".into(), true)));
        assert!(params(methods::START).contains(&("training_data".into(), false)));
        assert_eq!(params(methods::STATUS), vec![("job_id".into(), true)]);
        // The agent definition's own fields, `model` an object (it drifted to "string" once).
        let register = params(methods::AGENTS_REGISTER);
        for f in ["agent_id", "model", "tools", "sampling", "max_steps_per_trajectory"] {
            assert!(register.iter().any(|(n, _)| n == f), "agents.register lacks {f}");
        }
        // References resolve into the components.
        let text = doc.to_string();
        for r in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = &r[..r.find('"').unwrap()];
            assert!(doc["components"]["schemas"].get(name).is_some(), "dangling $ref {name}");
        }
        assert!(doc["components"]["schemas"].get("JobStatus").is_some());
    }
}
