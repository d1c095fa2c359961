//! The Python SDK: its unit tests, and the guide's "Complete Training Pipeline" example against a
//! real `agentcore serve` (examples/python/run_pipeline.sh) with a small config.

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

#[test]
fn python_sdk_unit_tests_pass() {
    let out = Command::new("python3")
        .args(["-m", "unittest", "discover", "-s", "python/tests", "-v"])
        .current_dir(root())
        .output()
        .expect("python3 runs");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("OK")
            && text.contains("test_the_standard_webhooks_example_vector")
            && text
                .contains("test_configure_ab_test_with_a_literal_ellipsis_repeats_the_last_call"),
        "{text}"
    );
}

/// The SDK's `GRPOConfig` refuses exactly what the server refuses, with the server's message,
/// and its defaults are the server's: for each probe (a field at and past each bound) the
/// Python verdict is compared with `agentcore_grpo::GRPOConfig::from_value`'s.
#[test]
fn the_python_config_checks_and_defaults_match_the_servers() {
    use agentcore_grpo::GRPOConfig;
    use serde_json::{Value, json};
    let probes: Vec<(&str, Value)> = vec![
        ("n_iterations", json!(0)),
        ("n_iterations", json!(1)),
        ("n_iterations", json!(10000)),
        ("n_iterations", json!(10001)),
        ("batch_size", json!(0)),
        ("batch_size", json!(128)),
        ("batch_size", json!(129)),
        ("n_trajectories_per_query", json!(0)),
        ("n_trajectories_per_query", json!(16)),
        ("n_trajectories_per_query", json!(17)),
        ("learning_rate", json!(0)),
        ("learning_rate", json!(1e-10)),
        ("learning_rate", json!(1)),
        ("learning_rate", json!(1.5)),
        ("learning_rate", json!(-0.1)),
        ("max_budget_usd", json!("-1")),
        ("max_budget_usd", json!(-0.01)),
        ("max_budget_usd", json!("0")),
        ("max_budget_usd", json!(12.5)),
        ("checkpoint_interval", json!(0)),
        ("checkpoint_interval", json!(1)),
        ("max_steps_per_trajectory", json!(0)),
        ("max_steps_per_trajectory", json!(100)),
        ("max_steps_per_trajectory", json!(101)),
        ("gamma", json!(-0.1)),
        ("gamma", json!(0)),
        ("gamma", json!(1)),
        ("gamma", json!(1.01)),
        ("epsilon", json!(0)),
        ("epsilon", json!(0.5)),
        ("epsilon", json!(1)),
        ("epsilon_high", json!(0)),
        ("epsilon_high", json!(10)),
        ("epsilon_high", json!(10.5)),
        ("epsilon_high", Value::Null),
        ("beta", json!(-1)),
        ("beta", json!(0)),
        ("beta", json!(2.5)),
        ("temperature", json!(0)),
        ("temperature", json!(10)),
        ("temperature", json!(10.5)),
        ("top_p", json!(0)),
        ("top_p", json!(1)),
        ("top_p", json!(1.5)),
        ("top_k", json!(0)),
        ("top_k", json!(1)),
        ("top_k", Value::Null),
        ("max_completion_length", json!(0)),
        ("max_completion_length", json!(32768)),
        ("max_completion_length", json!(32769)),
        ("eval_interval", json!(0)),
        ("eval_interval", json!(1)),
        ("early_stopping_patience", json!(0)),
        ("early_stopping_patience", json!(3)),
        ("early_stopping_patience", Value::Null),
        ("max_grad_norm", json!(0)),
        ("max_grad_norm", json!(0.5)),
        ("num_iterations", json!(0)),
        ("num_iterations", json!(16)),
        ("num_iterations", json!(17)),
        ("warmup_steps", json!(0)),
        ("warmup_steps", json!(5)),
        ("loss_type", json!("gspo")),
        ("loss_type", json!("ppo")),
        ("scale_rewards", json!("none")),
        ("scale_rewards", json!("std")),
        ("advantage_estimator", json!("rloo")),
        ("reward_shaping", json!({"success_reward": 0.0})),
        ("reward_shaping", json!({"failure_reward": 1.5})),
        ("reward_shaping", json!({"step_penalty": -1})),
        ("reward_shaping", json!({"tool_call_bonus": -0.5})),
        ("reward_shaping", json!({"enabled": true, "tool_call_bonus": 0.2})),
    ];
    let input: Vec<Value> = probes.iter().map(|(f, v)| json!({ *f: v })).collect();
    let script = "import json, sys\n\
        sys.path.insert(0, 'python')\n\
        from agentcore.training import GRPOConfig\n\
        out = {'defaults': GRPOConfig().to_dict(all_fields=True), 'verdicts': []}\n\
        for probe in json.load(sys.stdin):\n\
        \x20   try:\n\
        \x20       GRPOConfig(**probe)\n\
        \x20       out['verdicts'].append(None)\n\
        \x20   except (ValueError, TypeError) as e:\n\
        \x20       out['verdicts'].append(str(e))\n\
        print(json.dumps(out))\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .current_dir(root())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(serde_json::to_string(&input).unwrap().as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    for ((field, value), python) in probes.iter().zip(got["verdicts"].as_array().unwrap()) {
        let rust = GRPOConfig::from_value(json!({ *field: value })).err().map(|e| e.to_string());
        match (&rust, python.as_str()) {
            // The enum messages are worded differently; both must refuse.
            (Some(r), Some(_)) if r.contains("unknown variant") => {}
            (r, p) => assert_eq!(r.as_deref(), p, "{field} = {value}"),
        }
    }
    // The defaults, every field (money compared as a number: "100.00" and 100.0 are equal).
    let mut rust = serde_json::to_value(GRPOConfig::default()).unwrap();
    let mut python = got["defaults"].clone();
    for d in [&mut rust, &mut python] {
        let money = d["max_budget_usd"].to_string().trim_matches('"').parse::<f64>().unwrap();
        d["max_budget_usd"] = json!(money);
    }
    assert_eq!(python, rust);
}

#[test]
fn the_guides_complete_pipeline_runs_against_a_local_server() {
    let out = Command::new("bash")
        .arg("examples/python/run_pipeline.sh")
        .env("AGENTCORE_BIN", env!("CARGO_BIN_EXE_agentcore"))
        .env("AGENTCORE_ITERATIONS", "4")
        .current_dir(root())
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "Training started: ",
        "Iteration 4/4",
        "Training completed successfully",
        "Success Rate: ",
        "Statistical Significance: ",
        "high-quality trajectories",
        "Stream: iteration 4/4, loss ",
        "Stream: status completed",
        "Stream: 4 progress and ",
        "Async stream: 4 progress messages",
        "Export: ",
        "Typed error: NotFound (code -32001)",
        "Configuration snippets: all valid",
        "with the troubleshooting config ended cancelled",
        "Training job started: ",
        "Iteration 2/500",
        "Checkpoint saved: ",
        "Quick Start: steps 1-5 ran; the job ended cancelled",
        "Phase 4: success ",
        "Deployed ",
        "A/B: ",
        "Gradual rollout: split 0.5, status running",
        "Invocations exported: 60 (60 with an outcome)",
        "Phase 5 done",
        "CLI invocations: 61 exported",
        "CLI deploy list: ",
        "CLI ab status: running 0.5 ",
        "CLI deploy refused: exit 2",
    ] {
        assert!(stdout.contains(needle), "{needle} missing from:\n{stdout}");
    }
}
