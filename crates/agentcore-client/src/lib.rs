//! Rust client of the agentcore training service: the calls of the guide's `TrainingClient`
//! (`start_training`, `get_status`, `list_jobs`, `cancel`, `evaluate`, `export_trajectories`,
//! `subscribe_webhook`) over JSON-RPC 2.0.
//!
//! ```no_run
//! use agentcore_client::TrainingClient;
//! use serde_json::json;
//! let client = TrainingClient::new("http://127.0.0.1:8080", Some("TOKEN".into()));
//! let tasks: Vec<_> = (0..100)
//!     .map(|i| json!({"query": format!("Compute the sum of [{i}, 1]"), "expected_outcome": {"result": i + 1}}))
//!     .collect();
//! let job = client.start_training("seed-agent", json!({"n_iterations": 10}), &tasks, None).unwrap();
//! let status = client.get_status(&job.job_id).unwrap();
//! println!("{} {}%", status.status, status.progress_percent);
//! ```
#![deny(missing_docs)]

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use agentcore_api::params::{
    ConfigureAbParams, ExportInvocationsParams, InvokeParams, RaiseRule,
};
pub use agentcore_api::{
    AbArm, AbTest, CancelResult, Deployment, DeploymentList, FeedbackResult, InvocationExport,
    InvokeResult, JobStatus, ListResult, RollbackResult, RpcError, StartResult, StatusResult,
    SubscribeResult,
};
use agentcore_api::{Request, Response, methods};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// What a call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with a JSON-RPC error.
    #[error("{0}")]
    Rpc(RpcError),
    /// The server answered with an HTTP error (401, 413, 429, ...).
    #[error("HTTP {status}: {body}")]
    Http {
        /// The status.
        status: u16,
        /// The body (cut to 500 characters).
        body: String,
        /// `Retry-After` seconds on a 429.
        retry_after: Option<u64>,
    },
    /// The server could not be reached.
    #[error("{url}: {message}")]
    Transport {
        /// The endpoint.
        url: String,
        /// What failed.
        message: String,
    },
    /// The answer is not what the contract says.
    #[error("unexpected answer: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The JSON-RPC error code, when the server sent one.
    #[must_use]
    pub fn code(&self) -> Option<i64> {
        match self {
            Self::Rpc(e) => Some(e.code),
            _ => None,
        }
    }
}

/// Result of a call.
pub type Result<T> = std::result::Result<T, ClientError>;

/// A client of one server.
#[derive(Debug)]
pub struct TrainingClient {
    url: String,
    token: Option<String>,
    agent: ureq::Agent,
    next_id: AtomicU64,
}

