//! Deployments, the production gate, A/B tests and invocations on loopback: a real server, a
//! real (tiny) job, its real checkpoints answering through `agents.invoke`. User outcomes come
//! through `agents.feedback` (as a product's users would send them), so that the test knows
//! which arm is better and can check the sequential test's decision and the guardrail.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use agentcore_api::{EventKind, codes};
use agentcore_client::{ConfigureAbParams, ExportInvocationsParams, InvokeParams, TrainingClient};
use common::*;
use serde_json::{Value, json};

fn ab(baseline: Option<&str>, experiment: &str, split: f64, guardrail: bool) -> ConfigureAbParams {
    ConfigureAbParams {
        agent_id: Some("tiny-agent".into()),
        environment: "production".into(),
        baseline_checkpoint: baseline.map(str::to_owned),
        experiment_checkpoint: experiment.into(),
        traffic_split: split,
        guardrail,
        alpha: 0.05,
        auto_raise: None,
    }
}

fn invoke(c: &TrainingClient, query: &str, user: &str) -> agentcore_client::InvokeResult {
    c.invoke(&InvokeParams {
        agent_id: "tiny-agent".into(),
        query: query.into(),
        environment: "production".into(),
        user_key: Some(user.into()),
        expected_outcome: None,
    })
    .unwrap()
}

/// A user's verdict on invocation `i`: the arm succeeds `rate` percent of the time (a fixed
/// pattern, the same on every run).
fn verdict(i: usize, rate: usize) -> bool {
    (i * 37) % 100 < rate
}

