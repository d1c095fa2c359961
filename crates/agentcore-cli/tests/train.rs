//! `agentcore train` end to end at a small scale (a one-layer model, a few tasks, four
//! iterations): the store, checkpoints, report and curves, determinism, resume after a crash
//! at three points, Ctrl-C, eval and export. The real-scale run is a benchmark (BENCHMARKS.md).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const JOB: &str = r#"{
  "grpo": {
    "n_iterations": 4, "batch_size": 3, "n_trajectories_per_query": 3,
    "learning_rate": 0.002, "max_completion_length": 24, "max_steps_per_trajectory": 2,
    "eval_interval": 2, "checkpoint_interval": 2, "seed": 5,
    "reward_shaping": {"enabled": true}
  },
  "warm_start": {
    "steps": 6, "n_demos": 30, "batch_size": 4,
    "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "max_seq_len": 256}
  },
  "n_tasks": 48,
  "eval_fraction": 0.25
}"#;

fn agentcore(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agentcore"));
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

struct Setup {
    _dir: tempfile::TempDir,
    data: PathBuf,
    job_file: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let job_file = dir.path().join("job.json");
    std::fs::write(&job_file, JOB).expect("write job");
    let data = dir.path().join("home");
    Setup { data, job_file, _dir: dir }
}

/// Runs `train --json` and returns the JSON objects it printed.
fn train(s: &Setup, extra: &[&str], env: &[(&str, &str)]) -> (Output, Vec<Value>) {
    let mut args = vec!["train", "--json", "--data-dir", s.data.to_str().expect("utf-8")];
    args.extend_from_slice(extra);
    let out = agentcore(&args, env);
    let events = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (out, events)
}

fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

fn job_id(events: &[Value]) -> String {
    of_kind(events, "started")[0]["job_id"].as_str().expect("job id").to_string()
}

fn final_weights(data: &Path, job: &str) -> Vec<u8> {
    weights_at(data, job, 4)
}

fn weights_at(data: &Path, job: &str, iteration: u32) -> Vec<u8> {
    let path = data
        .join("runs")
        .join(job)
        .join(format!("checkpoints/ckpt-{iteration:05}/model.safetensors"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The metrics that must repeat exactly (timing and cost do not).
fn learning_metrics(events: &[Value]) -> Vec<Value> {
    of_kind(events, "iteration")
        .iter()
        .map(|m| {
            let mut m = (*m).clone();
            let o = m.as_object_mut().expect("object");
            for k in ["rollout_seconds", "update_seconds", "rollout_tokens_per_s", "cost_usd"] {
                o.remove(k);
            }
            m
        })
        .collect()
}

fn config(s: &Setup) -> String {
    s.job_file.to_str().expect("utf-8").to_string()
}

#[test]
fn a_job_runs_records_and_repeats_exactly() {
    let s = setup();
    let (out, a) = train(&s, &["--config", &config(&s)], &[]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let done = of_kind(&a, "done")[0];
    for key in [
        "job_id",
        "baseline_success_rate",
        "final_success_rate",
        "p_value",
        "eval_queries",
        "wall_seconds",
        "cost_usd",
        "best_checkpoint_id",
    ] {
        assert!(done.get(key).is_some_and(|v| !v.is_null()), "summary lacks {key}: {done}");
    }
    assert_eq!(done["eval_queries"], 12);
    assert_eq!(done["stop_reason"], "completed");
    assert_eq!(of_kind(&a, "iteration").len(), 4);
    // Checkpoints at 2 and 4, validation at 2 and 4.
    let ckpts: Vec<u64> =
        of_kind(&a, "checkpoint").iter().map(|c| c["iteration"].as_u64().expect("it")).collect();
    assert_eq!(ckpts, vec![2, 4]);
    let job = job_id(&a);
    let run = s.data.join("runs").join(&job);
    let report = std::fs::read_to_string(run.join("report.md")).expect("report.md");
    assert!(report.contains("Success rate"), "{report}");
    assert!(report.contains("McNemar exact p"), "{report}");
    assert!(report.contains("## Cost"), "{report}");
    assert!(report.contains("## Best checkpoint"), "{report}");
    let png = std::fs::read(run.join("curves.png")).expect("curves.png");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let svg = std::fs::read_to_string(run.join("curves.svg")).expect("curves.svg");
    assert!(svg.contains("<svg") && svg.contains("success rate"), "svg has the titles");

    // The store has the job, four metric rows and every trajectory with its tokens.
    let jobs = agentcore(&["jobs", "--json", "--data-dir", s.data.to_str().expect("utf-8")], &[]);
    assert!(jobs.status.success(), "{}", text(&jobs.stderr));
    let jobs: Value = serde_json::from_slice(&jobs.stdout).expect("json");
    assert_eq!(jobs[0]["id"], job.as_str());
    assert_eq!(jobs[0]["status"], "completed");
    assert_eq!(jobs[0]["agent_id"], "seed-agent", "the built-in agent's registered id");
    assert_eq!(jobs[0]["iterations_completed"], 4);
    assert_eq!(jobs[0]["best_checkpoint_id"], done["best_checkpoint_id"]);
    let export =
        agentcore(&["export", "--job", &job, "--data-dir", s.data.to_str().expect("utf-8")], &[]);
    assert!(export.status.success(), "{}", text(&export.stderr));
    let lines: Vec<Value> =
        text(&export.stdout).lines().map(|l| serde_json::from_str(l).expect("jsonl")).collect();
    assert_eq!(lines.len(), 4 * 3 * 3, "iterations x queries x samples");
    for l in &lines {
        for key in [
            "trajectory_id",
            "query",
            "steps",
            "reward",
            "normalized_reward",
            "advantage",
            "success",
            "execution_time_ms",
            "iteration",
        ] {
            assert!(l.get(key).is_some(), "export lacks {key}: {l}");
        }
    }
    let successes = lines.iter().filter(|l| l["success"] == true).count();
    let only = agentcore(
        &["export", "--job", &job, "--success-only", "--data-dir", s.data.to_str().expect("utf-8")],
        &[],
    );
    assert_eq!(text(&only.stdout).lines().count(), successes);
    let paged = agentcore(
        &[
            "export",
            "--job",
            &job,
            "--limit",
            "5",
            "--offset",
            "2",
            "--data-dir",
            s.data.to_str().expect("utf-8"),
        ],
        &[],
    );
    let paged: Vec<Value> =
        text(&paged.stdout).lines().map(|l| serde_json::from_str(l).expect("jsonl")).collect();
    assert_eq!(paged.len(), 5);
    assert_eq!(paged[0]["trajectory_id"], lines[2]["trajectory_id"]);
    let hf = s.data.join("hf");
    let out = agentcore(
        &[
            "export",
            "--job",
            &job,
            "--format",
            "hf",
            "--out",
            hf.to_str().expect("utf-8"),
            "--data-dir",
            s.data.to_str().expect("utf-8"),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows = std::fs::read_to_string(hf.join("data/train.jsonl")).expect("hf rows");
    assert_eq!(rows.lines().count(), lines.len());
    assert!(std::fs::read_to_string(hf.join("README.md")).expect("card").contains("data_files"));

    // eval: the best checkpoint against the agent before training, paired.
    let ev = agentcore(
        &["eval", "--job", &job, "--json", "--data-dir", s.data.to_str().expect("utf-8")],
        &[],
    );
    assert!(ev.status.success(), "{}", text(&ev.stderr));
    let ev: Value = serde_json::from_slice(&ev.stdout).expect("json");
    assert_eq!(ev["queries_evaluated"], 12);
    assert_eq!(ev["checkpoint_id"], done["best_checkpoint_id"]);
    assert_eq!(ev["baseline_metrics"]["success_rate"], done["baseline_success_rate"]);
    for key in ["success_rate", "avg_reward", "avg_steps", "tool_accuracy"] {
        assert!(ev["metrics"][key].is_number(), "{key}: {ev}");
    }
    assert!(ev["baseline_comparison"]["mcnemar"]["p_value"].is_number());
    assert!(ev["statistically_significant"].is_boolean());
    let bad = agentcore(
        &[
            "eval",
            "--job",
            &job,
            "--checkpoint",
            "nope",
            "--data-dir",
            s.data.to_str().expect("utf-8"),
        ],
        &[],
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("no checkpoint `nope`"), "{}", text(&bad.stderr));

    // Same seed, same config: the same metrics and the same weights.
    let (out, b) = train(&s, &["--config", &config(&s)], &[]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(learning_metrics(&a), learning_metrics(&b));
    assert!(final_weights(&s.data, &job) != weights_at(&s.data, &job, 2), "training moved");
    assert!(final_weights(&s.data, &job) == final_weights(&s.data, &job_id(&b)));
}

#[test]
fn resume_after_a_crash_gives_the_weights_of_an_uninterrupted_run() {
    let s = setup();
    let (out, clean) = train(&s, &["--config", &config(&s)], &[]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let expected = final_weights(&s.data, &job_id(&clean));
    // The weights really move in iterations 3 and 4 (else equal weights would prove nothing):
    // the shaped reward spreads every group.
    assert!(expected != weights_at(&s.data, &job_id(&clean), 2), "iterations 3-4 changed nothing");
    for point in ["rollout:3", "update:3", "checkpoint:4"] {
        let (out, crashed) =
            train(&s, &["--config", &config(&s)], &[("AGENTCORE_CRASH_AT", point)]);
        assert!(!out.status.success(), "{point}: the crash hook did not fire");
        let job = job_id(&crashed);
        assert!(of_kind(&crashed, "done").is_empty(), "{point}");
        // Issue 14, finding 9: the killed job used to stay `running` in the store forever.
        let listed = agentcore(&["jobs", "--data-dir", s.data.to_str().expect("utf-8")], &[]);
        let listed = text(&listed.stdout);
        assert!(listed.contains(&format!("{job}  interrupted")), "{point}: {listed}");
        assert!(listed.contains(&format!("agentcore train --resume {job}")), "{point}: {listed}");
        let (out, resumed) = train(&s, &["--resume", &job], &[]);
        assert!(out.status.success(), "{point}: {}", text(&out.stderr));
        // Both crash points lie after the checkpoint of iteration 2.
        assert_eq!(of_kind(&resumed, "started")[0]["resumed_from"], 2, "{point}");
        let its: Vec<u64> = of_kind(&resumed, "iteration")
            .iter()
            .map(|m| m["iteration"].as_u64().expect("it"))
            .collect();
        assert_eq!(its, vec![3, 4], "{point}");
        assert!(final_weights(&s.data, &job) == expected, "{point}: weights differ");
        // No stray half-written checkpoint is left behind or taken for a complete one.
        let names: Vec<String> =
            std::fs::read_dir(s.data.join("runs").join(&job).join("checkpoints"))
                .expect("checkpoints")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("ckpt-"))
                .collect();
        assert!(names.contains(&"ckpt-00004".to_string()), "{point}: {names:?}");
        // The store holds each iteration once.
        let jobs =
            agentcore(&["jobs", "--json", "--data-dir", s.data.to_str().expect("utf-8")], &[]);
        let jobs: Value = serde_json::from_slice(&jobs.stdout).expect("json");
        let row =
            jobs.as_array().expect("array").iter().find(|j| j["id"] == job.as_str()).expect("row");
        assert_eq!(row["status"], "completed", "{point}");
        assert_eq!(row["iterations_completed"], 4, "{point}");
    }
}

#[test]
fn bad_job_files_fail_before_any_work_naming_the_field() {
    let s = setup();
    for (doc, needle) in [
        (r#"{"grpo": {"learning_rate": 5}}"#, "learning_rate"),
        (r#"{"grpo": {}, "n_taks": 3}"#, "unknown field `n_taks`"),
        (r#"{"grpo": {}, "eval_fraction": 1.5}"#, "eval_fraction must be in (0, 1), got 1.5"),
        (r#"{"batch_sise": 4}"#, "batch_sise"),
    ] {
        std::fs::write(&s.job_file, doc).expect("write");
        let (out, _) = train(&s, &["--config", &config(&s)], &[]);
        assert_eq!(out.status.code(), Some(2), "{doc}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains(needle), "{doc}: {}", text(&out.stderr));
        assert!(!s.data.join("runs").exists(), "{doc}: no job was started");
    }
    let out = agentcore(
        &["train", "--resume", "no-such-job", "--data-dir", s.data.to_str().expect("utf-8")],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no job `no-such-job`"), "{}", text(&out.stderr));
}

#[test]
fn a_budget_too_small_for_the_next_iteration_stops_with_a_checkpoint() {
    let s = setup();
    // $1000/hour and a budget of 0.02 cents: spent before the first iteration ends.
    let (out, events) = train(
        &s,
        &["--config", &config(&s), "--price-per-hour-usd", "1000", "--max-budget-usd", "0.0002"],
        &[],
    );
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let done = of_kind(&events, "done")[0];
    assert_eq!(done["stop_reason"], "budget_exhausted", "{done}");
    let iterations = done["iterations"].as_u64().expect("iterations");
    assert!(iterations < 4, "{done}");
    let spent: f64 = done["cost_usd"].as_str().expect("decimal string").parse().expect("number");
    assert!(!of_kind(&events, "checkpoint").is_empty(), "a checkpoint before stopping");
    // It stops before an iteration would cross the budget; the final evaluation may still
    // cost a little, which the summary reports honestly.
    assert!(spent > 0.0);
}

#[test]
fn ctrl_c_stops_after_the_iteration_with_a_checkpoint_and_resume_continues() {
    use std::io::BufRead;
    let s = setup();
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentcore"))
        .args(["train", "--json", "--n-iterations", "200", "--config", &config(&s)])
        .args(["--data-dir", s.data.to_str().expect("utf-8")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut events: Vec<Value> = Vec::new();
    let mut signalled = false;
    for line in std::io::BufReader::new(stdout).lines() {
        let event: Value = serde_json::from_str(&line.expect("line")).expect("json");
        if event["event"] == "iteration" && !signalled {
            let status = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status()
                .expect("kill");
            assert!(status.success());
            signalled = true;
        }
        events.push(event);
    }
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let done = of_kind(&events, "done")[0];
    assert_eq!(done["stop_reason"], "cancelled", "{done}");
    let stopped_at = done["iterations"].as_u64().expect("iterations");
    assert!(stopped_at < 200, "{done}");
    let last_checkpoint = of_kind(&events, "checkpoint").last().map(|c| c["iteration"].clone());
    assert_eq!(last_checkpoint, Some(Value::from(stopped_at)), "checkpoint of the last iteration");
    // Resuming a cancelled job goes on where it stopped.
    let job = job_id(&events);
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentcore"))
        .args(["train", "--json", "--resume", &job, "--data-dir", s.data.to_str().expect("utf-8")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut first = None;
    for line in std::io::BufReader::new(stdout).lines() {
        let event: Value = serde_json::from_str(&line.expect("line")).expect("json");
        if event["event"] == "iteration" {
            first = event["iteration"].as_u64();
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(first, Some(stopped_at + 1));
}

/// `--data FILE`: the job trains and evaluates on the file's tasks (a seeded share held out, or
/// `--eval-data`); a file that breaks the rules stops before any work, naming the count or index.
#[test]
fn trains_on_a_data_file_and_rejects_bad_ones() {
    let s = setup();
    let generate = |n: &str, seed: &str| {
        let out =
            agentcore(&["tasks", "generate", "--n", n, "--seed", seed, "--difficulty", "1"], &[]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let dir = s.data.parent().expect("parent").to_path_buf();
    let train_file = dir.join("train.jsonl");
    std::fs::write(&train_file, generate("120", "7")).expect("write");
    let eval_file = dir.join("eval.jsonl");
    std::fs::write(&eval_file, generate("30", "8")).expect("write");
    let path = |p: &Path| p.to_str().expect("utf-8").to_string();

    let (out, events) = train(&s, &["--config", &config(&s), "--data", &path(&train_file)], &[]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let done = of_kind(&events, "done")[0];
    // 120 tasks in 12 families of 10: ceil(25% of 10) = 3 held out of each.
    assert_eq!(done["eval_queries"], 36, "{done}");
    assert_eq!(done["train_queries"], 84, "{done}");

    let (out, events) = train(
        &s,
        &[
            "--config",
            &config(&s),
            "--data",
            &path(&train_file),
            "--eval-data",
            &path(&eval_file),
            "--n-iterations",
            "2",
        ],
        &[],
    );
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let done = of_kind(&events, "done")[0];
    assert_eq!(
        (done["eval_queries"].as_u64(), done["train_queries"].as_u64()),
        (Some(30), Some(120))
    );

    let small = dir.join("small.jsonl");
    std::fs::write(&small, generate("50", "9")).expect("write");
    let bad = dir.join("bad.jsonl");
    let mut lines: Vec<String> = generate("120", "7").lines().map(str::to_string).collect();
    lines[17] = r#"{"query": "what?"}"#.to_string();
    std::fs::write(&bad, lines.join("\n")).expect("write");
    for (file, needle) in [
        (&small, "at least 100 queries, got 50"),
        (&bad, "line 18"),
        (&dir.join("missing.jsonl"), "missing.jsonl"),
    ] {
        let runs_before = std::fs::read_dir(s.data.join("runs")).map(|d| d.count()).unwrap_or(0);
        let (out, _) = train(&s, &["--config", &config(&s), "--data", &path(file)], &[]);
        assert_eq!(out.status.code(), Some(2), "{}: {}", file.display(), text(&out.stderr));
        assert!(text(&out.stderr).contains(needle), "{}: {}", file.display(), text(&out.stderr));
        let runs_after = std::fs::read_dir(s.data.join("runs")).map(|d| d.count()).unwrap_or(0);
        assert_eq!(runs_before, runs_after, "no job was started");
    }
}

/// A child process killed when the test ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[expect(clippy::print_stderr, reason = "a skipped test says why on stderr")]
/// The trackers' venv (scripts/setup_trackers.sh), or `None` (the test then skips, unless CI's
/// `AGENTCORE_REQUIRE_TRACKERS` says it must run).
fn trackers_python() -> Option<PathBuf> {
    let python = std::env::var_os("AGENTCORE_TRACKERS_PYTHON").map(PathBuf::from).or_else(|| {
        let cache = std::env::var_os("AGENTCORE_CACHE").map(PathBuf::from).or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/agentcore"))
        })?;
        Some(cache.join("trackers-venv/bin/python"))
    });
    match python {
        Some(p) if p.exists() => Some(p),
        _ => {
            assert!(
                std::env::var_os("AGENTCORE_REQUIRE_TRACKERS").is_none(),
                "AGENTCORE_REQUIRE_TRACKERS is set but the trackers' venv is missing (run scripts/setup_trackers.sh)"
            );
            eprintln!(
                "skipped: no tensorboard/mlflow venv (run scripts/setup_trackers.sh to install them from PyPI)"
            );
            None
        }
    }
}

/// `--report-to tensorboard,mlflow`: TensorBoard's own EventAccumulator reads the event file and
/// MLflow's own client reads the run from a real tracking server on loopback; both hold each
/// iteration's loss, reward and validation accuracy as the job printed them.
#[test]
fn report_to_writes_tensorboard_events_and_an_mlflow_run() {
    let Some(python) = trackers_python() else { return };
    let s = setup();
    let store = s.data.join("mlflow");
    std::fs::create_dir_all(&store).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let uri = format!("http://127.0.0.1:{port}");
    let server = Command::new(&python)
        .args(["-m", "mlflow", "server", "--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--workers", "1", "--backend-store-uri"])
        .arg(format!("sqlite:///{}", store.join("mlflow.db").display()))
        .arg("--default-artifact-root")
        .arg(store.join("artifacts"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mlflow server");
    let _server = Killed(server);
    // Ready when its health endpoint answers (it migrates its database first).
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(5)))
        .build()
        .into();
    let started = std::time::Instant::now();
    while agent.get(format!("{uri}/health")).call().is_err() {
        assert!(started.elapsed().as_secs() < 120, "the MLflow server did not start in 120 s");
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let (out, events) = train(
        &s,
        &["--config", &config(&s), "--report-to", "tensorboard,mlflow"],
        &[("MLFLOW_TRACKING_URI", &uri)],
    );
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let job = job_id(&events);
    let run_dir = s.data.join("runs").join(&job);
    let reader = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
import mlflow
from mlflow.tracking import MlflowClient
run_dir, uri = sys.argv[1], sys.argv[2]
acc = EventAccumulator(run_dir + "/tensorboard")
acc.Reload()
tb = {tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
run_id = json.load(open(run_dir + "/mlflow_run.json"))["run_id"]
client = MlflowClient(uri)
run = client.get_run(run_id)
ml = {k: [[m.step, m.value] for m in client.get_metric_history(run_id, k)] for k in run.data.metrics}
print(json.dumps({"tb": tb, "ml": ml, "status": run.info.status, "params": run.data.params,
                  "experiment": client.get_experiment(run.info.experiment_id).name}))
"#;
    let read = Command::new(&python)
        .args(["-c", reader])
        .arg(&run_dir)
        .arg(&uri)
        .output()
        .expect("python runs");
    assert!(read.status.success(), "{}", text(&read.stderr));
    let got: Value = serde_json::from_slice(&read.stdout).unwrap();
    assert_eq!(got["status"], "FINISHED", "{got}");
    assert_eq!(got["params"]["batch_size"], "3", "{got}");
    assert_eq!(got["experiment"], "seed-agent", "{got}");
    let iterations = of_kind(&events, "iteration");
    assert_eq!(iterations.len(), 4);
    for (tag, key) in [("train/loss", "train_loss"), ("train/reward", "avg_reward")] {
        for source in ["tb", "ml"] {
            let series =
                got[source][tag].as_array().unwrap_or_else(|| panic!("{source} {tag}: {got}"));
            assert_eq!(series.len(), 4, "{source} {tag}: {series:?}");
            for (point, it) in series.iter().zip(&iterations) {
                let (step, value) = (point[0].as_u64().unwrap(), point[1].as_f64().unwrap());
                let want = it[key].as_f64().unwrap();
                assert_eq!(step, it["iteration"].as_u64().unwrap(), "{source} {tag}");
                // TensorBoard keeps f32; MLflow the f64.
                assert!(
                    (value - want).abs() <= 1e-6 * want.abs().max(1.0),
                    "{source} {tag}: {value} vs {want}"
                );
            }
        }
    }
    // Validation accuracy: the baseline at step 0, then the iterations that evaluated (2, 4).
    let evaluated: Vec<u64> = std::iter::once(0)
        .chain(
            iterations
                .iter()
                .filter(|m| !m["eval_success_rate"].is_null())
                .map(|m| m["iteration"].as_u64().unwrap()),
        )
        .collect();
    for source in ["tb", "ml"] {
        let steps: Vec<u64> = got[source]["eval/validation_accuracy"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[0].as_u64().unwrap())
            .collect();
        assert_eq!(steps, evaluated, "{source}");
    }
}
