//! Steps the queue scenarios share (`service.rs`, `artifacts.rs`): the tiny agent, its tasks and
//! config files, `agentcore jobs start`, and waiting for a job to end.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{ok, run};

/// The JSON a successful command printed.
pub fn json(out: &Output) -> Value {
    serde_json::from_str(&ok(out))
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Registers `tiny`: the built-in model at its smallest, a short warm start.
pub fn register_tiny(client: &agentcore_client::TrainingClient) {
    client
        .call(
            "agents.register",
            json!({"agent_id": "tiny", "model": {"built_in": {"steps": 6, "n_demos": 30, "batch_size": 4,
                "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "max_seq_len": 256}}}}),
        )
        .expect("register");
}

/// 120 seed tasks and a small GRPO config of `n_iterations` and `seed` (checkpoints every 2)
/// written under `dir`: (tasks file, config file).
pub fn tiny_job_files(dir: &Path, n_iterations: u32, seed: u64) -> (PathBuf, PathBuf) {
    let tasks = run(&["tasks", "generate", "--n", "120", "--seed", "3", "--difficulty", "1"], &[]);
    let tasks_file = dir.join("tasks.jsonl");
    std::fs::write(&tasks_file, &tasks.stdout).expect("write");
    let config_file = dir.join(format!("grpo-{seed}.json"));
    let config = json!({"n_iterations": n_iterations, "batch_size": 3, "n_trajectories_per_query": 3,
        "learning_rate": 0.002, "max_completion_length": 24, "max_steps_per_trajectory": 2,
        "eval_interval": 2, "checkpoint_interval": 2, "seed": seed});
    std::fs::write(&config_file, config.to_string()).expect("write");
    (tasks_file, config_file)
}

/// `agentcore jobs start` of `tiny` on the files of [`tiny_job_files`]: its answer.
pub fn start_job(env: &[(&str, &str)], tasks: &Path, config: &Path) -> Value {
    json(&run(
        &[
            "jobs",
            "start",
            "--agent-id",
            "tiny",
            "--data",
            tasks.to_str().expect("utf-8"),
            "--config",
            config.to_str().expect("utf-8"),
        ],
        env,
    ))
}

/// Polls `agentcore jobs status` until the job has ended (at most 240 s): its last status.
pub fn wait_finished(env: &[(&str, &str)], job: &str, who: &str) -> Value {
    let t = Instant::now();
    loop {
        let s = json(&run(&["jobs", "status", job], env));
        if matches!(s["status"].as_str(), Some("completed" | "failed" | "cancelled")) {
            return s;
        }
        assert!(t.elapsed() < Duration::from_secs(240), "{who} did not finish: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
