//! The job queue against a real SQLite file and a real PostgreSQL database (when
//! `AGENTCORE_TEST_POSTGRES_URL` names a server; CI starts one): claims, leases, heartbeats,
//! cancellation, listing, webhooks; and two workers (two connection pools, as two processes
//! would have) racing.

use std::time::Duration;

use agentcore_store::{
    CancelOutcome, EventKind, JobFilter, JobStatus, NewJob, Store, WebhookDelivery, WebhookRow,
};
use serde_json::json;

fn job(id: &str) -> NewJob {
    NewJob {
        id: id.into(),
        agent_id: "seed-agent".into(),
        settings: json!({"config": {"n_iterations": 3}}),
        total_iterations: 3,
        budget_usd: "1.50".into(),
        run_dir: format!("/runs/{id}"),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// The stores each test runs against (a SQLite file in `dir`; a fresh PostgreSQL schema).
async fn urls(dir: &std::path::Path) -> Vec<String> {
    let urls = agentcore_store::testing::store_urls(dir).await.unwrap();
    #[expect(clippy::print_stderr, reason = "a failing test says which database it ran on")]
    {
        eprintln!("stores: {urls:?}");
    }
    urls
}

const LONG: Duration = Duration::from_secs(60);

#[test]
fn claims_in_order_renews_and_hands_over_an_expired_lease() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        for url in urls(dir.path()).await {
            let s = Store::connect(&url).await.unwrap();
            assert!(s.claim_job("w1", LONG).await.unwrap().is_none());
            s.enqueue_job(&job("a"), "org1", "alice", Some(&json!({"team": "x"}))).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
            s.enqueue_job(&job("b"), "org1", "alice", None).await.unwrap();
            let queued = s.job("a").await.unwrap().unwrap();
            assert_eq!(queued.status, "queued");
            assert_eq!(queued.metadata, Some(json!({"team": "x"})));

            let first = s.claim_job("w1", LONG).await.unwrap().unwrap();
            assert_eq!((first.id.as_str(), first.status.as_str()), ("a", "running"));
            assert_eq!(first.lease_owner.as_deref(), Some("w1"));
            assert_eq!(first.attempts, 1);
            assert!(first.started_at.is_some());
            // w1 holds `a` on a short lease: w2 gets `b`, then nothing.
            let lease = s.heartbeat("a", "w1", Duration::from_millis(50)).await.unwrap();
            assert!(lease.held && !lease.cancel_requested);
            assert_eq!(s.claim_job("w2", LONG).await.unwrap().unwrap().id, "b");
            assert!(s.claim_job("w2", LONG).await.unwrap().is_none());
            // A stranger's heartbeat does not hold the lease.
            assert!(!s.heartbeat("a", "w2", LONG).await.unwrap().held);
            // w1 dies: after the lease expires, w3 takes `a` over.
            tokio::time::sleep(Duration::from_millis(80)).await;
            let taken = s.claim_job("w3", LONG).await.unwrap().unwrap();
            assert_eq!((taken.id.as_str(), taken.attempts), ("a", 2));
            assert_eq!(taken.started_at, first.started_at, "the first start is kept");
            // w1 comes back: its heartbeat and its finish are refused.
            assert!(!s.heartbeat("a", "w1", LONG).await.unwrap().held);
            assert!(
                !s.finish_leased_job("a", "w1", JobStatus::Failed, None, None, None, Some("x"))
                    .await
                    .unwrap()
            );
            assert_eq!(s.job("a").await.unwrap().unwrap().status, "running");
            assert!(
                s.finish_leased_job(
                    "a",
                    "w3",
                    JobStatus::Completed,
                    Some("completed"),
                    None,
                    None,
                    None
                )
                .await
                .unwrap()
            );
            let done = s.job("a").await.unwrap().unwrap();
            assert_eq!(done.status, "completed");
            assert_eq!(done.lease_owner, None);
            // A finished job is never claimed again, even with an old lease time.
            assert!(s.claim_job("w4", LONG).await.unwrap().is_none());
        }
    });
}

