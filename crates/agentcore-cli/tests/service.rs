//! `agentcore serve`, `agentcore worker` and `agentcore jobs ... --url` as processes: a job
//! queued through the CLI runs on a separate worker process; that worker is killed (SIGKILL)
//! mid-job and a second worker process takes the job over from its checkpoint and finishes it;
//! with the queue in a SQLite file, and in PostgreSQL.

mod common;
#[path = "common/queue.rs"]
mod queue;

use std::process::{Command, Stdio};

use common::{BIN, Killed, run};

use queue::json;

/// How the first worker ends.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stop {
    /// Aborts (as `kill -9`) in the rollouts of iteration 5: its lease runs out.
    Kill,
    /// Gets SIGTERM (as from Kubernetes) in the rollouts of iteration 5: it ends the iteration,
    /// checkpoints, gives the job back and exits cleanly.
    Term,
}

#[test]
fn a_job_survives_its_worker_process_being_killed() {
    worker_killed_and_replaced(None, Stop::Kill);
}

/// SIGTERM mid-iteration: the worker exits cleanly and at once (well within a pod's grace
/// period), the next worker continues the job without waiting for the lease, and no iteration
/// is skipped or recorded twice.
#[test]
fn a_worker_stopped_by_sigterm_hands_its_job_over() {
    worker_killed_and_replaced(None, Stop::Term);
}

/// The same with the queue in PostgreSQL (`AGENTCORE_TEST_POSTGRES_URL`; CI starts a server):
/// server and workers share nothing but the database URL and the data directory.
#[test]
fn a_job_survives_its_worker_process_being_killed_on_postgres() {
    let Some(server) = agentcore_store::testing::postgres_server() else { return };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let url = runtime.block_on(agentcore_store::testing::fresh_postgres_schema(&server));
    worker_killed_and_replaced(Some(url.expect("fresh schema")), Stop::Kill);
}

/// Serve (no in-process workers) on `database` (default: the data directory's SQLite file),
/// queue a job, kill -9 its worker process mid-job, and let a second worker finish it.
fn worker_killed_and_replaced(database: Option<String>, stop: Stop) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().expect("utf-8").to_string();
    let db = database.clone().unwrap_or_else(|| format!("{data}/agentcore.db"));
    // The server without workers; its address and development token come from its stderr.
    let mut serve = vec!["--workers", "0", "--data-dir", &data];
    if let Some(url) = &database {
        serve.extend(["--database-url", url]);
    }
    let (_server, url, token, banner) = common::serve(&serve);
    if database.is_some() {
        assert!(banner.contains("(store postgres://"), "{banner}");
    }
    let env = [("AGENTCORE_URL", url.as_str()), ("AGENTCORE_API_KEY", token.as_str())];

    // A tiny agent (registered through the SDK's method), tasks, a config; queue the job.
    let client = agentcore_client::TrainingClient::new(&url, Some(token.clone()));
    queue::register_tiny(&client);
    let (tasks_file, config_file) = queue::tiny_job_files(dir.path(), 8, 5);
    let started = queue::start_job(&env, &tasks_file, &config_file);
    let job = started["job_id"].as_str().expect("job id").to_string();
    assert_eq!(started["status"], "queued");

    // Worker 1 takes it and dies as a kill -9 would (abort: no destructors, no lease released)
    // in the rollouts of iteration 5, after the checkpoint of 4: deterministic, where killing
    // it from here once it had passed iteration 3 raced with the job finishing.
    let worker = |lease: &str, fault: Option<(&str, &str)>| {
        let mut c = Command::new(BIN);
        c.args(["worker", "--database-url", &db, "--data-dir", &data, "--lease-seconds", lease])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((hook, point)) = fault {
            c.env(hook, point);
        }
        c.spawn().expect("worker")
    };
    let status = |job: &str| json(&run(&["jobs", "status", job], &env));
    // With SIGTERM the lease is long (600 s): the takeover below must not wait for it.
    let (lease, hook) = match stop {
        Stop::Kill => ("2", "AGENTCORE_CRASH_AT"),
        Stop::Term => ("600", "AGENTCORE_SIGTERM_AT"),
    };
    let mut w1 = worker(lease, Some((hook, "rollout:5")));
    let exit = w1.wait().expect("worker 1 ends");
    let killed_at = status(&job);
    assert_eq!(killed_at["status"], "running", "{killed_at}");
    match stop {
        Stop::Kill => assert!(!exit.success(), "worker 1 was to die at iteration 5: {exit:?}"),
        Stop::Term => {
            assert!(exit.success(), "SIGTERM: a clean exit, got {exit:?}");
            // It finished the iteration it was in and stopped there, with a checkpoint.
            assert_eq!(killed_at["current_iteration"], 5, "{killed_at}");
        }
    }

    // Worker 2 takes over (after the lease runs out, or at once when it was given back) and
    // finishes the job.
    let _w2 = Killed(worker(lease, None));
    let done = queue::wait_finished(&env, &job, "worker 2");
    assert_eq!(
        (done["status"].as_str(), done["current_iteration"].as_u64()),
        (Some("completed"), Some(8)),
        "{done}"
    );
    let list = json(&run(&["jobs", "list", "--status", "completed"], &env));
    assert_eq!(list["total_count"], 1);
    let export = json(&run(&["jobs", "export", &job, "--limit", "5"], &env));
    assert_eq!(
        (export["returned_count"].as_u64(), export["has_more"].as_bool()),
        (Some(5), Some(true))
    );
    // Every iteration's trajectories once: 8 iterations x 3 queries x 3 trajectories.
    let all = json(&run(&["jobs", "export", &job, "--limit", "1000"], &env));
    assert_eq!(all["returned_count"].as_u64(), Some(72), "{}", all["returned_count"]);
    // Finished: cancelling is refused with the contract's code, as an input error (exit 2).
    let out = run(&["jobs", "cancel", &job], &env);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("-40003"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issue 14, finding 3: the server did not stop on a signal within 30 s. SIGTERM (what
/// Kubernetes sends) drains and exits cleanly.
#[test]
fn sigterm_stops_the_server_cleanly() {
    let data = tempfile::tempdir().expect("tempdir");
    // Listening (the banner is printed once it is).
    let (mut server, _url, _token, _) =
        common::serve(&["--data-dir", data.path().to_str().expect("utf-8")]);
    let pid = server.0.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
    assert!(sent.success());
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = server.0.try_wait().expect("wait") {
            break status;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "still running after 30 s");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}
