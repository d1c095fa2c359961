//! Load benchmark of the service (issue 6): 200 concurrent clients on loopback poll
//! `training.get_status` of a running job; prints p50 / p99 latency and the error count.
//!
//! `cargo run --release -p agentcore-server --example load [-- CLIENTS SECONDS]`
//!
//! It starts its own server (SQLite in a temporary directory, one in-process worker) and a real
//! tiny GRPO job that keeps running while the clients poll. Each client has its own token (the
//! contract's limit is 100 get_status calls per caller per minute) and polls once a second.

use std::io::Write;
use std::time::{Duration, Instant};

use agentcore_client::TrainingClient;
use agentcore_server::auth::{ALL_PERMISSIONS, Auth, AuthConfig, AuthKey};
use agentcore_server::{Server, ServerConfig};
use serde_json::json;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let clients: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(200);
    let seconds: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(30);
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = AuthConfig {
        key: AuthKey::Hs256(b"load-benchmark-secret-0123456789".to_vec()),
        issuer: None,
        audience: None,
    };
    let issuer = Auth::new(&auth).expect("auth");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let mut config = ServerConfig::new(dir.path().to_path_buf(), auth);
    config.workers = 1;
    let server = rt
        .block_on(Server::start(config, None, "127.0.0.1:0".parse().expect("addr")))
        .expect("server");
    let url = format!("http://{}", server.addr);
    let admin = TrainingClient::new(&url, issuer.issue("admin", "bench", &ALL_PERMISSIONS, 3600));
    admin
        .call(
            "agents.register",
            json!({"agent_id": "tiny", "model": {"built_in": {"steps": 20, "n_demos": 60, "batch_size": 4,
                "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "max_seq_len": 256}}}}),
        )
        .expect("register");
    let tasks: Vec<serde_json::Value> = agentcore_tasks::seed::generate(120, 1, Some(1))
        .expect("tasks")
        .into_iter()
        .map(|t| serde_json::to_value(t).expect("json"))
        .collect();
    let job = admin
        .start_training("tiny", json!({"n_iterations": 10000, "batch_size": 4, "n_trajectories_per_query": 4, "max_completion_length": 24, "max_steps_per_trajectory": 2, "eval_interval": 1000}), &tasks, None)
        .expect("start");
    while admin.get_status(&job.job_id).expect("status").status != "running" {
        std::thread::sleep(Duration::from_millis(100));
    }
    let start = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|k| {
            let token = issuer.issue(&format!("client-{k}"), "bench", &["training:view"], 3600);
            let (url, job) = (url.clone(), job.job_id.clone());
            std::thread::spawn(move || {
                let c = TrainingClient::new(&url, token);
                let mut lat = Vec::new();
                let mut errors = 0usize;
                // Spread the clients over the first second.
                std::thread::sleep(Duration::from_millis(
                    (k as u64 * 1000) / clients.max(1) as u64,
                ));
                let end = Instant::now() + Duration::from_secs(seconds);
                while Instant::now() < end {
                    let t = Instant::now();
                    match c.get_status(&job) {
                        Ok(s) if s.status == "running" => {
                            lat.push(t.elapsed().as_secs_f64() * 1000.0)
                        }
                        _ => errors += 1,
                    }
                    std::thread::sleep(Duration::from_secs(1).saturating_sub(t.elapsed()));
                }
                (lat, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for h in handles {
        let (l, e) = h.join().expect("client");
        all.extend(l);
        errors += e;
    }
    let wall = start.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    let q = |p: f64| all[((all.len() as f64 - 1.0) * p).round() as usize];
    let iterations = admin.get_status(&job.job_id).expect("status").current_iteration;
    let _ = admin.cancel(&job.job_id, Some("benchmark over"));
    rt.block_on(server.shutdown());
    let report = json!({
        "clients": clients, "seconds": seconds, "requests": all.len() + errors, "errors": errors,
        "p50_ms": q(0.5), "p90_ms": q(0.9), "p99_ms": q(0.99), "max_ms": q(1.0),
        "requests_per_s": all.len() as f64 / wall, "job_iterations_during_run": iterations,
    });
    let _ = writeln!(std::io::stdout(), "{report}");
}