#[test]
fn cancel_queued_running_and_finished_jobs() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        for url in urls(dir.path()).await {
            let s = Store::connect(&url).await.unwrap();
            s.enqueue_job(&job("run"), "o", "u", None).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
            s.enqueue_job(&job("wait"), "o", "u", None).await.unwrap();
            assert_eq!(s.claim_job("w", LONG).await.unwrap().unwrap().id, "run");

            assert_eq!(
                s.request_cancel("wait", Some("changed my mind")).await.unwrap(),
                CancelOutcome::Cancelled
            );
            let w = s.job("wait").await.unwrap().unwrap();
            assert_eq!(
                (w.status.as_str(), w.stop_reason.as_deref()),
                ("cancelled", Some("cancelled"))
            );
            assert!(w.finished_at.is_some());
            assert!(
                s.claim_job("w2", LONG).await.unwrap().is_none(),
                "a cancelled job is not claimed"
            );

            assert_eq!(s.request_cancel("run", None).await.unwrap(), CancelOutcome::Requested);
            let lease = s.heartbeat("run", "w", LONG).await.unwrap();
            assert!(lease.held && lease.cancel_requested);

            assert_eq!(
                s.request_cancel("wait", None).await.unwrap(),
                CancelOutcome::Finished(JobStatus::Cancelled)
            );
            assert_eq!(s.request_cancel("nope", None).await.unwrap(), CancelOutcome::NotFound);
        }
    });
}

#[test]
fn lists_with_filters_pages_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        for url in urls(dir.path()).await {
            let s = Store::connect(&url).await.unwrap();
            for i in 0..5 {
                let org = if i < 3 { "o1" } else { "o2" };
                let mut j = job(&format!("j{i}"));
                if i == 4 {
                    j.agent_id = "other-agent".into();
                }
                s.enqueue_job(&j, org, "u", None).await.unwrap();
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            s.claim_job("w", LONG).await.unwrap();
            let all =
                |org: &str| JobFilter { org: Some(org.into()), limit: 50, ..JobFilter::default() };
            let (jobs, total) = s.list_jobs(&all("o1")).await.unwrap();
            assert_eq!(total, 3);
            assert_eq!(jobs.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(), ["j2", "j1", "j0"]);
            let page = JobFilter { limit: 1, offset: 1, ..all("o1") };
            let (jobs, total) = s.list_jobs(&page).await.unwrap();
            assert_eq!((jobs.len(), jobs[0].id.as_str(), total), (1, "j1", 3));
            let running = JobFilter { status: Some(JobStatus::Running), ..all("o1") };
            let (jobs, total) = s.list_jobs(&running).await.unwrap();
            assert_eq!((jobs[0].id.as_str(), total), ("j0", 1));
            let agent = JobFilter { agent_id: Some("other-agent".into()), ..all("o2") };
            assert_eq!(s.list_jobs(&agent).await.unwrap().1, 1);
            assert_eq!(s.list_jobs(&all("o3")).await.unwrap().1, 0);
            let counts = s.job_counts().await.unwrap();
            assert_eq!(counts, vec![(JobStatus::Queued, 4), (JobStatus::Running, 1)]);
        }
    });
}

/// Two workers with their own connection pools race for one job, 100 times: exactly one wins
/// each time.
#[test]
fn two_workers_never_claim_the_same_job() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        for url in urls(dir.path()).await {
            let a = Store::connect(&url).await.unwrap();
            let b = Store::connect(&url).await.unwrap();
            for trial in 0..100 {
                let id = format!("job-{trial}");
                a.enqueue_job(&job(&id), "o", "u", None).await.unwrap();
                let ta = tokio::spawn({
                    let a = a.clone();
                    async move { a.claim_job("worker-a", LONG).await.unwrap() }
                });
                let tb = tokio::spawn({
                    let b = b.clone();
                    async move { b.claim_job("worker-b", LONG).await.unwrap() }
                });
                let (ra, rb) = (ta.await, tb.await);
                let winners: Vec<String> =
                    [ra.unwrap(), rb.unwrap()].into_iter().flatten().map(|j| j.id).collect();
                assert_eq!(winners, vec![id.clone()], "trial {trial}");
                let row = a.job(&id).await.unwrap().unwrap();
                assert_eq!(row.attempts, 1, "trial {trial}: claimed twice");
                a.finish_job(&id, JobStatus::Completed, None, None, None, None).await.unwrap();
            }
        }
    });
}

