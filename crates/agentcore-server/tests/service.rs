//! The service on loopback with real components: an axum server, a SQLite file, the worker
//! pool running real (tiny) GRPO jobs, a WebSocket reader, a webhook receiver.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentcore_server::webhooks::sign;
use axum::http::{HeaderMap, StatusCode};
use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};

type Received = Arc<Mutex<Vec<(HeaderMap, String)>>>;

/// A webhook receiver on loopback that fails the first delivery (to see the retry).
fn receiver(s: &TestServer) -> (String, Received) {
    let got: Received = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&got);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let seen = Arc::clone(&seen);
            async move {
                let mut v = seen.lock().unwrap();
                v.push((headers, body));
                if v.len() == 1 {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let listener = s.rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    s.rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), got)
}

#[test]
fn a_job_runs_through_the_service_with_live_progress_webhooks_and_metrics() {
    let s = TestServer::start(1);
    let token = admin("acme");
    let c = s.client(&token);
    tiny_agent(&c, "tiny-agent");
    let (hook_url, received) = receiver(&s);
    let sub = c.subscribe_webhook(&[], &hook_url).unwrap();
    assert!(sub.secret.starts_with("whsec_"));

    let job = c.start_training("tiny-agent", small_config(4), &tasks(120, 3), None).unwrap();
    assert_eq!(
        (job.status.as_str(), job.total_iterations, job.budget_usd.as_str()),
        ("queued", 4, "5.00")
    );

    // WebSocket from the start: every message until the socket closes.
    let ws_url = format!(
        "ws://{}/training/ws/{}?token={token}",
        s.server.as_ref().unwrap().addr,
        job.job_id
    );
    let messages = s.rt.spawn(async move {
        let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
        let mut out = Vec::new();
        while let Some(Ok(m)) = ws.next().await {
            if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
                out.push(serde_json::from_str::<Value>(&t).unwrap());
            }
        }
        out
    });

    let done = wait_for(&c, &job.job_id, finished, Duration::from_secs(300));
    assert_eq!(done.status, "completed", "{done:?}");
    assert_eq!((done.current_iteration, done.progress_percent), (4, 100.0));
    assert_eq!(done.stop_reason.as_deref(), Some("completed"));
    assert!(done.metrics["train_loss"].is_number(), "{:?}", done.metrics);
    assert!(done.metrics["validation_accuracy"].is_number(), "{:?}", done.metrics);
    assert_eq!(done.metrics["trajectories_generated"], 4 * 9);
    assert!(done.best_checkpoint_id.is_some());
    assert!(done.cost_usd.parse::<f64>().unwrap() > 0.0);
    assert_eq!(done.cost.budget_usd, "5.00");

    // The WebSocket saw the job from queued/running to completed, every iteration, checkpoints.
    let msgs = s.rt.block_on(messages).unwrap();
    let of = |t: &str| msgs.iter().filter(|m| m["type"] == t).collect::<Vec<_>>();
    let progress: Vec<u64> =
        of("progress").iter().map(|m| m["iteration"].as_u64().unwrap()).collect();
    assert_eq!(progress, [1, 2, 3, 4], "{msgs:?}");
    assert!(of("progress").iter().all(|m| m["total"] == 4 && m["loss"].is_number()));
    assert!(of("checkpoint").len() >= 2, "{msgs:?}");
    let statuses: Vec<&str> = of("status").iter().map(|m| m["status"].as_str().unwrap()).collect();
    assert_eq!(statuses.last(), Some(&"completed"), "{statuses:?}");

    // Webhooks: started, progress (every 2 here), checkpoints, completed; signed; the first
    // delivery failed and was retried with the same id.
    // Wait for both the last event and the first one's retry: deliveries run side by side,
    // so the retry (after its backoff) may come after `completed`.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = received.lock().unwrap();
        let completed = got.iter().any(|(_, b)| b.contains("training.job.completed"));
        let retried = got.first().is_some_and(|(first, _)| {
            got[1..].iter().any(|(h, _)| h.get("webhook-id") == first.get("webhook-id"))
        });
        if (completed && retried) || std::time::Instant::now() > deadline {
            break;
        }
        drop(got);
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = received.lock().unwrap().clone();
    let events: Vec<String> = got
        .iter()
        .map(|(_, b)| {
            serde_json::from_str::<Value>(b).unwrap()["event"].as_str().unwrap().to_owned()
        })
        .collect();
    for e in [
        "training.job.started",
        "training.job.progress",
        "training.checkpoint.saved",
        "training.job.completed",
    ] {
        assert!(events.iter().any(|x| x == e), "{e} missing from {events:?}");
    }
    for (headers, body) in &got {
        let h = |k: &str| headers.get(k).unwrap().to_str().unwrap().to_owned();
        let ts: i64 = h("webhook-timestamp").parse().unwrap();
        assert_eq!(h("webhook-signature"), sign(&sub.secret, &h("webhook-id"), ts, body));
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["data"]["job_id"], job.job_id.as_str());
    }
    // Other messages may arrive between the failed first attempt and its retry (several are
    // in flight at once): find the retry by its id.
    let first_id = got[0].0.get("webhook-id");
    let retry = got[1..].iter().find(|(h, _)| h.get("webhook-id") == first_id);
    let retry = retry.expect("a retry keeps the id");
    assert_eq!(got[0].1, retry.1);

    // Export: the guide's shape, paging, filters, and the limit rule.
    let page = c.export_trajectories(&job.job_id, false, None, Some(10), Some(0)).unwrap();
    assert_eq!(
        (page["total_count"].as_u64(), page["returned_count"].as_u64(), page["has_more"].as_bool()),
        (Some(36), Some(10), Some(true))
    );
    let t = &page["trajectories"][0];
    for k in [
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
        assert!(t.get(k).is_some(), "{k} missing: {t}");
    }
    let wins = c.export_trajectories(&job.job_id, true, None, None, None).unwrap();
    assert!(wins["trajectories"].as_array().unwrap().iter().all(|t| t["success"] == true));
    let err = c.export_trajectories(&job.job_id, false, None, Some(20_000), None).unwrap_err();
    assert_eq!(err.code(), Some(-40005), "{err}");

    // Evaluate: paired against the baseline on the held-out split.
    let ev = c.evaluate(&job.job_id, None).unwrap();
    assert_eq!(ev["checkpoint_id"], done.best_checkpoint_id.clone().unwrap().as_str());
    assert!(ev["queries_evaluated"].as_u64().unwrap() >= 12, "{ev}");
    for k in [
        "success_rate_improvement",
        "avg_reward_improvement",
        "p_value",
        "statistically_significant",
        "test",
        "confidence_interval",
    ] {
        assert!(ev["baseline_comparison"].get(k).is_some(), "{k}: {ev}");
    }
    for k in ["success_rate", "avg_reward", "avg_steps", "tool_accuracy"] {
        assert!(ev["metrics"][k].is_number(), "{k}: {ev}");
    }

    // Listing, and cancelling a finished job.
    let list = c.list_jobs(None, Some("completed"), None, None).unwrap();
    assert_eq!((list.total_count, list.jobs[0].job_id.as_str()), (1, job.job_id.as_str()));
    let err = c.cancel(&job.job_id, None).unwrap_err();
    assert_eq!(err.code(), Some(-40003), "{err}");

    // Metrics: every name the contract lists (and the dashboard queries) is exported.
    let (status, text) = s.get("/metrics");
    assert_eq!(status, 200);
    for name in metric_names() {
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing:\n{text}");
    }
    assert!(text.contains("training_jobs_completed_total 1"), "{text}");
    assert!(text.contains("training_iteration_duration_seconds_count 4"), "{text}");
}

