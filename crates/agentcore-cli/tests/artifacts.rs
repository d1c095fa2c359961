//! Issue 18: machines that share only the job store and an object store. The server, two
//! workers and `agentcore eval` each have their own data directory ("machine"); checkpoints and
//! job settings travel through a real S3-compatible server on loopback (moto, PyPI, via
//! `scripts/setup_s3.sh`). The queue is PostgreSQL when `AGENTCORE_TEST_POSTGRES_URL` names a
//! server (CI), else a SQLite file outside every data directory.
//!
//! Skips, saying so, when the S3 server is not installed, unless `AGENTCORE_REQUIRE_S3` is set.

#[expect(dead_code, reason = "this test starts its server with `serve_with_env` only")]
mod common;
#[path = "common/queue.rs"]
mod queue;

use std::path::Path;
use std::process::{Command, Stdio};

use agentcore_artifacts::testing::S3Server;
use common::{BIN, Killed, run};
use serde_json::{Value, json};

use queue::json as json_of;

fn checkpoint_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|it| {
            it.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("ckpt-"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn a_worker_sharing_only_the_store_and_object_storage_runs_and_hands_over_a_job() {
    let Some(s3) = S3Server::start("agentcore").unwrap_or_else(|e| panic!("{e}")) else {
        return;
    };
    let artifacts_url = s3.url("cluster");
    let s3_env = s3.env();
    let machines = tempfile::tempdir().expect("tempdir");
    let dir = |name: &str| {
        let d = machines.path().join(name);
        std::fs::create_dir_all(&d).expect("mkdir");
        d.to_str().expect("utf-8").to_owned()
    };
    let (server_dir, worker1_dir, worker2_dir, eval_dir) =
        (dir("server"), dir("worker-1"), dir("worker-2"), dir("laptop"));
    let db = match agentcore_store::testing::postgres_server() {
        Some(server) => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(agentcore_store::testing::fresh_postgres_schema(&server))
                .expect("fresh schema")
        }
        None => format!("{}/agentcore.db", dir("database")),
    };

    let (_server, url, token, _banner) = common::serve_with_env(
        &[
            "--workers",
            "0",
            "--data-dir",
            &server_dir,
            "--database-url",
            &db,
            "--artifacts",
            &artifacts_url,
        ],
        &s3_env,
    );
    let env = [("AGENTCORE_URL", url.as_str()), ("AGENTCORE_API_KEY", token.as_str())];
    let client = agentcore_client::TrainingClient::new(&url, Some(token.clone()));
    queue::register_tiny(&client);
    let (tasks_file, config_file) = queue::tiny_job_files(machines.path(), 4, 5);
    let started = queue::start_job(&env, &tasks_file, &config_file);
    let job = started["job_id"].as_str().expect("job id").to_string();

    let worker = |data: &str, crash: Option<&str>| {
        let mut c = Command::new(BIN);
        c.args(["worker", "--database-url", &db, "--data-dir", data, "--lease-seconds", "2"])
            .args(["--artifacts", &artifacts_url])
            .envs(s3_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(point) = crash {
            c.env("AGENTCORE_CRASH_AT", point);
        }
        c.spawn().expect("worker")
    };
    // Machine 1 runs the job, checkpoints iteration 2 (to the object store) and dies (as kill -9)
    // in iteration 3.
    let exit = worker(&worker1_dir, Some("rollout:3")).wait().expect("worker 1 ends");
    assert!(!exit.success(), "worker 1 was to die in iteration 3: {exit:?}");
    let store = s3.artifacts("cluster").expect("open the store");
    let stored = store.list_dirs(&format!("runs/{job}/checkpoints")).expect("list");
    assert_eq!(stored, vec!["ckpt-00002".to_owned()], "the object store after worker 1");

    // Machine 2 has never seen the job: it continues from the stored checkpoint and finishes.
    let _w2 = Killed(worker(&worker2_dir, None));
    let done = queue::wait_finished(&env, &job, "worker 2");
    assert_eq!(
        (done["status"].as_str(), done["current_iteration"].as_u64()),
        (Some("completed"), Some(4)),
        "{done}"
    );
    // Continued from the stored checkpoint, not restarted: the second start resumed from 2.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let events = rt.block_on(async {
        let store = agentcore_store::Store::connect(&db).await.expect("store");
        store.events(&job).await.expect("events")
    });
    let starts: Vec<Value> = events
        .iter()
        .filter(|e| e.kind == agentcore_store::EventKind::JobStarted)
        .map(|e| e.payload["resumed_from"].clone())
        .collect();
    assert_eq!(starts, vec![Value::Null, json!(2)], "machine 1 started, machine 2 resumed at 2");
    // Iterations 1 and 2 recorded once (machine 1), 3 and 4 once (machine 2).
    let all = json_of(&run(&["jobs", "export", &job, "--limit", "1000"], &env));
    assert_eq!(all["returned_count"].as_u64(), Some(36), "4 iterations x 3 x 3 once each");
    let run2 = Path::new(&worker2_dir).join("runs").join(&job);
    let on_machine_2 = checkpoint_names(&run2.join("checkpoints"));
    assert!(on_machine_2.contains(&"ckpt-00002".to_owned()), "downloaded: {on_machine_2:?}");
    let stored = store.list_dirs(&format!("runs/{job}/checkpoints")).expect("list");
    assert_eq!(stored, on_machine_2, "the store holds what the job kept");
    assert!(store.get_file(machines.path(), &format!("runs/{job}/report.md")).expect("report"));
    // The server's machine ran nothing and holds no checkpoint.
    assert!(!Path::new(&server_dir).join("runs").join(&job).exists());

    // A third machine evaluates the job's best checkpoint from the object store alone.
    let best = done["best_checkpoint_id"].as_str().expect("best checkpoint").to_owned();
    let eval = Command::new(BIN)
        .args(["eval", "--job", &job, "--data-dir", &eval_dir, "--json"])
        .args(["--artifacts", &artifacts_url])
        .envs(s3_env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("eval");
    let report = json_of(&eval);
    assert_eq!(report["checkpoint_id"], best.as_str(), "{report}");
    assert!(report["metrics"]["success_rate"].is_number(), "{report}");
    let run3 = Path::new(&eval_dir).join("runs").join(&job);
    assert_eq!(checkpoint_names(&run3.join("checkpoints")), stored);
    let last = "checkpoints/ckpt-00004/model.safetensors";
    assert_eq!(
        std::fs::read(run3.join(last)).expect("downloaded weights"),
        std::fs::read(run2.join(last)).expect("trained weights"),
        "the weights evaluated are the weights trained"
    );
    // Without the store, the same machine-less evaluation is refused by name.
    let out = run(&["eval", "--job", &job, "--data-dir", &dir("empty")], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&job));

    // The server deploys and serves the checkpoint it never had on its disk.
    client.deploy_checkpoint("tiny", &best, "staging", false).expect("deploy");
    let answer = client
        .call(
            "agents.invoke",
            json!({"agent_id": "tiny", "environment": "staging",
                   "query": "Find the maximum value in [4, 19, 18, 16]"}),
        )
        .expect("invoke");
    assert_eq!(answer["checkpoint_id"], best.as_str(), "{answer}");
    assert!(Path::new(&server_dir).join("runs").join(&job).join(JOB).is_file());

    // The warm-start cache machine 1 built went to the store: a job of the same agent on a
    // fourth fresh machine skips its warm start.
    assert_eq!(store.list_dirs("warmstart").expect("list").len(), 1, "one cache");
    let (_, config_file) = queue::tiny_job_files(machines.path(), 4, 6);
    let second = queue::start_job(&env, &tasks_file, &config_file);
    let job2 = second["job_id"].as_str().expect("job id").to_string();
    let _w3 = Killed(worker(&dir("worker-3"), None));
    queue::wait_finished(&env, &job2, "worker 3");
    let summaries = rt.block_on(async {
        let store = agentcore_store::Store::connect(&db).await.expect("store");
        let a = store.job(&job).await.expect("job").expect("row").summary;
        let b = store.job(&job2).await.expect("job").expect("row").summary;
        (a, b)
    });
    let cached = |s: &Option<Value>| s.as_ref().map(|s| s["warm_start_cached"].clone());
    assert_eq!(cached(&summaries.0), Some(json!(false)), "machine 1 warmed up");
    assert_eq!(cached(&summaries.1), Some(json!(true)), "machine 4 took the cache from the store");

    // A bad store URL is the caller's mistake, named.
    let out = run(&["eval", "--job", &job, "--artifacts", "ftp://nowhere/x"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--artifacts"));
}

const JOB: &str = "job.json";

/// `agentcore bench chaos` at a small scale (the full run's figures are in BENCHMARKS.md):
/// SIGKILLs of holders, a stale holder (SIGSTOP past its lease, then SIGCONT) and a SIGTERM,
/// on PostgreSQL and the S3 server; every job completes with nothing lost or doubled, the
/// stale holder's writes are refused, and the weights equal an uninterrupted run's.
#[test]
fn the_chaos_benchmark_passes_at_a_small_scale() {
    let Some(postgres) = agentcore_store::testing::postgres_server() else { return };
    let Some(s3) = S3Server::start("probe").unwrap_or_else(|e| panic!("{e}")) else { return };
    // (The benchmark starts its own S3 server; this one only proved the install is there.)
    drop(s3);
    let out = Command::new(BIN)
        .args(["bench", "chaos", "--database-url", &postgres, "--jobs", "2", "--workers", "2"])
        .args(["--kills", "3", "--iterations", "300", "--seed", "7", "--json"])
        .output()
        .expect("bench chaos");
    let report = json_of(&out);
    assert_eq!(report["kills"], 3, "{report}");
    assert_eq!(report["lost_iterations"], 0, "{report}");
    assert_eq!(report["duplicate_rows"], 0, "{report}");
    assert_eq!(report["weights_identical"], 2, "{report}");
    assert!(report["stale_holder_writes_refused"].as_u64().unwrap() >= 1, "{report}");
    assert!(report["takeovers"].as_u64().unwrap() >= 3, "{report}");
    assert!(report["sigterm_exit_s"].as_f64().unwrap() < 60.0, "{report}");
}

/// The CLI on one machine with an artifact store: `agentcore train --artifacts` puts its
/// checkpoints and report in the bucket, `agentcore eval` on an empty data directory reads
/// them back, and `agentcore export --out s3://…` writes the trajectories (JSONL, and a
/// Hugging Face dataset folder) there.
#[test]
fn the_cli_trains_evaluates_and_exports_through_object_storage() {
    let Some(s3) = S3Server::start("laptop").unwrap_or_else(|e| panic!("{e}")) else {
        return;
    };
    let url = s3.url("runs-of-ann");
    let env = s3.env();
    let dir = tempfile::tempdir().expect("tempdir");
    let job_file = dir.path().join("job.json");
    std::fs::write(
        &job_file,
        r#"{"grpo": {"n_iterations": 2, "batch_size": 3, "n_trajectories_per_query": 3,
             "learning_rate": 0.002, "max_completion_length": 24, "max_steps_per_trajectory": 2,
             "eval_interval": 2, "checkpoint_interval": 2, "seed": 5},
            "warm_start": {"steps": 6, "n_demos": 30, "batch_size": 4,
             "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "max_seq_len": 256}},
            "n_tasks": 48, "eval_fraction": 0.25}"#,
    )
    .expect("write");
    let home = dir.path().join("home");
    let home = home.to_str().expect("utf-8");
    let cli = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .expect("agentcore")
    };
    let out = cli(&[
        "train",
        "--json",
        "--config",
        job_file.to_str().expect("utf-8"),
        "--data-dir",
        home,
        "--artifacts",
        &url,
    ]);
    let text = common::ok(&out);
    let done: Value =
        serde_json::from_str(text.lines().last().expect("summary")).expect("summary line");
    let job = done["job_id"].as_str().expect("job id").to_owned();
    let store = s3.artifacts("runs-of-ann").expect("open");
    assert_eq!(
        store.list_dirs(&format!("runs/{job}/checkpoints")).expect("list"),
        vec!["ckpt-00002".to_owned()]
    );
    let fetched = tempfile::tempdir().expect("tempdir");
    for name in ["report.md", "curves.png", "job.json"] {
        assert!(
            store.get_file(fetched.path(), &format!("runs/{job}/{name}")).expect("get"),
            "{name}"
        );
    }
    // Another data directory evaluates it from the bucket alone.
    let elsewhere = dir.path().join("elsewhere");
    let report = json_of(&cli(&[
        "eval",
        "--job",
        &job,
        "--json",
        "--data-dir",
        elsewhere.to_str().expect("utf-8"),
        "--artifacts",
        &url,
    ]));
    assert_eq!(report["iteration"], 2, "{report}");

    // Exports to the bucket.
    let jsonl = s3.url("exports/first.jsonl");
    let out = cli(&["export", "--job", &job, "--data-dir", home, "--out", &jsonl]);
    common::ok(&out);
    let exports = s3.artifacts("exports").expect("open");
    assert!(exports.get_file(fetched.path(), "first.jsonl").expect("get"));
    let lines = std::fs::read_to_string(fetched.path().join("first.jsonl")).expect("read");
    assert_eq!(lines.lines().count(), 18, "2 iterations x 3 queries x 3");
    let hf = s3.url("exports/dataset");
    let out = cli(&["export", "--job", &job, "--data-dir", home, "--format", "hf", "--out", &hf]);
    common::ok(&out);
    for name in ["data/train.jsonl", "README.md"] {
        assert!(
            exports.get_file(fetched.path(), &format!("dataset/{name}")).expect("get"),
            "{name}"
        );
    }
    let card = std::fs::read_to_string(fetched.path().join("dataset/README.md")).expect("card");
    assert!(card.contains(&hf), "{card}");
    // A bucket without a key is refused by name.
    let out = cli(&["export", "--job", &job, "--data-dir", home, "--out", "s3://laptop"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a key"));
}