#[test]
fn webhooks_events_and_the_delivery_log() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        for url in urls(dir.path()).await {
            let s = Store::connect(&url).await.unwrap();
            let hook = WebhookRow {
                id: "sub1".into(),
                org: "o".into(),
                url: "https://example.com/hook".into(),
                events: vec!["training.job.completed".into()],
                secret: "whsec_abc".into(),
                created_at: String::new(),
            };
            s.add_webhook(&hook).await.unwrap();
            let hooks = s.webhooks("o").await.unwrap();
            assert_eq!(hooks.len(), 1);
            assert_eq!(
                (hooks[0].url.as_str(), hooks[0].events.clone()),
                (hook.url.as_str(), hook.events)
            );
            assert!(s.webhooks("other").await.unwrap().is_empty());
            for attempt in 1..=2 {
                s.record_delivery(&WebhookDelivery {
                    subscription_id: "sub1".into(),
                    message_id: "msg_1".into(),
                    event: "training.job.completed".into(),
                    attempt,
                    status_code: (attempt == 2).then_some(200),
                    error: (attempt == 1).then(|| "connection refused".into()),
                    created_at: String::new(),
                })
                .await
                .unwrap();
            }
            let log = s.deliveries("sub1").await.unwrap();
            assert_eq!(
                log.iter().map(|d| (d.attempt, d.status_code)).collect::<Vec<_>>(),
                [(1, None), (2, Some(200))]
            );

            s.enqueue_job(&job("j"), "o", "u", None).await.unwrap();
            assert_eq!(s.last_event_id().await.unwrap(), 0);
            for k in 0..3 {
                s.record_event("j", EventKind::Iteration, &json!({"iteration": k})).await.unwrap();
            }
            let first = s.events_after(Some("j"), 0, 2).await.unwrap();
            assert_eq!(first.len(), 2);
            let rest = s.events_after(None, first[1].id, 10).await.unwrap();
            assert_eq!(rest.len(), 1);
            assert_eq!(rest[0].payload, json!({"iteration": 2}));
            assert_eq!(s.last_event_id().await.unwrap(), rest[0].id);
        }
    });
}

/// Events written by many writers at once become visible in id order: a reader tailing by id
/// (the WebSocket, the webhook deliverer) sees every one of them.
#[test]
fn a_tail_by_id_misses_no_event_of_concurrent_writers() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        for url in urls(dir.path()).await {
            let s = Store::connect(&url).await.unwrap();
            for w in 0..4 {
                s.enqueue_job(&job(&format!("j{w}")), "o", "u", None).await.unwrap();
            }
            let writers: Vec<_> = (0..4)
                .map(|w| {
                    let s = s.clone();
                    tokio::spawn(async move {
                        for k in 0..50 {
                            s.record_event(
                                &format!("j{w}"),
                                EventKind::Iteration,
                                &json!({"k": k}),
                            )
                            .await
                            .unwrap();
                        }
                    })
                })
                .collect();
            let (mut seen, mut after) = (0, 0);
            while seen < 200 {
                // Writers done before this read: an empty read means the tail is complete.
                let finished = writers.iter().all(tokio::task::JoinHandle::is_finished);
                let batch = s.events_after(None, after, 7).await.unwrap();
                for e in &batch {
                    assert!(e.id > after);
                    after = e.id;
                }
                seen += batch.len();
                if batch.is_empty() {
                    if finished {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
            }
            for w in writers {
                w.await.unwrap();
            }
            assert_eq!(seen, 200, "{url}: the tail missed events");
        }
    });
}