fn metric_names() -> Vec<&'static str> {
    vec![
        "training_jobs_created_total",
        "training_jobs_completed_total",
        "training_jobs_failed_total",
        "training_jobs_cancelled_total",
        "training_jobs_active",
        "training_queue_depth",
        "training_trajectory_generation_duration_seconds",
        "training_policy_update_duration_seconds",
        "training_iteration_duration_seconds",
        "training_checkpoint_save_duration_seconds",
        "training_budget_usage_dollars",
        "training_budget_limit_dollars",
        "training_loss",
        "training_reward_mean",
    ]
}

/// Every metric the Grafana dashboard and the alert rules query is exported by the server.
#[test]
fn the_dashboard_and_alerts_query_only_exported_metrics() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dashboard =
        std::fs::read_to_string(root.join("k8s/monitoring/training-dashboard.json")).unwrap();
    let rules = std::fs::read_to_string(root.join("k8s/monitoring/training-alerts.yaml")).unwrap();
    let d: Value = serde_json::from_str(&dashboard).unwrap();
    assert!(!d["panels"].as_array().unwrap().is_empty());
    // The invocation metrics appear once an agent is invoked (tests/deploy.rs checks them).
    let invocation_metrics =
        ["agentcore_invocations_total", "agentcore_invocation_duration_seconds"];
    let exported: Vec<String> = metric_names()
        .iter()
        .chain(invocation_metrics.iter())
        .flat_map(|n| {
            if n.ends_with("_seconds") {
                vec![format!("{n}_bucket"), format!("{n}_sum"), format!("{n}_count")]
            } else {
                vec![(*n).to_owned()]
            }
        })
        .collect();
    let mut queried = 0;
    for text in [&dashboard, &rules] {
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("training_") || word.starts_with("agentcore_") {
                queried += 1;
                assert!(exported.iter().any(|e| e == word), "queried but not exported: {word}");
            }
        }
    }
    assert!(queried >= 10, "the dashboard and rules query the metrics ({queried} references)");
}