impl TrainingClient {
    /// A client of the server at `base_url` (`http://host:port`), authenticating with the
    /// bearer `token` (a JWT).
    #[must_use]
    pub fn new(base_url: &str, token: Option<String>) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(600)))
            .http_status_as_error(false)
            .build()
            .into();
        Self {
            url: format!("{}{}", base_url.trim_end_matches('/'), agentcore_api::RPC_PATH),
            token,
            agent,
            next_id: AtomicU64::new(1),
        }
    }

    /// Calls `method` with `params` and returns the raw result.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn call(&self, method: &str, params: Value) -> Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let request = Request::new(method, params, id);
        let mut req = self.agent.post(&self.url).header("Content-Type", "application/json");
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let mut resp = req.send_json(&request).map_err(|e| ClientError::Transport {
            url: self.url.clone(),
            message: e.to_string(),
        })?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let mut text = String::new();
        resp.body_mut().as_reader().take(256 << 20).read_to_string(&mut text).map_err(|e| {
            ClientError::Transport { url: self.url.clone(), message: e.to_string() }
        })?;
        if !(200..300).contains(&status) {
            return Err(ClientError::Http {
                status,
                body: text.chars().take(500).collect(),
                retry_after,
            });
        }
        let response: Response = serde_json::from_str(&text).map_err(|e| {
            ClientError::Protocol(format!("{e}: {}", text.chars().take(200).collect::<String>()))
        })?;
        match (response.result, response.error) {
            (_, Some(e)) => Err(ClientError::Rpc(e)),
            (Some(r), None) => Ok(r),
            (None, None) => Err(ClientError::Protocol("neither result nor error".into())),
        }
    }

    fn typed<T: DeserializeOwned>(&self, method: &str, params: Value) -> Result<T> {
        let value = self.call(method, params)?;
        serde_json::from_value(value).map_err(|e| ClientError::Protocol(format!("{method}: {e}")))
    }

    /// `training.start_grpo`: queues a job training `agent_id` on `training_data`
    /// (`{query, expected_outcome}` objects, at least 100) with `config` (GRPOConfig fields).
    ///
    /// # Errors
    /// [`ClientError`] (e.g. code -40002 for bad data, -32600 for a config value out of range).
    pub fn start_training(
        &self,
        agent_id: &str,
        config: Value,
        training_data: &[Value],
        evaluation_data: Option<&[Value]>,
    ) -> Result<StartResult> {
        let mut params =
            json!({"agent_id": agent_id, "config": config, "training_data": training_data});
        if let Some(e) = evaluation_data {
            params["evaluation_data"] = json!(e);
        }
        self.typed(methods::START, params)
    }

    /// `training.get_status`.
    ///
    /// # Errors
    /// [`ClientError`] (code -32001 for an unknown job).
    pub fn get_status(&self, job_id: &str) -> Result<StatusResult> {
        self.typed(methods::STATUS, json!({"job_id": job_id}))
    }

    /// `training.list_jobs` (`status` filters; `limit` 50 by default on the server).
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn list_jobs(
        &self,
        agent_id: Option<&str>,
        status: Option<&str>,
        limit: Option<u32>,
        offset: Option<u32>,
    ) -> Result<ListResult> {
        let mut params = json!({});
        for (k, v) in [("agent_id", agent_id), ("status", status)] {
            if let Some(v) = v {
                params[k] = json!(v);
            }
        }
        for (k, v) in [("limit", limit), ("offset", offset)] {
            if let Some(v) = v {
                params[k] = json!(v);
            }
        }
        self.typed(methods::LIST, params)
    }

    /// `training.cancel`.
    ///
    /// # Errors
    /// [`ClientError`] (code -40003 when the job already ended).
    pub fn cancel(&self, job_id: &str, reason: Option<&str>) -> Result<CancelResult> {
        self.typed(methods::CANCEL, json!({"job_id": job_id, "reason": reason}))
    }

    /// `training.evaluate`: a checkpoint (default: the best) against the agent before training.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn evaluate(&self, job_id: &str, checkpoint_id: Option<&str>) -> Result<Value> {
        let mut params = json!({"job_id": job_id});
        if let Some(c) = checkpoint_id {
            params["checkpoint_id"] = json!(c);
        }
        self.call(methods::EVALUATE, params)
    }

    /// `training.export_trajectories`.
    ///
    /// # Errors
    /// [`ClientError`] (code -40005 for `limit` over 10000).
    pub fn export_trajectories(
        &self,
        job_id: &str,
        success_only: bool,
        min_reward: Option<f64>,
        limit: Option<u32>,
        offset: Option<u32>,
    ) -> Result<Value> {
        let mut params = json!({"job_id": job_id, "success_only": success_only});
        if let Some(m) = min_reward {
            params["min_reward"] = json!(m);
        }
        if let Some(l) = limit {
            params["limit"] = json!(l);
        }
        if let Some(o) = offset {
            params["offset"] = json!(o);
        }
        self.call(methods::EXPORT, params)
    }

    /// `training.subscribe_webhook`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn subscribe_webhook(&self, events: &[&str], url: &str) -> Result<SubscribeResult> {
        self.typed(methods::SUBSCRIBE, json!({"events": events, "url": url}))
    }

    /// `training.deploy_checkpoint`: `checkpoint_id` of a job of `agent_id` into `environment`
    /// (`production` needs a significantly better held-out evaluation unless `force`).
    ///
    /// # Errors
    /// [`ClientError`] (code -40006 at the deployment gate, quoting the p-value).
    pub fn deploy_checkpoint(
        &self,
        agent_id: &str,
        checkpoint_id: &str,
        environment: &str,
        force: bool,
    ) -> Result<Deployment> {
        self.typed(
            methods::DEPLOY,
            json!({"agent_id": agent_id, "checkpoint_id": checkpoint_id,
                   "environment": environment, "force": force}),
        )
    }

    /// `training.rollback_deployment`.
    ///
    /// # Errors
    /// [`ClientError`] (code -40007 when there is nothing to roll back to).
    pub fn rollback_deployment(&self, agent_id: &str, environment: &str) -> Result<RollbackResult> {
        self.typed(methods::ROLLBACK, json!({"agent_id": agent_id, "environment": environment}))
    }

    /// `training.list_deployments`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn list_deployments(
        &self,
        agent_id: &str,
        environment: Option<&str>,
    ) -> Result<DeploymentList> {
        let mut params = json!({"agent_id": agent_id});
        if let Some(e) = environment {
            params["environment"] = json!(e);
        }
        self.typed(methods::LIST_DEPLOYMENTS, params)
    }

    /// `training.configure_ab_test`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn configure_ab_test(&self, params: &ConfigureAbParams) -> Result<AbTest> {
        let value =
            serde_json::to_value(params).map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.typed(methods::CONFIGURE_AB, value)
    }

    /// `training.get_ab_test`.
    ///
    /// # Errors
    /// [`ClientError`] (code -40007 when there is none).
    pub fn get_ab_test(&self, agent_id: &str, environment: &str) -> Result<AbTest> {
        self.typed(methods::GET_AB, json!({"agent_id": agent_id, "environment": environment}))
    }

    /// `training.stop_ab_test`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn stop_ab_test(&self, agent_id: &str, environment: &str, promote: bool) -> Result<AbTest> {
        self.typed(
            methods::STOP_AB,
            json!({"agent_id": agent_id, "environment": environment, "promote": promote}),
        )
    }

    /// `agents.invoke`.
    ///
    /// # Errors
    /// [`ClientError`] (code -40007 when nothing is deployed).
    pub fn invoke(&self, params: &InvokeParams) -> Result<InvokeResult> {
        let value =
            serde_json::to_value(params).map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.typed(methods::INVOKE, value)
    }

    /// `agents.feedback`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn feedback(
        &self,
        invocation_id: &str,
        success: Option<bool>,
        reward: Option<f64>,
    ) -> Result<FeedbackResult> {
        let mut params = json!({"invocation_id": invocation_id});
        if let Some(s) = success {
            params["success"] = json!(s);
        }
        if let Some(r) = reward {
            params["reward"] = json!(r);
        }
        self.typed(methods::FEEDBACK, params)
    }

    /// `agents.export_invocations`: one page of an agent's invocations, oldest first.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn export_invocations(&self, params: &ExportInvocationsParams) -> Result<InvocationExport> {
        let value =
            serde_json::to_value(params).map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.typed(methods::EXPORT_INVOCATIONS, value)
    }
}
