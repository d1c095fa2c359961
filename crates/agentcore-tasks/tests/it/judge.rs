//! Verdicts on trajectories and the reward registry.

use std::io::Write;
use std::net::TcpListener;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use agentcore_agent::sandbox::{PythonSandbox, SandboxConfig, SandboxError};
use agentcore_agent::trajectory::{Step, StopReason, Trajectory, Usage};
use agentcore_grpo::rewards::RewardShaping;
use agentcore_tasks::Task;
use agentcore_tasks::judge::{
    RewardError, RewardInput, RewardRegistry, Verifiers, answer_code, remote_reward,
};
use agentcore_tasks::verify::Verdict;
use rust_decimal::Decimal;
use serde_json::json;

fn task(outcome: serde_json::Value) -> Task {
    serde_json::from_value(json!({"query": "q", "expected_outcome": outcome})).expect("task")
}

fn step(kind: &str) -> Step {
    Step {
        state: String::new(),
        action: json!({"type": kind}),
        result: json!(null),
        timestamp: "2026-11-26T00:00:00.000Z".into(),
        duration_ms: 1,
    }
}

fn traj(
    answer: Option<&str>,
    steps: usize,
    calls: u32,
    ok_calls: u32,
    verifications: u32,
) -> Trajectory {
    Trajectory {
        query: "q".into(),
        steps: (0..steps).map(|_| step("tool_call")).collect(),
        final_answer: answer.map(str::to_owned),
        stop_reason: if answer.is_some() { StopReason::Answer } else { StopReason::StepLimit },
        error: None,
        tokens: None,
        api_tokens: Vec::new(),
        usage: Usage::default(),
        cost_usd: Decimal::ZERO,
        execution_time_ms: 1,
        tool_calls: calls,
        successful_tool_calls: ok_calls,
        verification_steps: verifications,
        context: None,
    }
}

/// The sandbox, building its launcher first when this crate's tests run on their own.
pub(crate) fn sandbox() -> Arc<PythonSandbox> {
    static SANDBOX: OnceLock<Arc<PythonSandbox>> = OnceLock::new();
    SANDBOX
        .get_or_init(|| {
            let config = match SandboxConfig::detect() {
                Err(SandboxError::NoLauncher(_)) => {
                    let status = std::process::Command::new(env!("CARGO"))
                        .args([
                            "build",
                            "-q",
                            "-p",
                            "agentcore-agent",
                            "--bin",
                            "agentcore-sandbox",
                        ])
                        .status()
                        .expect("cargo");
                    assert!(status.success());
                    SandboxConfig::detect().expect("launcher after building it")
                }
                other => other.expect("sandbox config"),
            };
            Arc::new(PythonSandbox::new(config).expect("sandbox"))
        })
        .clone()
}

#[test]
fn result_is_checked_and_claims_do_not_count() {
    let v = Verifiers::default();
    let t = task(json!({"result": [1, 2, 5, 8], "test_passed": true}));
    assert!(v.verify(&t, &traj(Some("[1, 2, 5, 8]"), 2, 1, 1, 0)).passed);
    let claim = v.verify(&t, &traj(Some("I sorted it and all tests passed. Success!"), 2, 1, 1, 0));
    assert!(!claim.passed);
    assert!(!v.verify(&t, &traj(Some("[1, 2, 8, 5]"), 2, 1, 1, 0)).passed);
    let none = v.verify(&t, &traj(None, 20, 0, 0, 0));
    assert!(!none.passed && none.reason.contains("no final answer"), "{none:?}");
}

#[test]
fn tests_run_in_the_sandbox() {
    let v = Verifiers { sandbox: Some(sandbox()), ..Verifiers::default() };
    let t = task(json!({
        "test_passed": true,
        "tests": "assert add(2, 3) == 5\nassert add(-1, 1) == 0",
    }));
    let good = "Here is the function:\n```python\ndef add(a, b):\n    return a + b\n```";
    assert!(v.verify(&t, &traj(Some(good), 1, 0, 0, 0)).passed);
    let bad = "```python\ndef add(a, b):\n    return a - b\n```\nAll tests pass.";
    let verdict = v.verify(&t, &traj(Some(bad), 1, 0, 0, 0));
    assert!(!verdict.passed && verdict.reason.contains("AssertionError"), "{verdict:?}");
    let cheat = "```python\nimport sys\nprint('tests passed')\nsys.exit(0)\n```";
    assert!(!v.verify(&t, &traj(Some(cheat), 1, 0, 0, 0)).passed);
    // Without a sandbox such tasks fail with a reason rather than pass.
    let no = Verifiers::default().verify(&t, &traj(Some(good), 1, 0, 0, 0));
    assert!(!no.passed && no.reason.contains("sandbox"));
    assert_eq!(answer_code("x = 1"), "x = 1");
}