#[test]
fn auth_matrix_refuses_each_bad_caller() {
    let s = TestServer::start(0);
    let status = json!({"jsonrpc": "2.0", "method": "training.get_status", "params": {"job_id": "00000000-0000-4000-8000-000000000000"}, "id": 1}).to_string();
    // No token: refused; /healthz needs none.
    assert_eq!(s.post(None, &status).0, 401);
    assert_eq!(s.get("/healthz"), (200, "ok".to_string()));
    assert_eq!(s.get("/readyz"), (200, "ready".to_string()));
    // alg: none.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let exp = chrono::Utc::now().timestamp() + 600;
    let claims = json!({"sub": "eve", "org": "acme", "aud": AUDIENCE, "exp": exp, "permissions": ["training:view"]});
    let none = format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(claims.to_string())
    );
    assert_eq!(s.post(Some(&none), &status).0, 401);
    // Expired, wrong audience, wrong signature: signed by hand.
    let sign_with = |secret: &str, claims: Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let expired = sign_with(
        SECRET,
        json!({"sub": "eve", "org": "acme", "aud": AUDIENCE, "exp": exp - 7200, "permissions": ["training:view"]}),
    );
    let (code, _, body) = s.post(Some(&expired), &status);
    assert_eq!(code, 401);
    assert!(body.contains("Expired"), "{body}");
    let wrong_aud = sign_with(
        SECRET,
        json!({"sub": "eve", "org": "acme", "aud": "other", "exp": exp, "permissions": ["training:view"]}),
    );
    assert_eq!(s.post(Some(&wrong_aud), &status).0, 401);
    let forged = sign_with("another-secret-0123456789", claims.clone());
    let (code, _, body) = s.post(Some(&forged), &status);
    assert_eq!(code, 401);
    assert!(!body.contains(&forged), "the token is not echoed");
    // Missing permission: -40103 naming it.
    let viewer = token("vic", "acme", &["training:view"]);
    let err = s.client(&viewer).cancel("00000000-0000-4000-8000-000000000000", None).unwrap_err();
    assert_eq!(err.code(), Some(-40103), "{err}");
    assert!(err.to_string().contains("training:cancel"));
    // Another organisation's job: not found, as if it did not exist.
    let acme = s.client(&admin("acme"));
    let job = acme
        .start_training("seed-agent", json!({"n_iterations": 1}), &tasks(100, 1), None)
        .unwrap();
    let globex = s.client(&admin("globex"));
    assert_eq!(globex.get_status(&job.job_id).unwrap_err().code(), Some(-32001));
    assert_eq!(globex.cancel(&job.job_id, None).unwrap_err().code(), Some(-32001));
    assert_eq!(globex.list_jobs(None, None, None, None).unwrap().total_count, 0);
    assert_eq!(acme.list_jobs(None, None, None, None).unwrap().total_count, 1);
    // The queued job (no workers here) is cancelled at once by its owner.
    let c = acme.cancel(&job.job_id, Some("test")).unwrap();
    assert_eq!((c.status.as_str(), c.checkpoint_saved), ("cancelled", false));
}