/// `n` invocations by `users` user keys from 8 callers at once, each followed by the user's
/// feedback (`rates`: percent success of baseline and experiment). (user key, arm) of each.
fn traffic(
    s: &TestServer,
    token: &str,
    n: usize,
    users: usize,
    rates: (usize, usize),
) -> Vec<(String, String)> {
    let queries: Vec<String> =
        tasks(40, 9).iter().map(|t| t["query"].as_str().unwrap().to_owned()).collect();
    let url = s.url();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|w| {
                let (url, queries) = (url.clone(), &queries);
                scope.spawn(move || {
                    let c = TrainingClient::new(&url, Some(token.to_owned()));
                    let mut out = Vec::new();
                    for i in (w..n).step_by(8) {
                        let user = format!("user-{}", i % users);
                        let r = invoke(&c, &queries[i % queries.len()], &user);
                        let rate = if r.arm == "experiment" { rates.1 } else { rates.0 };
                        c.feedback(&r.invocation_id, Some(verdict(i, rate)), None).unwrap();
                        out.push((user, r.arm));
                    }
                    out
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn deploy_gate_ab_test_guardrail_and_invocations() {
    deploy_scenario(None);
}

/// The same on PostgreSQL (`AGENTCORE_TEST_POSTGRES_URL`; CI starts a server): deployments,
/// A/B tests, invocations and their outcomes in the shared store.
#[test]
fn deploy_gate_ab_test_guardrail_and_invocations_on_postgres() {
    let Some(server) = agentcore_store::testing::postgres_server() else { return };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let url = rt.block_on(agentcore_store::testing::fresh_postgres_schema(&server));
    deploy_scenario(Some(url.expect("fresh schema")));
}

fn deploy_scenario(database: Option<String>) {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::on_database(dir.path().to_path_buf(), database, 1, |_| {});
    let tok = admin("acme");
    let c = s.client(&tok);
    tiny_agent(&c, "tiny-agent");
    let job = c.start_training("tiny-agent", small_config(4), &tasks(120, 3), None).unwrap();
    let done = wait_for(&c, &job.job_id, finished, Duration::from_secs(300));
    assert_eq!(done.status, "completed", "{done:?}");
    let store = s.server.as_ref().unwrap().state.store.clone();
    let kept: Vec<String> =
        s.rt.block_on(store.checkpoints(&job.job_id))
            .unwrap()
            .into_iter()
            .filter(|k| !k.deleted)
            .map(|k| k.id)
            .collect();
    assert!(kept.len() >= 2, "{kept:?}");
    let (early, late) = (kept[0].clone(), kept[kept.len() - 1].clone());

    // Nothing deployed yet: invoke says so.
    let e = c
        .invoke(&InvokeParams {
            agent_id: "tiny-agent".into(),
            query: "Compute the sum of [1, 2]".into(),
            environment: "production".into(),
            user_key: None,
            expected_outcome: None,
        })
        .unwrap_err();
    assert_eq!(e.code(), Some(codes::NO_DEPLOYMENT), "{e}");

    // Staging takes any checkpoint; production refuses one that is not significantly better.
    let staged = c.deploy_checkpoint("tiny-agent", &late, "staging", false).unwrap();
    assert_eq!((staged.version, staged.status.as_str(), staged.forced), (1, "active", false));
    let e = c.deploy_checkpoint("tiny-agent", &late, "production", false).unwrap_err();
    assert_eq!(e.code(), Some(codes::DEPLOYMENT_GATE), "{e}");
    let message = e.to_string();
    assert!(message.contains("p = ") && message.contains("improvement"), "{message}");
    // The evaluation it rests on is stored and shown with the forced deploy.
    let forced = c.deploy_checkpoint("tiny-agent", &late, "production", true).unwrap();
    let eval = forced.evaluation.clone().expect("the evaluation the gate read");
    assert!(forced.forced && eval.queries_evaluated > 0, "{forced:?}");
    assert!(message.contains(&format!("p = {:.4}", eval.p_value)), "{message} {eval:?}");
    // Another deploy, then a rollback restores the one before.
    let second = c.deploy_checkpoint("tiny-agent", &early, "production", true).unwrap();
    assert_eq!(second.previous_deployment_id.as_deref(), Some(forced.deployment_id.as_str()));
    let back = c.rollback_deployment("tiny-agent", "production").unwrap();
    assert_eq!(back.deployment.deployment_id, forced.deployment_id);
    assert_eq!(back.rolled_back.status, "rolled_back");
    let e = c.rollback_deployment("tiny-agent", "production").unwrap_err();
    assert_eq!(e.code(), Some(codes::NO_DEPLOYMENT), "{e}");
    let list = c.list_deployments("tiny-agent", Some("production")).unwrap();
    assert_eq!(list.total_count, 2);
    let active: Vec<&str> = list
        .deployments
        .iter()
        .filter(|d| d.status == "active")
        .map(|d| d.checkpoint_id.as_str())
        .collect();
    assert_eq!(active, [late.as_str()]);

    // A 10% A/B test: the experiment (the early checkpoint) is what users like better.
    let t = c.configure_ab_test(&ab(None, &early, 0.1, false)).unwrap();
    assert_eq!((t.status.as_str(), t.baseline.checkpoint_id.as_str()), ("running", late.as_str()));
    let seen = traffic(&s, &tok, 2000, 500, (50, 90));
    let mut arm_of: HashMap<&str, &str> = HashMap::new();
    for (user, arm) in &seen {
        let first = *arm_of.entry(user.as_str()).or_insert(arm.as_str());
        assert_eq!(first, arm, "user {user} changed arms");
    }
    assert_eq!(arm_of.len(), 500);
    let share = seen.iter().filter(|(_, a)| a == "experiment").count() as f64 / 2000.0;
    assert!((0.08..=0.12).contains(&share), "experiment share {share}");
    let report = c.get_ab_test("tiny-agent", "production").unwrap();
    assert_eq!(report.baseline.invocations + report.experiment.invocations, 2000);
    assert_eq!(report.baseline.outcomes + report.experiment.outcomes, 2000);
    assert_eq!(report.decision, "experiment_better", "{report:?}");
    assert!(report.p_value < 0.05 && report.difference.unwrap() > 0.2, "{report:?}");
    let [lo, hi] = report.experiment.success_interval.unwrap();
    assert!(lo < report.experiment.success_rate.unwrap() && hi <= 1.0);
    assert!(report.baseline.mean_latency_ms.unwrap() > 0.0);
    // The decision was announced once.
    let events = s.rt.block_on(store.events(&job.job_id)).unwrap();
    let decisions: Vec<&Value> =
        events.iter().filter(|e| e.kind == EventKind::AbTestDecision).map(|e| &e.payload).collect();
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    assert_eq!(decisions[0]["decision"], "experiment_better");

    // Promotion: the winner goes to production past the gate, on the test's evidence.
    let stopped = c.stop_ab_test("tiny-agent", "production", true).unwrap();
    let promoted = stopped.promoted.expect("promoted");
    assert_eq!((promoted.checkpoint_id.as_str(), promoted.forced), (early.as_str(), false));
    assert!(promoted.note.unwrap().contains("promoted by A/B test"));

    // A guardrail test: the experiment is worse, and is rolled back by the test.
    // Named by its checkpoints alone (the guide's best-practice call): the agent is the job's.
    let t = c
        .configure_ab_test(&ConfigureAbParams {
            agent_id: None,
            ..ab(Some(&early), &late, 0.5, true)
        })
        .unwrap();
    assert_eq!((t.agent_id.as_str(), t.traffic_split), ("tiny-agent", 0.5));
    traffic(&s, &tok, 300, 100, (80, 20));
    let report = c.get_ab_test("tiny-agent", "production").unwrap();
    assert_eq!(
        (report.decision.as_str(), report.status.as_str()),
        ("experiment_worse", "rolled_back")
    );
    let events = s.rt.block_on(store.events(&job.job_id)).unwrap();
    assert!(
        events.iter().any(
            |e| e.kind == EventKind::DeploymentRolledBack && e.payload["reason"] == "guardrail"
        ),
        "{events:?}"
    );
    // Traffic now goes to the active deployment only.
    let r = invoke(&c, "Compute the sum of [1, 2]", "user-1");
    assert_eq!(
        (r.arm.as_str(), r.ab_test_id.as_deref(), r.checkpoint_id.as_str()),
        ("baseline", None, early.as_str())
    );

    // An invocation with an expected outcome is verified; feedback after that is refused.
    let t = &tasks(1, 4)[0];
    let r = c
        .invoke(&InvokeParams {
            agent_id: "tiny-agent".into(),
            query: t["query"].as_str().unwrap().into(),
            environment: "production".into(),
            user_key: None,
            expected_outcome: Some(t["expected_outcome"].as_object().unwrap().clone()),
        })
        .unwrap();
    assert!(r.success.is_some(), "{r:?}");
    let e = c.feedback(&r.invocation_id, Some(true), None).unwrap_err();
    assert_eq!(e.code(), Some(codes::INVALID_PARAMS), "{e}");

    // Any OpenAI client: the agent as a model, A/B routed by `user`.
    let agent: ureq::Agent =
        ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut resp = agent
        .post(format!("{}/v1/chat/completions", s.url()))
        .header("Authorization", format!("Bearer {tok}"))
        .send_json(json!({
            "model": "tiny-agent@production", "user": "u-9",
            "messages": [{"role": "user", "content": "Compute the sum of [4, 5]"}],
        }))
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.body_mut().read_json().unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert!(body["choices"][0]["message"]["content"].is_string(), "{body}");
    assert_eq!(body["agentcore"]["checkpoint_id"], early.as_str());
    let resp = agent
        .post(format!("{}/v1/chat/completions", s.url()))
        .header("Authorization", format!("Bearer {tok}"))
        .send_json(
            json!({"model": "no-such-agent", "messages": [{"role": "user", "content": "q"}]}),
        )
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);

    // Every invocation is exported with its trajectory and outcome, page by page.
    let page = |environment: Option<&str>, limit: u64, offset: u64| {
        c.export_invocations(&ExportInvocationsParams {
            agent_id: "tiny-agent".into(),
            environment: environment.map(str::to_owned),
            limit: Some(limit),
            offset: Some(offset),
        })
        .unwrap()
    };
    let first = page(Some("production"), 1000, 0);
    // 2000 + 300 A/B invocations, two direct ones and the OpenAI client's.
    assert_eq!(first.total_count, 2303, "{:?}", first.invocations.first());
    assert_eq!((first.returned_count, first.has_more), (1000, true));
    let last = page(Some("production"), 1000, 2000);
    assert_eq!((last.returned_count, last.has_more), (303, false));
    let verified = last
        .invocations
        .iter()
        .find(|i| i["invocation_id"] == r.invocation_id.as_str())
        .expect("the verified invocation is exported");
    assert_eq!(verified["outcome_source"], "verifier", "{verified}");
    assert_eq!(verified["success"], json!(r.success), "{verified}");
    assert!(verified["trajectory"]["steps"].is_array(), "{verified}");
    let ab: Vec<&Value> = first.invocations.iter().filter(|i| i["arm"] == "experiment").collect();
    assert!(!ab.is_empty() && ab.iter().all(|i| i["ab_test_id"].is_string()));
    assert!(
        first
            .invocations
            .iter()
            .all(|i| i["has_user_key"] == true && i.get("user_key_hash").is_none())
    );
    assert_eq!(page(Some("staging"), 10, 0).total_count, 0);
    assert_eq!(page(None, 10, 0).total_count, 2303);
    let e = c
        .export_invocations(&ExportInvocationsParams {
            agent_id: "tiny-agent".into(),
            environment: None,
            limit: Some(10_001),
            offset: None,
        })
        .unwrap_err();
    assert_eq!(e.code(), Some(codes::EXPORT_LIMIT), "{e}");

    // Metrics: invocations per agent, environment and arm for the owner.
    let mut resp = agent
        .get(format!("{}/metrics", s.url()))
        .header("Authorization", format!("Bearer {tok}"))
        .call()
        .unwrap();
    let text = resp.body_mut().read_to_string().unwrap();
    assert!(
        text.contains(
            "agentcore_invocations_total{agent=\"tiny-agent\",environment=\"production\",arm=\"experiment\"}"
        ),
        "{text}"
    );
    assert!(text.contains("agentcore_invocation_duration_seconds_count"), "{text}");

    // The methods are discoverable; raw calls get the contract's codes.
    let (status, _, body) =
        s.post(Some(&tok), r#"{"jsonrpc": "2.0", "id": 1, "method": "rpc.discover"}"#);
    assert_eq!(status, 200);
    for m in
        ["training.deploy_checkpoint", "training.get_ab_test", "agents.invoke", "agents.feedback"]
    {
        assert!(body.contains(m), "{m}");
    }
    let (_, body) = s.get("/healthz");
    assert_eq!(body, "ok");

    // Other organisations see nothing; deploying needs training:deploy.
    let other = s.client(&admin("globex"));
    assert_eq!(
        other.get_ab_test("tiny-agent", "production").unwrap_err().code(),
        Some(codes::NOT_FOUND)
    );
    assert_eq!(
        other.feedback(&r.invocation_id, Some(true), None).unwrap_err().code(),
        Some(codes::NOT_FOUND)
    );
    let export = ExportInvocationsParams {
        agent_id: "tiny-agent".into(),
        environment: None,
        limit: None,
        offset: None,
    };
    assert_eq!(other.export_invocations(&export).unwrap_err().code(), Some(codes::NOT_FOUND));
    let viewer = s.client(&token("viewer", "acme", &["training:view"]));
    assert_eq!(
        viewer.export_invocations(&export).unwrap_err().code(),
        Some(codes::PERMISSION_DENIED)
    );
    assert_eq!(
        viewer.deploy_checkpoint("tiny-agent", &late, "staging", false).unwrap_err().code(),
        Some(codes::PERMISSION_DENIED)
    );
}

/// `report_to` on `training.start_grpo`: TensorBoard event files in the job's run directory;
/// `mlflow` is refused by a server that has no tracking server, and an unknown tracker by name.
#[test]
fn a_service_job_reports_to_tensorboard_and_mlflow_needs_the_servers_tracking_uri() {
    let s = TestServer::start(1);
    let c = s.client(&admin("acme"));
    tiny_agent(&c, "tiny-agent");
    let start = |report_to: Value| {
        c.call(
            "training.start_grpo",
            json!({"agent_id": "tiny-agent", "config": small_config(2),
                   "training_data": tasks(120, 3), "report_to": report_to}),
        )
    };
    for (trackers, needle) in [
        (json!(["mlflow"]), "--mlflow-tracking-uri"),
        (json!(["wandb"]), "unknown tracker \"wandb\""),
    ] {
        let e = start(trackers).unwrap_err();
        assert_eq!(e.code(), Some(codes::INVALID_PARAMS), "{e}");
        assert!(e.to_string().contains(needle), "{e}");
    }
    let job = start(json!(["tensorboard"])).unwrap();
    let job_id = job["job_id"].as_str().unwrap();
    let done = wait_for(&c, job_id, finished, Duration::from_secs(300));
    assert_eq!(done.status, "completed", "{done:?}");
    let store = s.server.as_ref().unwrap().state.store.clone();
    let row = s.rt.block_on(store.job(job_id)).unwrap().unwrap();
    let dir = std::path::Path::new(&row.run_dir).join("tensorboard");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("events.out.tfevents."), "{name}");
    // The file version record, the baseline, two iterations and the summary's scalars.
    let bytes = std::fs::read(&files[0]).unwrap();
    let mut records = 0;
    let mut at = 0;
    while at < bytes.len() {
        let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        at += 12 + usize::try_from(len).unwrap() + 4;
        records += 1;
    }
    assert_eq!((records, at), (5, bytes.len()));
    assert!(bytes.windows(b"train/loss".len()).any(|w| w == b"train/loss"), "no train/loss scalar");
}

/// `n` seed-suite tasks of the `max` family (difficulty 1), from the generator's stream `seed`.
fn max_tasks(n: usize, seed: u64) -> Vec<Value> {
    let all = agentcore_tasks::seed::generate(n * 12, seed, Some(1)).unwrap();
    let max: Vec<Value> = all
        .into_iter()
        .filter(|t| t.metadata.as_ref().is_some_and(|m| m.family == "max"))
        .map(|t| serde_json::to_value(t).unwrap())
        .collect();
    assert_eq!(max.len(), n, "the generator cycles through the 12 families");
    max
}

/// The gate's accept path on evidence: a job that really learns (a built-in model whose warm
/// start mostly demonstrates a wrong expression for `max`, which GRPO corrects) goes to
/// production without `force`, its stored held-out evaluation significant; a checkpoint of the
/// same agent that did not move is refused, and production keeps the better one. Invocations of
/// the deployed checkpoint on the held-out queries succeed exactly where its evaluation did.
#[test]
fn production_takes_a_significantly_better_checkpoint_without_force() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    // The test polls the job's status ten times a second for minutes.
    let s = TestServer::start_with(1, |c| c.rate_limit_scale = 100);
    let c = s.client(&admin("acme"));
    c.call(
        "agents.register",
        json!({
            "agent_id": "learner", "agent_type": "seed",
            "model": {"built_in": {
                "steps": 800, "n_demos": 1500, "weak_families": ["max"],
                "model": {"d_model": 64, "n_layers": 2, "n_heads": 2, "d_ff": 192, "max_seq_len": 256}
            }}
        }),
    )
    .unwrap();
    let config = |n_iterations: u32, learning_rate: f64| {
        json!({
            "n_iterations": n_iterations, "batch_size": 16, "n_trajectories_per_query": 8,
            "learning_rate": learning_rate, "max_completion_length": 64,
            "max_steps_per_trajectory": 4, "eval_interval": 4, "checkpoint_interval": 4,
            "seed": 3, "max_budget_usd": "5.00"
        })
    };
    let (train, held_out) = (max_tasks(200, 11), max_tasks(60, 98));
    let job = c.start_training("learner", config(8, 5e-4), &train, Some(&held_out)).unwrap();
    let done = wait_for(&c, &job.job_id, finished, Duration::from_secs(900));
    assert_eq!(done.status, "completed", "{done:?}");
    let best = done.best_checkpoint_id.clone().expect("a best checkpoint");

    let d = c.deploy_checkpoint("learner", &best, "production", false).unwrap();
    let eval = d.evaluation.clone().expect("the evaluation the gate read");
    assert!(!d.forced && d.status == "active", "{d:?}");
    assert_eq!(eval.queries_evaluated, 60, "{eval:?}");
    assert!(eval.p_value < 0.05 && eval.success_rate_improvement >= 0.25, "{eval:?}");
    assert!(
        (eval.success_rate - eval.baseline_success_rate - eval.success_rate_improvement).abs()
            < 1e-9,
        "{eval:?}"
    );

    // The deployed checkpoint answers the held-out queries as its evaluation scored them.
    let verified = held_out
        .iter()
        .filter(|t| {
            let r = c
                .invoke(&InvokeParams {
                    agent_id: "learner".into(),
                    query: t["query"].as_str().unwrap().into(),
                    environment: "production".into(),
                    user_key: None,
                    expected_outcome: Some(t["expected_outcome"].as_object().unwrap().clone()),
                })
                .unwrap();
            assert_eq!(r.checkpoint_id, best);
            r.success.expect("verified")
        })
        .count();
    assert_eq!(verified, (eval.success_rate * 60.0).round() as usize, "{eval:?}");
    // It is served from memory: with its directory moved away, invocations still answer (they
    // no longer list and hash the job's checkpoints on every call).
    let state = &s.server.as_ref().unwrap().state;
    let iteration = best.rsplit("-ckpt-").next().unwrap();
    let dir = state.config.data_dir.join("runs").join(&job.job_id).join("checkpoints");
    let (here, away) = (dir.join(format!("ckpt-{iteration}")), dir.join("moved-away"));
    std::fs::rename(&here, &away).unwrap();
    let r = c
        .invoke(&InvokeParams {
            agent_id: "learner".into(),
            query: held_out[0]["query"].as_str().unwrap().into(),
            environment: "production".into(),
            user_key: None,
            expected_outcome: None,
        })
        .unwrap();
    assert_eq!(r.checkpoint_id, best);
    std::fs::rename(&away, &here).unwrap();

    // A job of the same agent that barely moves (learning rate 1e-9): refused, quoting its
    // evaluation; production keeps the significant checkpoint.
    let still = c.start_training("learner", config(4, 1e-9), &train, Some(&held_out)).unwrap();
    let done = wait_for(&c, &still.job_id, finished, Duration::from_secs(300));
    assert_eq!(done.status, "completed", "{done:?}");
    let flat = done.best_checkpoint_id.expect("a best checkpoint");
    let e = c.deploy_checkpoint("learner", &flat, "production", false).unwrap_err();
    assert_eq!(e.code(), Some(codes::DEPLOYMENT_GATE), "{e}");
    assert!(e.to_string().contains("p = ") && e.to_string().contains("improvement"), "{e}");
    let list = c.list_deployments("learner", Some("production")).unwrap();
    assert_eq!(list.total_count, 1);
    assert_eq!(
        (list.deployments[0].checkpoint_id.as_str(), list.deployments[0].status.as_str()),
        (best.as_str(), "active")
    );
}