#[test]
fn custom_verifiers_by_name() {
    let mut v = Verifiers::default();
    v.custom.insert(
        "mentions_paris".into(),
        Arc::new(|_t: &Task, tr: &Trajectory| Verdict {
            passed: tr.final_answer.as_deref().is_some_and(|a| a.contains("Paris")),
            reason: "must mention Paris".into(),
        }),
    );
    let t = task(json!({"verifier": "mentions_paris"}));
    assert!(v.verify(&t, &traj(Some("It is Paris."), 1, 0, 0, 0)).passed);
    assert!(!v.verify(&t, &traj(Some("Lyon"), 1, 0, 0, 0)).passed);
    let unknown = v.verify(&task(json!({"verifier": "nope"})), &traj(Some("x"), 1, 0, 0, 0));
    assert!(!unknown.passed && unknown.reason.contains("nope"));
}

fn reward(
    reg: &RewardRegistry,
    agent_type: &str,
    t: &Task,
    tr: &Trajectory,
    passed: bool,
) -> Result<f64, RewardError> {
    let verdict = Verdict { passed, reason: String::new() };
    reg.reward(
        agent_type,
        &RewardInput { task: t, trajectory: tr, verdict: &verdict, max_steps: 20 },
    )
}

#[test]
fn the_guide_vectors() {
    let reg = RewardRegistry::with_builtins(RewardShaping::default());
    let t = task(json!({"result": 3}));
    // Tool call, verification, final answer: 1 + 0.1 + 0.05 - 3 x 0.01.
    let success = traj(Some("3"), 3, 2, 1, 1);
    let mut shaped = RewardRegistry::with_builtins(RewardShaping::default());
    shaped.set_default("shaped").unwrap();
    assert!((reward(&shaped, "any", &t, &success, true).unwrap() - 1.12).abs() < 1e-12);
    // A failed single step: -0.01.
    let failed = traj(Some("4"), 1, 0, 0, 0);
    assert!((reward(&shaped, "any", &t, &failed, false).unwrap() + 0.01).abs() < 1e-12);
    // Shaping off (the default strategy, `outcome`): 1.0.
    assert!((reward(&reg, "any", &t, &success, true).unwrap() - 1.0).abs() < 1e-12);
}