/// The webhook outbox: the cursor moves with the messages in one transaction (a second
/// deliverer with a stale cursor writes nothing), a claimed message is held for its lease, a
/// failed attempt comes back after its backoff, and a message whose deliverer died is taken up
/// again after the lease.
#[test]
fn the_webhook_outbox_claims_retries_and_recovers_messages() {
    use agentcore_store::{AttemptOutcome, OutboxMessage};
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        for url in urls(dir.path()).await {
            let s = Store::connect(&url).await.unwrap();
            let hook = WebhookRow {
                id: "sub".into(),
                org: "o".into(),
                url: "https://example.com/h".into(),
                events: vec![],
                secret: "whsec_x".into(),
                created_at: String::new(),
            };
            s.add_webhook(&hook).await.unwrap();
            let msg = |n: u32| OutboxMessage {
                message_id: format!("msg_{n}"),
                subscription_id: "sub".into(),
                event: "training.job.completed".into(),
                body: format!("{{\"n\": {n}}}"),
            };
            assert_eq!(s.webhook_cursor().await.unwrap(), 0);
            assert!(s.enqueue_webhooks(0, 5, &[msg(1), msg(2)]).await.unwrap());
            assert!(!s.enqueue_webhooks(0, 7, &[msg(3)]).await.unwrap(), "stale cursor");
            assert_eq!(s.webhook_cursor().await.unwrap(), 5);

            let a = s.claim_webhook("d1", LONG).await.unwrap().unwrap();
            let b = s.claim_webhook("d2", Duration::from_millis(50)).await.unwrap().unwrap();
            assert_eq!(
                (a.message.message_id.as_str(), b.message.message_id.as_str()),
                ("msg_1", "msg_2")
            );
            assert!(s.claim_webhook("d3", LONG).await.unwrap().is_none(), "both are held");
            // d1's attempt fails: due again after its backoff, not before.
            let retry = AttemptOutcome::RetryAfter(Duration::from_millis(100));
            assert!(s.finish_webhook_attempt(a.id, "d1", retry).await.unwrap());
            assert!(s.claim_webhook("d3", LONG).await.unwrap().is_none());
            // d2 dies holding msg_2; after its lease, and msg_1's backoff, both come back.
            tokio::time::sleep(Duration::from_millis(150)).await;
            let mut again = vec![
                s.claim_webhook("d3", LONG).await.unwrap().unwrap(),
                s.claim_webhook("d3", LONG).await.unwrap().unwrap(),
            ];
            again.sort_by_key(|c| c.id);
            assert_eq!(
                again
                    .iter()
                    .map(|c| (c.message.message_id.as_str(), c.attempts))
                    .collect::<Vec<_>>(),
                [("msg_1", 1), ("msg_2", 0)]
            );
            // The dead deliverer's late report is refused.
            assert!(
                !s.finish_webhook_attempt(b.id, "d2", AttemptOutcome::Delivered).await.unwrap()
            );
            for c in &again {
                assert!(
                    s.finish_webhook_attempt(c.id, "d3", AttemptOutcome::Delivered).await.unwrap()
                );
            }
            assert!(s.claim_webhook("d4", Duration::ZERO).await.unwrap().is_none(), "done");
            assert_eq!(s.outbox_counts().await.unwrap(), [("delivered".to_string(), 2)]);
        }
    });
}

/// Issue 14, finding 2: a job whose worker dies running it (the server aborted allocating 1 TB)
/// was claimed again after every restart: a crash loop. After MAX_JOB_ATTEMPTS claims that ended
/// in an expired lease it fails with the reason; a clean hand-over (shutdown) does not count.
#[test]
fn a_job_whose_worker_keeps_dying_fails_at_the_attempt_cap() {
    use agentcore_store::MAX_JOB_ATTEMPTS;
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        for url in urls(dir.path()).await {
            let s = Store::connect(&url).await.unwrap();
            s.enqueue_job(&job("doomed"), "org1", "alice", None).await.unwrap();
            // Clean hand-overs (a worker shutting down) do not use attempts up.
            for _ in 0..MAX_JOB_ATTEMPTS + 2 {
                let claimed = s.claim_job("w", LONG).await.unwrap().unwrap();
                assert_eq!(claimed.attempts, 1);
                s.release_lease("doomed", "w").await.unwrap();
            }
            // Each claim ends with the worker gone (its lease expires at once).
            for k in 1..=MAX_JOB_ATTEMPTS {
                let claimed = s.claim_job("w", Duration::ZERO).await.unwrap().unwrap();
                assert_eq!(claimed.attempts, k);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert!(s.claim_job("w", LONG).await.unwrap().is_none(), "claimed past the cap");
            let row = s.job("doomed").await.unwrap().unwrap();
            assert_eq!(row.status, "failed");
            assert!(row.error.as_deref().unwrap_or("").contains("attempt cap"), "{row:?}");
        }
    });
}

