//! Logs carry `job_id` and never secrets: a job runs through the service with every log line at
//! debug level captured (our crates', sqlx's, axum's), with a bearer token, a webhook secret
//! delivered to a receiver, and a refused token; none of the three secrets appears in the
//! captured lines, while the job's own lines (with its `job_id`) do.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use common::*;

/// Every log line of the process, in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[test]
fn logs_name_the_job_and_never_a_secret() {
    let captured = Captured::default();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(captured.clone())
        .json()
        .with_current_span(true)
        .with_span_list(true)
        .init();

    let s = TestServer::start(1);
    assert_eq!(s.get("/healthz").0, 200);
    let token = admin("acme");
    let c = s.client(&token);
    tiny_agent(&c, "tiny-agent");
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(|| async { StatusCode::NO_CONTENT }));
    let listener = s.rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    s.rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
    let sub = c.subscribe_webhook(&[], &format!("http://{addr}/hook")).unwrap();
    // A refused token is logged by no one either.
    let forged = format!("{token}x");
    let (status, _, _) =
        s.post(Some(&forged), r#"{"jsonrpc":"2.0","id":1,"method":"rpc.discover"}"#);
    assert_eq!(status, 401);

    let job = c.start_training("tiny-agent", small_config(2), &tasks(120, 3), None).unwrap();
    let done = wait_for(&c, &job.job_id, finished, Duration::from_secs(120));
    assert_eq!(done.status, "completed", "{done:?}");

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    // The capture works: the job's start and end are there, each with its job_id.
    let lines: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let of_job = |message: &str| {
        lines.iter().any(|l| {
            l["fields"]["message"] == message && l["fields"]["job_id"] == job.job_id.as_str()
        })
    };
    assert!(of_job("job started"), "no 'job started' line for {}:\n{text}", job.job_id);
    assert!(of_job("job finished"), "no 'job finished' line for {}", job.job_id);
    // Iteration spans carry the job and the iteration.
    assert!(
        lines.iter().any(|l| l["span"]["name"] == "iteration"
            && l["span"]["job_id"] == job.job_id.as_str()
            && l["span"]["iteration"] == 2),
        "no line inside the span of iteration 2"
    );
    for (name, secret) in
        [("bearer token", token.as_str()), ("webhook secret", &sub.secret), ("jwt key", SECRET)]
    {
        assert!(!text.contains(secret), "the {name} reached the logs");
    }
    // The token's signature alone neither (a log line could cut the token at its dots).
    let signature = token.rsplit('.').next().unwrap();
    assert!(!text.contains(signature), "the token's signature reached the logs");
}
