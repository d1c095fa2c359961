//! The `agentcore` binary as a user runs it: exit codes, stdout data, stderr diagnostics.

use std::path::Path;
use std::process::{Command, Output};

fn agentcore(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agentcore")).args(args).output().expect("binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn repo_file(relative: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(relative).display().to_string()
}

#[test]
fn readme_main_command_validates_the_example_config() {
    let out = agentcore(&["config", "check", &repo_file("examples/configs/quickstart.yaml")]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    // The effective config, with the example's values and the defaults filled in.
    assert!(stdout.contains("n_iterations: 100"), "{stdout}");
    assert!(stdout.contains("epsilon_high: 0.28"), "{stdout}");
    assert!(stdout.contains("max_completion_length: 256"), "{stdout}");
    assert!(text(&out.stderr).contains("valid"));
}

#[test]
fn defaults_print_in_each_format_and_parse_back() {
    for format in ["json", "yaml", "toml"] {
        let out = agentcore(&["config", "defaults", "--format", format]);
        assert!(out.status.success());
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join(format!("defaults.{format}"));
        std::fs::write(&file, &out.stdout).expect("write");
        let check =
            agentcore(&["config", "check", file.to_str().expect("utf-8 path"), "--format", "json"]);
        assert!(check.status.success(), "{format}: {}", text(&check.stderr));
        let value: serde_json::Value =
            serde_json::from_slice(&check.stdout).expect("JSON on stdout");
        assert_eq!(value["batch_size"], 16);
        assert_eq!(value["max_budget_usd"], "100.00");
    }
}

#[test]
fn an_invalid_config_exits_2_naming_field_rule_and_value() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("bad.json");
    std::fs::write(&file, r#"{"batch_size": 200}"#).expect("write");
    let out = agentcore(&["config", "check", file.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "no data on stdout for an invalid config");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("`batch_size` must be in 1..=128, got 200"), "{stderr}");
    assert!(stderr.contains("bad.json"), "the path is in the message: {stderr}");
}

#[test]
fn unreadable_or_unknown_files_exit_2() {
    let out = agentcore(&["config", "check", "/nonexistent/config.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read /nonexistent/config.yaml"));
    let out = agentcore(&["config", "check", "config.ini"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("use .json, .yaml, .yml or .toml"));
}

#[test]
fn warnings_go_to_stderr() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("g1.toml");
    std::fs::write(&file, "n_trajectories_per_query = 1\n").expect("write");
    let out = agentcore(&["config", "check", file.to_str().expect("utf-8 path")]);
    assert!(out.status.success());
    assert!(text(&out.stderr).contains("warning: `n_trajectories_per_query` is 1"));
    assert!(!text(&out.stdout).contains("warning"));
}

#[test]
fn tasks_generate_prints_the_same_jsonl_for_the_same_seed() {
    let args = ["tasks", "generate", "--suite", "seed", "--n", "200", "--seed", "1"];
    let out = agentcore(&args);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 200);
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
        assert!(v["query"].as_str().is_some_and(|q| !q.is_empty()), "{line}");
        assert!(v["expected_outcome"]["result"] != serde_json::Value::Null, "{line}");
        assert!(
            v["metadata"]["family"].is_string() && v["metadata"]["difficulty"].is_u64(),
            "{line}"
        );
    }
    assert_eq!(agentcore(&args).stdout, out.stdout, "same seed, same file");
    let other = agentcore(&["tasks", "generate", "--n", "200", "--seed", "2"]);
    assert_ne!(other.stdout, out.stdout);

    let bad = agentcore(&["tasks", "generate", "--suite", "gsm8k"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        text(&bad.stderr).contains("--suite must be `seed`, got `gsm8k`"),
        "{}",
        text(&bad.stderr)
    );
    let bad = agentcore(&["tasks", "generate", "--difficulty", "5"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("1..=3"), "{}", text(&bad.stderr));
}