/// A stale lease holder (a worker stopped by SIGSTOP, or cut off, past its lease) comes back
/// after another worker took the job over: every write it tries about the job is refused and
/// leaves nothing behind, while the new holder's writes go through; once the job is finished
/// even its last holder writes nothing more.
#[test]
fn a_stale_workers_writes_are_refused_once_the_job_is_taken_over() {
    use agentcore_store::{CheckpointRow, StoreError, TrajectoryFilter, TrajectoryRow};
    let row = |iteration: u32, q: u32| TrajectoryRow {
        id: 0,
        job_id: "f".into(),
        iteration,
        query_index: q,
        sample_index: 0,
        query: format!("q{q}"),
        expected_outcome: json!(q),
        success: true,
        reward: 1.0,
        advantage: 0.5,
        trajectory: json!({"steps": []}),
        created_at: String::new(),
    };
    let ckpt = |iteration: u32| CheckpointRow {
        id: format!("f-ckpt-{iteration}"),
        job_id: "f".into(),
        iteration,
        path: format!("checkpoints/ckpt-{iteration:05}"),
        eval_success_rate: Some(0.5),
        deleted: false,
        created_at: String::new(),
    };
    let refused = |r: agentcore_store::Result<()>, what: &str| match r {
        Err(StoreError::LeaseLost { job_id, worker }) => {
            assert_eq!((job_id.as_str(), worker.as_str()), ("f", "w1"), "{what}");
        }
        other => panic!("{what}: expected LeaseLost, got {other:?}"),
    };
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        for url in urls(dir.path()).await {
            let s = Store::connect(&url).await.unwrap();
            s.enqueue_job(&job("f"), "o", "u", None).await.unwrap();
            // w1 claims it on a lease that has run out by the time anyone looks again.
            assert_eq!(s.claim_job("w1", Duration::ZERO).await.unwrap().unwrap().id, "f");
            let w1 = s.fenced("f", "w1");
            w1.insert_trajectories(&[row(1, 0)]).await.unwrap();
            w1.record_iteration("f", 1, &json!({"iteration": 1}), "0.1").await.unwrap();
            w1.record_checkpoint(&ckpt(1)).await.unwrap();
            w1.record_event("f", EventKind::Iteration, &json!({"iteration": 1})).await.unwrap();

            // w2 takes the job over (the lease is expired: the claim succeeds at once).
            let taken = s.claim_job("w2", LONG).await.unwrap().expect("takeover");
            assert_eq!((taken.id.as_str(), taken.attempts), ("f", 2));
            let events_before = s.events("f").await.unwrap().len();

            // w1 wakes up mid-iteration 2 and tries everything a worker writes.
            refused(w1.insert_trajectories(&[row(2, 0), row(2, 1)]).await, "trajectories");
            refused(
                w1.record_iteration("f", 2, &json!({"iteration": 2}), "0.2").await,
                "iteration",
            );
            refused(w1.record_checkpoint(&ckpt(2)).await, "checkpoint");
            refused(w1.mark_checkpoint_deleted("f-ckpt-1").await, "retention");
            refused(
                w1.record_event("f", EventKind::Iteration, &json!({"iteration": 2})).await,
                "event",
            );
            refused(w1.forget_after("f", 0).await, "forget");
            // Nothing of it landed.
            let all = TrajectoryFilter::default();
            let rows = s.trajectories("f", &all).await.unwrap();
            assert_eq!(rows.iter().map(|r| r.iteration).collect::<Vec<_>>(), vec![1], "{url}");
            assert_eq!(s.iterations("f").await.unwrap().len(), 1, "{url}");
            let kept = s.checkpoints("f").await.unwrap();
            assert_eq!(kept.len(), 1, "{url}");
            assert!(!kept[0].deleted, "{url}");
            assert_eq!(s.events("f").await.unwrap().len(), events_before, "{url}");
            assert_eq!(s.job("f").await.unwrap().unwrap().iterations_completed, 1, "{url}");

            // The holder's writes go through.
            let w2 = s.fenced("f", "w2");
            w2.forget_after("f", 1).await.unwrap();
            w2.insert_trajectories(&[row(2, 0)]).await.unwrap();
            w2.record_iteration("f", 2, &json!({"iteration": 2}), "0.2").await.unwrap();
            w2.record_checkpoint(&ckpt(2)).await.unwrap();
            w2.record_event("f", EventKind::Iteration, &json!({"iteration": 2})).await.unwrap();
            assert_eq!(s.iterations("f").await.unwrap().len(), 2, "{url}");
            assert_eq!(s.checkpoints("f").await.unwrap().len(), 2, "{url}");
            // Finished: no more writes, even from the worker that finished it.
            assert!(
                s.finish_leased_job("f", "w2", JobStatus::Completed, None, None, None, None)
                    .await
                    .unwrap()
            );
            match w2.record_event("f", EventKind::Iteration, &json!({"iteration": 3})).await {
                Err(StoreError::LeaseLost { .. }) => {}
                other => panic!("a finished job took a write: {other:?}"),
            }
            // The unfenced store (the server, the CLI) is not affected.
            s.record_event("f", EventKind::JobCompleted, &json!({})).await.unwrap();
        }
    });
}

