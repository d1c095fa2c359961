//! A real server on loopback with a SQLite file in a temporary data directory.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use agentcore_client::TrainingClient;
use agentcore_server::auth::{ALL_PERMISSIONS, Auth, AuthConfig, AuthKey};
use agentcore_server::{Server, ServerConfig};
use serde_json::{Value, json};

pub const SECRET: &str = "test-secret-0123456789abcdef";
pub const AUDIENCE: &str = "agentcore-tests";

pub fn auth_config() -> AuthConfig {
    AuthConfig {
        key: AuthKey::Hs256(SECRET.as_bytes().to_vec()),
        issuer: None,
        audience: Some(AUDIENCE.into()),
    }
}

pub fn token(subject: &str, org: &str, permissions: &[&str]) -> String {
    Auth::new(&auth_config()).unwrap().issue(subject, org, permissions, 3600).unwrap()
}

pub fn admin(org: &str) -> String {
    token(&format!("{org}-admin"), org, &ALL_PERMISSIONS)
}

pub struct TestServer {
    pub rt: tokio::runtime::Runtime,
    pub server: Option<Server>,
    pub _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    pub fn start(workers: usize) -> Self {
        Self::start_with(workers, |_| {})
    }

    pub fn start_with(workers: usize, tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().to_path_buf();
        let mut s = Self::on(data_dir, workers, tweak);
        s._dir = Some(dir);
        s
    }

    pub fn on(data_dir: PathBuf, workers: usize, tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        Self::on_database(data_dir, None, workers, tweak)
    }

    /// A server on `database` (a store URL; `None`: the data directory's SQLite file).
    pub fn on_database(
        data_dir: PathBuf,
        database: Option<String>,
        workers: usize,
        tweak: impl FnOnce(&mut ServerConfig),
    ) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut config = ServerConfig::new(data_dir, auth_config());
        config.workers = workers;
        config.worker.lease = Duration::from_secs(3);
        config.worker.poll = Duration::from_millis(100);
        config.webhooks.allow_private = true;
        config.webhooks.first_backoff = Duration::from_millis(100);
        config.webhooks.progress_every = 2;
        tweak(&mut config);
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let server = rt.block_on(Server::start(config, database, addr)).unwrap();
        Self { rt, server: Some(server), _dir: None }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.server.as_ref().unwrap().addr)
    }

    pub fn client(&self, token: &str) -> TrainingClient {
        TrainingClient::new(&self.url(), Some(token.to_owned()))
    }

    pub fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            self.rt.block_on(s.shutdown());
        }
    }

    /// Raw POST of a body to the RPC endpoint: (status, headers, body).
    pub fn post(&self, token: Option<&str>, body: &str) -> (u16, Vec<(String, String)>, String) {
        let agent: ureq::Agent =
            ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut req = agent
            .post(format!("{}/api/v1/jsonrpc", self.url()))
            .header("Content-Type", "application/json");
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let mut resp = req.send(body).unwrap();
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        (status, headers, body)
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        let agent: ureq::Agent =
            ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut resp = agent.get(format!("{}{path}", self.url())).call().unwrap();
        (resp.status().as_u16(), resp.body_mut().read_to_string().unwrap_or_default())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A tiny built-in agent: a one-layer model warm-started for a few steps.
pub fn tiny_agent(client: &TrainingClient, id: &str) {
    client
        .call(
            "agents.register",
            json!({
                "agent_id": id,
                "agent_type": "seed",
                "model": {"built_in": {
                    "steps": 6, "n_demos": 30, "batch_size": 4,
                    "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "max_seq_len": 256}
                }}
            }),
        )
        .unwrap();
}

pub fn small_config(n_iterations: u32) -> Value {
    json!({
        "n_iterations": n_iterations, "batch_size": 3, "n_trajectories_per_query": 3,
        "learning_rate": 0.002, "max_completion_length": 24, "max_steps_per_trajectory": 2,
        "eval_interval": 2, "checkpoint_interval": 2, "seed": 5,
        "max_budget_usd": "5.00",
        "reward_shaping": {"enabled": true}
    })
}

pub fn tasks(n: usize, seed: u64) -> Vec<Value> {
    agentcore_tasks::seed::generate(n, seed, Some(1))
        .unwrap()
        .into_iter()
        .map(|t| serde_json::to_value(t).unwrap())
        .collect()
}

pub fn wait_for(
    client: &TrainingClient,
    job: &str,
    done: impl Fn(&agentcore_client::StatusResult) -> bool,
    limit: Duration,
) -> agentcore_client::StatusResult {
    let start = Instant::now();
    loop {
        let s = client.get_status(job).unwrap();
        if done(&s) {
            return s;
        }
        assert!(start.elapsed() < limit, "timed out waiting; last status {s:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn finished(s: &agentcore_client::StatusResult) -> bool {
    s.status.is_final()
}