#[test]
fn registry_strategies_and_validation() {
    let mut reg = RewardRegistry::with_builtins(RewardShaping::default());
    let t = task(json!({"result": 3}));
    let tr = traj(Some("3"), 2, 1, 1, 0);
    reg.register("half", Arc::new(|_: &RewardInput<'_>| Ok(0.5))).unwrap();
    assert_eq!(
        reg.register("half", Arc::new(|_: &RewardInput<'_>| Ok(0.5))),
        Err(RewardError::Duplicate("half".into()))
    );
    reg.set_agent_strategy("my-agent-type", "half").unwrap();
    assert_eq!(reg.strategy("my-agent-type"), "half");
    assert_eq!(reg.strategy("other"), "outcome");
    assert!((reward(&reg, "my-agent-type", &t, &tr, true).unwrap() - 0.5).abs() < 1e-12);
    assert!(matches!(reg.set_agent_strategy("x", "missing"), Err(RewardError::Unknown { .. })));
    reg.register("too_big", Arc::new(|_: &RewardInput<'_>| Ok(1.5))).unwrap();
    reg.set_agent_strategy("big", "too_big").unwrap();
    let e = reward(&reg, "big", &t, &tr, true).unwrap_err();
    assert!(e.to_string().contains("1.5, outside [0, 1]"), "{e}");
    reg.validate = false;
    assert!((reward(&reg, "big", &t, &tr, true).unwrap() - 1.5).abs() < 1e-12);
    reg.register("nan", Arc::new(|_: &RewardInput<'_>| Ok(f64::NAN))).unwrap();
    reg.set_agent_strategy("n", "nan").unwrap();
    assert!(reward(&reg, "n", &t, &tr, true).is_err());
}

#[test]
fn builtin_rewards() {
    let mut reg = RewardRegistry::with_builtins(RewardShaping::default());
    for name in ["code_quality", "response_accuracy", "task_efficiency"] {
        reg.set_agent_strategy(name, name).unwrap();
    }
    let t = task(json!({"result": [1, 2, 3, 4]}));
    // code_quality: half success, half clean tool calls.
    let tr = traj(Some("[1, 2, 3, 4]"), 3, 2, 1, 0);
    assert!((reward(&reg, "code_quality", &t, &tr, true).unwrap() - 0.75).abs() < 1e-12);
    assert!((reward(&reg, "code_quality", &t, &tr, false).unwrap() - 0.25).abs() < 1e-12);
    // response_accuracy: share of list positions right when wrong.
    let wrong = traj(Some("[1, 2, 4, 3]"), 1, 0, 0, 0);
    assert!((reward(&reg, "response_accuracy", &t, &wrong, false).unwrap() - 0.5).abs() < 1e-12);
    let num = task(json!({"result": 10}));
    let close = traj(Some("9"), 1, 0, 0, 0);
    assert!((reward(&reg, "response_accuracy", &num, &close, false).unwrap() - 0.9).abs() < 1e-12);
    // task_efficiency: fewer steps, more reward; failure 0.
    let quick = traj(Some("x"), 1, 0, 0, 0);
    let slow = traj(Some("x"), 11, 0, 0, 0);
    assert!((reward(&reg, "task_efficiency", &t, &quick, true).unwrap() - 1.0).abs() < 1e-12);
    assert!((reward(&reg, "task_efficiency", &t, &slow, true).unwrap() - 0.75).abs() < 1e-12);
    assert!(reward(&reg, "task_efficiency", &t, &slow, false).unwrap().abs() < 1e-12);
}

/// A loopback endpoint that scores `success` as 0.7 / 0.2 and records the bodies it got.
fn score_server() -> (String, Arc<std::sync::Mutex<Vec<serde_json::Value>>>) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let (url, _) = agentcore_agent::testing::serve(move |body| {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        let score = if v["success"] == true { 0.7 } else { 0.2 };
        log.lock().unwrap().push(v);
        (200, format!("{{\"score\": {score}}}"))
    });
    (format!("{url}/score"), seen)
}

#[test]
fn remote_reward_over_http() {
    let (url, seen) = score_server();
    let mut reg = RewardRegistry::with_builtins(RewardShaping::default());
    reg.register("remote", remote_reward(&url, Duration::from_secs(5), true)).unwrap();
    reg.set_agent_strategy("r", "remote").unwrap();
    let t = task(json!({"result": 3}));
    assert!(
        (reward(&reg, "r", &t, &traj(Some("3"), 1, 0, 0, 0), true).unwrap() - 0.7).abs() < 1e-12
    );
    assert!(
        (reward(&reg, "r", &t, &traj(Some("4"), 1, 0, 0, 0), false).unwrap() - 0.2).abs() < 1e-12
    );
    let bodies = seen.lock().unwrap();
    assert_eq!(bodies[0]["final_answer"], "3");
    assert_eq!(bodies[0]["expected_outcome"]["result"], 3);
    drop(bodies);
    // Loopback targets are refused unless explicitly allowed.
    reg.register("remote_strict", remote_reward(&url, Duration::from_secs(5), false)).unwrap();
    reg.set_agent_strategy("s", "remote_strict").unwrap();
    let e = reward(&reg, "s", &t, &traj(Some("3"), 1, 0, 0, 0), true).unwrap_err();
    assert!(e.to_string().contains("not allowed"), "{e}");
}

/// Issue 14, finding 7: the remote-reward client followed redirects. A 307 to the scoring
/// endpoint is an error now, and the endpoint it points to is never called.
#[test]
fn remote_rewards_do_not_follow_redirects() {
    let (target, seen) = score_server();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/moved", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let _body = agentcore_agent::testing::read_request_body(&stream);
            let _ = write!(
                stream,
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: {target}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    let mut reg = RewardRegistry::with_builtins(RewardShaping::default());
    reg.register("moved", remote_reward(&url, Duration::from_secs(5), true)).unwrap();
    reg.set_agent_strategy("m", "moved").unwrap();
    let e = reward(&reg, "m", &task(json!({"result": 3})), &traj(Some("3"), 1, 0, 0, 0), true)
        .unwrap_err();
    assert!(e.to_string().contains("307"), "{e}");
    assert!(seen.lock().unwrap().is_empty(), "the redirect was followed");
}