/// Preemption is not a crash loop: a job whose worker dies again and again but records a
/// checkpoint in between each time is claimed again every time; the cap counts claims since
/// the last checkpoint.
#[test]
fn a_job_that_makes_progress_between_deaths_is_never_capped() {
    use agentcore_store::{CheckpointRow, MAX_JOB_ATTEMPTS};
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        for url in urls(dir.path()).await {
            let s = Store::connect(&url).await.unwrap();
            s.enqueue_job(&job("preempted"), "org1", "alice", None).await.unwrap();
            for k in 1..=MAX_JOB_ATTEMPTS * 3 {
                // Claimed on a lease that runs out at once: the worker "dies" after its
                // checkpoint of iteration k.
                let claimed = claim_once_expired(&s, k, &url).await;
                assert_eq!(claimed.attempts, k, "{url}");
                s.fenced("preempted", "w")
                    .record_checkpoint(&CheckpointRow {
                        id: format!("preempted-ckpt-{k}"),
                        job_id: "preempted".into(),
                        iteration: k,
                        path: format!("checkpoints/ckpt-{k:05}"),
                        eval_success_rate: None,
                        deleted: false,
                        created_at: String::new(),
                    })
                    .await
                    .unwrap();
            }
            assert_eq!(s.job("preempted").await.unwrap().unwrap().status, "running", "{url}");
            // Without progress, it fails at the cap as before.
            for k in 1..MAX_JOB_ATTEMPTS {
                claim_once_expired(&s, k, &url).await;
            }
            // The last claim's lease has expired once a claim at a later millisecond sees it.
            let t = std::time::Instant::now();
            while s.job("preempted").await.unwrap().unwrap().status == "running" {
                assert!(s.claim_job("w", LONG).await.unwrap().is_none(), "claimed past the cap");
                assert!(t.elapsed() < Duration::from_secs(5), "never failed ({url})");
            }
            let row = s.job("preempted").await.unwrap().unwrap();
            assert_eq!(row.status, "failed", "{url}");
        }
    });
}

/// Claims the job on a lease that has run out as soon as the clock moves on: the claim is
/// retried until the previous lease (of the same length) has expired, i.e. until the next
/// millisecond, never longer than 5 s.
async fn claim_once_expired(s: &Store, k: u32, url: &str) -> agentcore_store::JobRow {
    let t = std::time::Instant::now();
    loop {
        if let Some(job) = s.claim_job("w", Duration::ZERO).await.unwrap() {
            return job;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "claim {k} refused ({url})");
        tokio::task::yield_now().await;
    }
}