#[test]
fn envelopes_errors_limits_and_validation() {
    // A small body limit: the client's whole body fits in the socket buffers before the 413.
    let s = TestServer::start_with(0, |c| c.body_limit = 256 << 10);
    let t = admin("acme");
    let rpc = |body: &str| {
        let (code, headers, text) = s.post(Some(&t), body);
        (
            code,
            headers,
            if text.is_empty() {
                Value::Null
            } else {
                serde_json::from_str::<Value>(&text).unwrap()
            },
        )
    };
    // Parse error, invalid request, unknown method, notification, batch.
    assert_eq!(rpc("{not json").2["error"]["code"], -32700);
    assert_eq!(rpc("[]").2["error"]["code"], -32600);
    assert_eq!(rpc(r#"{"jsonrpc": "1.0", "method": "x", "id": 1}"#).2["error"]["code"], -32600);
    assert_eq!(
        rpc(r#"{"jsonrpc": "2.0", "method": "training.nope", "id": 1}"#).2["error"]["code"],
        -32601
    );
    let (code, _, body) = rpc(r#"{"jsonrpc": "2.0", "method": "agents.list"}"#);
    assert_eq!((code, body), (204, Value::Null));
    let (code, _, body) = rpc(
        r#"[{"jsonrpc": "2.0", "method": "agents.list", "id": "a"}, {"jsonrpc": "2.0", "method": "agents.list"}, {"jsonrpc": "2.0", "method": "rpc.discover", "id": 2}]"#,
    );
    assert_eq!(code, 200);
    let batch = body.as_array().unwrap();
    assert_eq!(batch.len(), 2);
    assert_eq!(batch[0]["id"], "a");
    assert!(
        batch[0]["result"]["agents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["agent_id"] == "seed-agent")
    );
    let names: Vec<&str> = batch[1]["result"]["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"training.start_grpo") && names.contains(&"training.export_trajectories"),
        "{names:?}"
    );

    let c = s.client(&t);
    // Malformed job id: -32602 quoting it.
    let e = c.get_status("12; DROP TABLE jobs").unwrap_err();
    assert_eq!(e.code(), Some(-32602));
    assert!(e.to_string().contains("12; DROP TABLE jobs"), "{e}");
    assert_eq!(
        c.get_status("00000000-0000-4000-8000-000000000000").unwrap_err().code(),
        Some(-32001)
    );
    // Config out of range and unknown field: -32600 with {field, error}.
    let data = tasks(100, 2);
    let e = c.start_training("seed-agent", json!({"batch_size": 500}), &data, None).unwrap_err();
    let agentcore_client::ClientError::Rpc(r) = &e else { panic!("{e}") };
    assert_eq!((r.code, r.data.as_ref().unwrap()["field"].as_str()), (-32600, Some("batch_size")));
    assert!(r.data.as_ref().unwrap()["error"].as_str().unwrap().contains("500"), "{r}");
    let e = c.start_training("seed-agent", json!({"learning_rte": 0.1}), &data, None).unwrap_err();
    assert!(e.to_string().contains("learning_rte") && e.code() == Some(-32600), "{e}");
    // Data: too few, and a bad item named by index.
    let e = c.start_training("seed-agent", json!({}), &data[..50], None).unwrap_err();
    assert_eq!(e.code(), Some(-40002));
    assert!(e.to_string().contains("got 50"), "{e}");
    let mut bad = data.clone();
    bad[7] = json!({"query": "no outcome"});
    let e = c.start_training("seed-agent", json!({}), &bad, None).unwrap_err();
    assert_eq!(e.code(), Some(-40002));
    assert!(
        e.to_string().contains("training_data[7]") && e.to_string().contains("expected_outcome"),
        "{e}"
    );
    // Unknown agent; budget pre-flight.
    assert_eq!(c.start_training("ghost", json!({}), &data, None).unwrap_err().code(), Some(-32001));
    let e = c
        .start_training(
            "seed-agent",
            json!({"n_iterations": 10000, "max_budget_usd": "0.01"}),
            &data,
            None,
        )
        .unwrap_err();
    assert_eq!(e.code(), Some(-40001), "{e}");
    // Webhook targets: loopback refused unless allowed (this server does not allow... it does:
    // tests allow private targets), unknown events refused.
    let e = c.subscribe_webhook(&["training.job.exploded"], "https://example.com/h").unwrap_err();
    assert_eq!(e.code(), Some(-32602));
    let e = c.subscribe_webhook(&[], "ftp://example.com/h").unwrap_err();
    assert!(e.to_string().contains("http or https"), "{e}");

    // Body limit: 413. The body is one byte over the limit, so the server reads all of it
    // before refusing (no race between the refusal and the client's write).
    {
        use std::io::{Read, Write};
        let addr = s.server.as_ref().unwrap().addr;
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        let body = vec![b'x'; (256 << 10) + 1];
        write!(
            conn,
            "POST /api/v1/jsonrpc HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {t}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        conn.write_all(&body).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut head = [0u8; 12];
        conn.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 413");
    }

    // Rate limit: evaluate 5 per minute per caller, then 429 with Retry-After and the headers.
    let call = json!({"jsonrpc": "2.0", "method": "training.evaluate", "params": {"job_id": "00000000-0000-4000-8000-000000000000"}, "id": 1}).to_string();
    let mut last = (0, Vec::new());
    for k in 0..6 {
        let (code, headers, _) = s.post(Some(&t), &call);
        if k < 5 {
            assert_eq!(code, 200, "call {k}");
            let remaining =
                headers.iter().find(|(h, _)| h == "x-ratelimit-remaining").unwrap().1.clone();
            assert_eq!(remaining, (4 - k).to_string());
        }
        last = (code, headers);
    }
    assert_eq!(last.0, 429);
    let h = |k: &str| last.1.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert!(h("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(h("x-ratelimit-limit").as_deref(), Some("5"));
    // Another caller has its own budget.
    let (code, _, _) = s.post(Some(&token("other", "acme", &["training:evaluate"])), &call);
    assert_eq!(code, 200);
}

/// A job whose worker died (its lease expired) is taken over and finished by another worker;
/// a job running when its server stops continues, from its checkpoint, when a server starts
/// again on the same store.
#[test]
fn jobs_survive_dead_workers_and_server_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_path_buf();
    let t = admin("acme");
    // Server 1 without workers: queue two jobs; a "ghost" worker claims the first and dies.
    let mut s1 = TestServer::on(data_dir.clone(), 0, |_| {});
    let c = s1.client(&t);
    tiny_agent(&c, "tiny-agent");
    let ghost_job = c.start_training("tiny-agent", small_config(2), &tasks(120, 4), None).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let restart_job =
        c.start_training("tiny-agent", small_config(6), &tasks(120, 5), None).unwrap();
    let store = s1.server.as_ref().unwrap().state.store.clone();
    let claimed =
        s1.rt.block_on(store.claim_job("ghost", Duration::from_millis(500))).unwrap().unwrap();
    assert_eq!(claimed.id, ghost_job.job_id);
    s1.stop();
    // The ghost's lease runs out before the next server starts.
    std::thread::sleep(Duration::from_millis(700));

    // Server 2 with a worker: finishes the ghost's job after its lease expired, then starts
    // the second job; stop it once a checkpoint exists.
    let mut s2 = TestServer::on(data_dir.clone(), 1, |_| {});
    let c2 = s2.client(&t);
    let done = wait_for(&c2, &ghost_job.job_id, finished, Duration::from_secs(300));
    assert_eq!(done.status, "completed", "{done:?}");
    let row = s2
        .rt
        .block_on(s2.server.as_ref().unwrap().state.store.job(&ghost_job.job_id))
        .unwrap()
        .unwrap();
    assert_eq!(row.attempts, 2, "claimed by the ghost, then by the live worker");
    let mid =
        wait_for(&c2, &restart_job.job_id, |s| s.current_iteration >= 2, Duration::from_secs(300));
    assert_eq!(mid.status, "running");
    s2.stop();
    let paused = {
        let s3 = TestServer::on(data_dir.clone(), 0, |_| {});
        s3.client(&t).get_status(&restart_job.job_id).unwrap()
    };
    assert_eq!(paused.status, "running", "a job stopped by a shutdown is not finished: {paused:?}");
    assert!(paused.current_iteration >= 2 && paused.current_iteration < 6, "{paused:?}");

    // Server 4: continues the job from its checkpoint to the end.
    let s4 = TestServer::on(data_dir, 1, |_| {});
    let c4 = s4.client(&t);
    let done = wait_for(&c4, &restart_job.job_id, finished, Duration::from_secs(300));
    assert_eq!((done.status.as_str(), done.current_iteration), ("completed", 6), "{done:?}");
    let events = s4
        .rt
        .block_on(s4.server.as_ref().unwrap().state.store.events(&restart_job.job_id))
        .unwrap();
    let starts: Vec<&Value> =
        events.iter().filter(|e| e.kind == "training.job.started").map(|e| &e.payload).collect();
    assert_eq!(starts.len(), 2, "{starts:?}");
    assert!(starts[1]["resumed_from"].as_u64().unwrap() >= 2, "{starts:?}");
    // Iterations are recorded once each, 1..=6.
    let its = s4
        .rt
        .block_on(s4.server.as_ref().unwrap().state.store.iterations(&restart_job.job_id))
        .unwrap();
    assert_eq!(its.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6]);
}

/// The remote-reward protocol: an agent type's rewards come from an HTTP endpoint (what the
/// Python SDK's registry serves); every trajectory's reward is the endpoint's score.
#[test]
fn an_agent_types_rewards_come_from_its_registered_endpoint() {
    let s = TestServer::start(1);
    let c = s.client(&admin("acme"));
    c.call(
        "agents.register",
        json!({"agent_id": "scored", "agent_type": "my-agent-type", "model": {"built_in": {
            "steps": 6, "n_demos": 30, "batch_size": 4,
            "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "max_seq_len": 256}}}}),
    )
    .unwrap();
    let calls = Arc::new(Mutex::new(0usize));
    let seen = Arc::clone(&calls);
    let app = axum::Router::new().route(
        "/rewards/my_reward",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let seen = Arc::clone(&seen);
            async move {
                *seen.lock().unwrap() += 1;
                assert!(
                    body["query"].is_string() && body["expected_outcome"].is_object(),
                    "{body}"
                );
                let score = if body["success"] == true { 0.7 } else { 0.1 };
                axum::Json(json!({"score": score}))
            }
        }),
    );
    let listener = s.rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    s.rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
    let url = format!("http://{addr}/rewards/my_reward");
    c.call(
        "rewards.register_remote",
        json!({"agent_type": "my-agent-type", "name": "my_reward", "url": url}),
    )
    .unwrap();
    let job = c.start_training("scored", small_config(2), &tasks(100, 6), None).unwrap();
    let done = wait_for(&c, &job.job_id, finished, Duration::from_secs(300));
    assert_eq!(done.status, "completed", "{done:?}");
    let page = c.export_trajectories(&job.job_id, false, None, None, None).unwrap();
    let ts = page["trajectories"].as_array().unwrap();
    assert_eq!(ts.len(), 18);
    for t in ts {
        let expected = if t["success"] == true { 0.7 } else { 0.1 };
        assert!((t["reward"].as_f64().unwrap() - expected).abs() < 1e-12, "{t}");
    }
    assert!(*calls.lock().unwrap() >= 18);
}

/// Webhooks are durable: a message whose first attempt failed is retried, with the same id, by
/// the next server after a restart, and an event written while no server ran is delivered when
/// one starts.
#[test]
fn webhook_messages_survive_a_server_restart() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_path_buf();
    // The receiver runs on its own runtime, across both servers; it fails until told not to.
    let receiver_rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let got: Received = Arc::new(Mutex::new(Vec::new()));
    let failing = Arc::new(AtomicBool::new(true));
    let app = {
        let (seen, failing) = (Arc::clone(&got), Arc::clone(&failing));
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let (seen, failing) = (Arc::clone(&seen), Arc::clone(&failing));
                async move {
                    seen.lock().unwrap().push((headers, body));
                    if failing.load(Ordering::SeqCst) {
                        // Answer late: the server is stopped while this attempt is in flight,
                        // and must still record it (else the message waits out its lease).
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::OK
                    }
                }
            }),
        )
    };
    let listener = receiver_rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let hook_url = format!("http://{}/hook", listener.local_addr().unwrap());
    receiver_rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
    let slow_retries = |c: &mut agentcore_server::ServerConfig| {
        c.webhooks.first_backoff = Duration::from_millis(1500);
        c.webhooks.max_attempts = 5;
    };

    let mut s1 = TestServer::on(data_dir.clone(), 0, slow_retries);
    let t = admin("acme");
    let sub = s1.client(&t).subscribe_webhook(&[], &hook_url).unwrap();
    let store = s1.server.as_ref().unwrap().state.store.clone();
    let job = agentcore_store::NewJob {
        id: "job-w".into(),
        agent_id: "seed-agent".into(),
        settings: json!({}),
        total_iterations: 1,
        budget_usd: "1".into(),
        run_dir: "/tmp/none".into(),
    };
    s1.rt.block_on(store.enqueue_job(&job, "acme", "u", None)).unwrap();
    s1.rt
        .block_on(store.record_event(
            "job-w",
            agentcore_store::EventKind::JobCompleted,
            &json!({"final": 1}),
        ))
        .unwrap();
    // The first attempt fails; stop the server before its retry is due.
    let t0 = std::time::Instant::now();
    while got.lock().unwrap().is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(20), "no first attempt");
        std::thread::sleep(Duration::from_millis(20));
    }
    s1.stop();
    let first_id = got.lock().unwrap()[0].0.get("webhook-id").unwrap().clone();
    // While no server runs: the receiver recovers, and the job records another event.
    failing.store(false, Ordering::SeqCst);
    let offline = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    offline.block_on(async {
        let db = agentcore_store::Store::open(&data_dir.join("agentcore.db")).await.unwrap();
        db.record_event("job-w", agentcore_store::EventKind::JobStarted, &json!({"offline": true}))
            .await
            .unwrap();
        db.close().await;
    });
    assert_eq!(got.lock().unwrap().len(), 1, "nothing is delivered while no server runs");

    let s2 = TestServer::on(data_dir, 0, slow_retries);
    let t0 = std::time::Instant::now();
    while got.lock().unwrap().len() < 3 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "not redelivered: {}",
            got.lock().unwrap().len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let got = got.lock().unwrap();
    assert_eq!(got.len(), 3, "each message delivered once after the restart");
    let events: Vec<(String, String)> = got
        .iter()
        .map(|(h, body)| {
            let v: Value = serde_json::from_str(body).unwrap();
            (
                h.get("webhook-id").unwrap().to_str().unwrap().to_owned(),
                v["event"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let retried: Vec<_> = events.iter().filter(|(id, _)| *id == first_id).collect();
    assert_eq!(retried.len(), 2, "the retry keeps the message id: {events:?}");
    assert!(retried.iter().all(|(_, e)| e == "training.job.completed"), "{events:?}");
    assert!(
        events.iter().any(|(id, e)| *id != first_id && e == "training.job.started"),
        "{events:?}"
    );
    let store = s2.server.as_ref().unwrap().state.store.clone();
    let log = s2.rt.block_on(store.deliveries(&sub.subscription_id)).unwrap();
    let first: Vec<_> = log
        .iter()
        .filter(|d| d.message_id == first_id.to_str().unwrap())
        .map(|d| (d.attempt, d.status_code))
        .collect();
    assert_eq!(first, [(1, Some(503)), (2, Some(200))]);
    assert_eq!(s2.rt.block_on(store.outbox_counts()).unwrap(), [("delivered".to_string(), 2)]);
}

/// A running job is asked to stop and the call answers at once (it used to hold the request up
/// to 15 s); the worker finishes its iteration, checkpoints and ends as `cancelled`.
#[test]
fn cancelling_a_running_job_answers_at_once_and_the_job_stops_with_a_checkpoint() {
    let s = TestServer::start(1);
    let c = s.client(&admin("acme"));
    tiny_agent(&c, "tiny-agent");
    let job = c.start_training("tiny-agent", small_config(200), &tasks(120, 3), None).unwrap();
    wait_for(&c, &job.job_id, |st| st.current_iteration >= 1, Duration::from_secs(120));
    let r = c.cancel(&job.job_id, Some("enough")).unwrap();
    assert!(matches!(r.status.as_str(), "cancelling" | "cancelled"), "{r:?}");
    let done = wait_for(&c, &job.job_id, finished, Duration::from_secs(120));
    assert_eq!(done.status, "cancelled", "{done:?}");
    assert!(done.current_iteration < 200, "stopped early: {done:?}");
    // It stopped with a checkpoint of the iteration it finished.
    let data_dir = s._dir.as_ref().unwrap().path();
    let ckpt = data_dir
        .join("runs")
        .join(&job.job_id)
        .join(format!("checkpoints/ckpt-{:05}/job_state.json", done.current_iteration));
    assert!(ckpt.is_file(), "no checkpoint at {}", ckpt.display());
    // Ended: a second cancel is refused with the contract's code.
    assert_eq!(c.cancel(&job.job_id, None).unwrap_err().code(), Some(-40003));
}

/// Issue 14, finding 3: a long warm start could not be cancelled (the job ran on for its whole
/// length). Now it stops at the next step, the job ends `cancelled`, and nothing is cached.
#[test]
fn cancelling_during_the_warm_start_stops_it() {
    let s = TestServer::start(1);
    let c = s.client(&admin("acme"));
    c.call(
        "agents.register",
        json!({"agent_id": "slow-start", "agent_type": "seed", "model": {"built_in": {
            "steps": 20_000, "n_demos": 30, "batch_size": 4,
            "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "max_seq_len": 256}}}}),
    )
    .unwrap();
    let job = c.start_training("slow-start", small_config(2), &tasks(100, 3), None).unwrap();
    // Claimed by the worker: it is in the warm start (20,000 steps: many minutes here).
    wait_for(&c, &job.job_id, |st| st.status == "running", Duration::from_secs(60));
    c.cancel(&job.job_id, Some("too slow")).unwrap();
    let done = wait_for(&c, &job.job_id, finished, Duration::from_secs(60));
    assert_eq!(done.status, "cancelled", "{done:?}");
    assert_eq!(done.current_iteration, 0, "{done:?}");
    let cache = s._dir.as_ref().unwrap().path().join("warmstart");
    let cached = std::fs::read_dir(&cache)
        .map(|d| d.filter_map(Result::ok).any(|e| e.path().join("trainer_state.json").exists()))
        .unwrap_or(false);
    assert!(!cached, "an interrupted warm start left a cache entry");
}

/// Every method of the OpenRPC document is served (none answers "method not found"), nothing
/// else is, and params are closed: an unknown key is refused with its name.
#[test]
fn every_documented_method_is_served_and_params_are_closed() {
    let s = TestServer::start(0);
    let c = s.client(&admin("acme"));
    let doc = c.call("rpc.discover", json!({})).unwrap();
    let names: Vec<String> = doc["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, agentcore_server::rpc::SERVED.map(String::from).to_vec());
    for name in &names {
        if let Err(e) = c.call(name, json!({})) {
            assert_ne!(e.code(), Some(-32601), "{name} is documented but not served: {e}");
        }
    }
    assert_eq!(c.call("training.nope", json!({})).unwrap_err().code(), Some(-32601));
    let e = c
        .call(
            "training.get_status",
            json!({"job_id": "00000000-0000-4000-8000-000000000000", "jobid": 1}),
        )
        .unwrap_err();
    assert_eq!(e.code(), Some(-32602));
    assert!(e.to_string().contains("jobid"), "{e}");
    let e = c.call("training.list_jobs", json!({"status": "done"})).unwrap_err();
    assert!(e.to_string().contains("params.status"), "{e}");
}

/// Issue 14, findings 2, 4 and 8, reproduced: a token without an organisation, agent ids that
/// revealed another organisation's agents, local paths that revealed server files, batches
/// without a bound, bodies read before authentication, `/metrics` listing every running job,
/// and warm-start sizes that crashed the server.
#[test]
fn tenants_identity_batches_and_sizes_are_bounded() {
    let s = TestServer::start(0);
    let status = json!({"jsonrpc": "2.0", "method": "training.get_status", "params": {"job_id": "00000000-0000-4000-8000-000000000000"}, "id": 1}).to_string();
    // A token without `org` (or with an empty one) is refused.
    let exp = chrono::Utc::now().timestamp() + 600;
    for claims in [
        json!({"sub": "acme", "aud": AUDIENCE, "exp": exp, "permissions": ["training:view"]}),
        json!({"sub": "acme", "org": "", "aud": AUDIENCE, "exp": exp, "permissions": ["training:view"]}),
    ] {
        let t = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        let (code, _, body) = s.post(Some(&t), &status);
        assert_eq!(code, 401, "{claims}: {body}");
        assert!(body.contains("`org` claim"), "{body}");
    }
    // An unauthenticated request is answered from its headers: it announces a 30 MiB body and
    // sends none, and the 401 comes at once (a server that read the body first would wait).
    {
        use std::io::{Read, Write};
        let addr = s.server.as_ref().unwrap().addr;
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(
            tcp,
            "POST /api/v1/jsonrpc HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            30 << 20
        )
        .unwrap();
        let mut head = [0u8; 12];
        tcp.read_exact(&mut head).expect("an answer before any body byte");
        assert_eq!(&head, b"HTTP/1.1 401", "{}", String::from_utf8_lossy(&head));
    }

    // Agent ids are per organisation: the same id in two organisations, neither sees the other's.
    let acme = s.client(&admin("acme"));
    let globex = s.client(&admin("globex"));
    for (c, prompt) in [(&acme, "acme's prompt"), (&globex, "globex's prompt")] {
        c.call(
            "agents.register",
            json!({"agent_id": "helper", "system_prompt": prompt, "model": {"kind": "built_in"}}),
        )
        .unwrap();
    }
    for (c, prompt) in [(&acme, "acme's prompt"), (&globex, "globex's prompt")] {
        let got = c.call("agents.get", json!({"agent_id": "helper"})).unwrap();
        assert_eq!(got["system_prompt"], prompt, "{got}");
        let list = c.call("agents.list", json!({})).unwrap();
        let prompts: Vec<&Value> = list["agents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["agent_id"] == "helper")
            .map(|a| &a["system_prompt"])
            .collect();
        assert_eq!(prompts, vec![&json!(prompt)], "{list}");
    }
    // Shared agents keep their ids.
    let err = acme
        .call("agents.register", json!({"agent_id": "seed-agent", "model": {"kind": "built_in"}}))
        .unwrap_err();
    assert!(err.to_string().contains("shared agent"), "{err}");
    // A local model outside the models directory is refused without looking at the path.
    for path in ["/etc/passwd", "/no/such/file.gguf"] {
        let err = acme
            .call(
                "agents.register",
                json!({"agent_id": "local", "model": {"kind": "local", "path": path}}),
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("beneath the server's models directory"), "{err}");
        assert!(!err.contains("does not exist"), "{err}");
    }

    // Warm-start sizes are checked before a job exists (the server used to abort allocating 1 TB).
    acme.call(
        "agents.register",
        json!({"agent_id": "huge", "model": {"built_in": {"model": {"d_model": 1_000_000_000u64,
            "n_layers": 4, "n_heads": 4, "d_ff": 384, "max_seq_len": 256}, "steps": 1}}}),
    )
    .unwrap();
    let err =
        acme.start_training("huge", json!({"n_iterations": 1}), &tasks(100, 1), None).unwrap_err();
    assert_eq!(err.code(), Some(-32600), "a config value out of range: {err}");
    assert!(err.to_string().contains("warm_start.model.d_model must be in 8..=2048"), "{err}");

    // A batch holds at most MAX_BATCH_LEN calls.
    let t = admin("acme");
    let call = r#"{"jsonrpc": "2.0", "method": "rpc.discover", "id": 1}"#;
    let batch = |n: usize| format!("[{}]", vec![call; n].join(","));
    let (code, _, body) = s.post(Some(&t), &batch(100));
    assert_eq!(code, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap().as_array().unwrap().len(), 100);
    let (_, _, body) = s.post(Some(&t), &batch(101));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], -32600, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("at most 100 calls, got 101"), "{v}");

    // `/metrics`: per-job series for the owner's token only.
    let job = acme
        .start_training("seed-agent", json!({"n_iterations": 1}), &tasks(100, 1), None)
        .unwrap();
    let store = s.server.as_ref().unwrap().state.store.clone();
    let metrics = |token: Option<&str>| {
        let agent: ureq::Agent =
            ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut req = agent.get(format!("{}/metrics", s.url()));
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        req.call().unwrap().body_mut().read_to_string().unwrap()
    };
    // The workers' autoscaling signal: queued jobs, 1 until a worker claims it.
    assert!(metrics(None).contains("\ntraining_queue_depth 1\n"), "{}", metrics(None));
    let claimed = s.rt.block_on(store.claim_job("test-worker", Duration::from_secs(600))).unwrap();
    assert_eq!(claimed.map(|j| j.id), Some(job.job_id.clone()));
    assert!(metrics(None).contains("\ntraining_queue_depth 0\n"), "{}", metrics(None));
    let label = format!("job_id=\"{}\"", job.job_id);
    assert!(metrics(Some(&admin("acme"))).contains(&label));
    let anonymous = metrics(None);
    assert!(anonymous.contains("training_jobs_active 1"), "{anonymous}");
    assert!(!anonymous.contains("job_id="), "{anonymous}");
    assert!(!metrics(Some(&admin("globex"))).contains("job_id="));
}

/// Issue 14, finding 4: slow-header connections (200 stayed open for 60 s) are closed after the
/// header timeout, and connections beyond the limit are closed at once.
#[test]
fn slow_and_excess_connections_are_closed() {
    use std::io::{Read, Write};
    let read_all = |tcp: &mut std::net::TcpStream| -> String {
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut got = Vec::new();
        match tcp.read_to_end(&mut got) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("the connection stayed open: {e}"),
        }
        String::from_utf8_lossy(&got).into_owned()
    };
    // A client that never finishes its headers is disconnected after the header timeout.
    let s = TestServer::start_with(0, |c| c.header_read_timeout = Duration::from_millis(500));
    let addr = s.server.as_ref().unwrap().addr;
    let mut slow = std::net::TcpStream::connect(addr).unwrap();
    write!(slow, "POST /api/v1/jsonrpc HTTP/1.1\r\nHost: {addr}\r\nX-Slow: 1").unwrap();
    let answer = read_all(&mut slow);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(s.get("/healthz"), (200, "ok".to_string()));
    drop(s);

    // Beyond `max_connections` open connections, the next one is closed without an answer.
    let s = TestServer::start_with(0, |c| {
        c.max_connections = 3;
        c.header_read_timeout = Duration::from_secs(60);
    });
    let addr = s.server.as_ref().unwrap().addr;
    let mut held: Vec<std::net::TcpStream> =
        (0..3).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
    let mut extra = std::net::TcpStream::connect(addr).unwrap();
    // The write fails (the server closed it already) or the read finds no answer.
    let served =
        write!(extra, "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").is_ok()
            && !read_all(&mut extra).is_empty();
    assert!(!served, "a fourth connection was served");
    // The held ones are served.
    write!(held[0], "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    assert!(read_all(&mut held[0]).starts_with("HTTP/1.1 200"));
}

#[test]
fn readiness_follows_the_database_and_liveness_does_not() {
    let s = TestServer::start(0);
    assert_eq!(s.get("/readyz"), (200, "ready".to_string()));
    // The database goes away (its pool closed): the pod is alive but not ready.
    s.rt.block_on(s.server.as_ref().unwrap().state.store.close());
    let (code, body) = s.get("/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("database"), "{body}");
    assert_eq!(s.get("/healthz"), (200, "ok".to_string()));
}
