//! The store against a real SQLite file and a real PostgreSQL database (when
//! `AGENTCORE_TEST_POSTGRES_URL` names a server; CI starts one).

use agentcore_store::{
    BlockingStore, CheckpointRow, NewJob, Store, StoreError, TrajectoryFilter, TrajectoryRow,
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

fn trajectory(
    job: &str,
    iteration: u32,
    q: u32,
    s: u32,
    success: bool,
    reward: f64,
) -> TrajectoryRow {
    TrajectoryRow {
        id: 0,
        job_id: job.into(),
        iteration,
        query_index: q,
        sample_index: s,
        query: format!("query {q}"),
        expected_outcome: json!(q),
        success,
        reward,
        advantage: reward - 0.5,
        trajectory: json!({"steps": [], "tokens": {"ids": [1, 2, 3], "mask": [0, 1, 1]}}),
        created_at: String::new(),
    }
}

/// The stores each test runs against (a SQLite file in `dir`; a fresh PostgreSQL schema).
fn urls(dir: &std::path::Path) -> Vec<String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let urls = runtime.block_on(agentcore_store::testing::store_urls(dir)).unwrap();
    #[expect(clippy::print_stderr, reason = "a failing test says which database it ran on")]
    {
        eprintln!("stores: {urls:?}");
    }
    urls
}

#[test]
fn a_job_survives_reopening_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut urls = urls(dir.path());
    // The SQLite file's folders are made on open.
    urls[0] = dir.path().join("nested").join("agentcore.db").display().to_string();
    for url in urls {
        {
            let store = BlockingStore::connect(&url).expect("open");
            store
                .block_on(store.store().register_agent("seed-agent", &json!({"name": "seed"})))
                .expect("agent");
            store.block_on(store.store().start_job(&job("j1"))).expect("job");
            for i in 1..=3 {
                store
                    .block_on(store.store().record_iteration(
                        "j1",
                        i,
                        &json!({"avg_reward": f64::from(i) / 10.0}),
                        "0.01",
                    ))
                    .expect("iteration");
            }
            store
                .block_on(store.store().insert_trajectories(&[
                    trajectory("j1", 1, 0, 0, true, 1.0),
                    trajectory("j1", 1, 0, 1, false, 0.0),
                    trajectory("j1", 2, 0, 0, true, 1.0),
                ]))
                .expect("trajectories");
            store
                .block_on(store.store().record_checkpoint(&CheckpointRow {
                    id: "j1-ckpt-00002".into(),
                    job_id: "j1".into(),
                    iteration: 2,
                    path: "/runs/j1/checkpoints/ckpt-00002".into(),
                    eval_success_rate: Some(0.4),
                    deleted: false,
                    created_at: String::new(),
                }))
                .expect("checkpoint");
            store
                .block_on(store.store().record_event(
                    "j1",
                    agentcore_store::EventKind::JobStarted,
                    &json!({"a": 1}),
                ))
                .expect("event");
            store
                .block_on(store.store().finish_job(
                    "j1",
                    agentcore_store::JobStatus::Completed,
                    Some("completed"),
                    Some(&json!({"p": 0.01})),
                    Some("j1-ckpt-00002"),
                    None,
                ))
                .expect("finish");
        }
        let store = BlockingStore::connect(&url).expect("reopen");
        let j = store.block_on(store.store().job("j1")).expect("read").expect("exists");
        assert_eq!(j.status, "completed");
        assert_eq!(j.iterations_completed, 3);
        assert_eq!(j.cost_usd, "0.01");
        assert_eq!(j.budget_usd, "1.50");
        assert_eq!(j.best_checkpoint_id.as_deref(), Some("j1-ckpt-00002"));
        assert_eq!(j.summary, Some(json!({"p": 0.01})));
        assert!(j.finished_at.is_some());
        assert_eq!(
            store.block_on(store.store().agent("seed-agent")).expect("agent"),
            Some(json!({"name": "seed"}))
        );
        assert_eq!(store.block_on(store.store().agent("nobody")).expect("agent"), None);
        let its = store.block_on(store.store().iterations("j1")).expect("iterations");
        assert_eq!(its.iter().map(|i| i.0).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(its[1].1["avg_reward"], json!(0.2));
        let all = store
            .block_on(store.store().trajectories("j1", &TrajectoryFilter::default()))
            .expect("all");
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].trajectory["tokens"]["ids"], json!([1, 2, 3]));
        let ok = store
            .block_on(store.store().trajectories(
                "j1",
                &TrajectoryFilter { success_only: true, ..TrajectoryFilter::default() },
            ))
            .expect("success");
        assert_eq!(ok.len(), 2);
        assert!(ok.iter().all(|t| t.success));
        let paged = store
            .block_on(store.store().trajectories(
                "j1",
                &TrajectoryFilter { limit: Some(1), offset: 1, ..TrajectoryFilter::default() },
            ))
            .expect("page");
        assert_eq!(paged.len(), 1);
        assert_eq!((paged[0].iteration, paged[0].sample_index), (1, 1));
        let rich = store
            .block_on(store.store().trajectories(
                "j1",
                &TrajectoryFilter { min_reward: Some(0.5), ..TrajectoryFilter::default() },
            ))
            .expect("min reward");
        assert_eq!(rich.len(), 2);
        let events = store.block_on(store.store().events("j1")).expect("events");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, agentcore_store::EventKind::JobStarted);
        assert_eq!(
            store.block_on(store.store().checkpoints("j1")).expect("checkpoints")[0]
                .eval_success_rate,
            Some(0.4)
        );
    }
}

#[test]
fn resuming_forgets_iterations_after_the_checkpoint_and_replaces_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    for url in urls(dir.path()) {
        let store = BlockingStore::connect(&url).expect("open");
        store.block_on(store.store().start_job(&job("j2"))).expect("job");
        for i in 1..=3 {
            store
                .block_on(store.store().record_iteration("j2", i, &json!({"i": i}), "0"))
                .expect("iteration");
            store
                .block_on(
                    store.store().insert_trajectories(&[trajectory("j2", i, 0, 0, false, 0.0)]),
                )
                .expect("t");
        }
        store.block_on(store.store().forget_after("j2", 1)).expect("forget");
        assert_eq!(store.block_on(store.store().iterations("j2")).expect("its").len(), 1);
        assert_eq!(
            store
                .block_on(store.store().trajectories("j2", &TrajectoryFilter::default()))
                .expect("t")
                .len(),
            1
        );
        assert_eq!(
            store
                .block_on(store.store().job("j2"))
                .expect("job")
                .expect("exists")
                .iterations_completed,
            1
        );
        // The second attempt writes the same keys again without a conflict.
        store.block_on(store.store().start_job(&job("j2"))).expect("restart");
        store
            .block_on(store.store().record_iteration("j2", 2, &json!({"i": 22}), "0"))
            .expect("again");
        store
            .block_on(store.store().insert_trajectories(&[trajectory("j2", 1, 0, 0, true, 1.0)]))
            .expect("replace");
        let t = store
            .block_on(store.store().trajectories("j2", &TrajectoryFilter::default()))
            .expect("t");
        assert_eq!(t.len(), 1);
        assert!(t[0].success);
        assert_eq!(
            store.block_on(store.store().job("j2")).expect("job").expect("exists").status,
            "running"
        );
    }
}

/// Issue 14, finding 9: a resumed job that runs an iteration again used to record its
/// `training.iteration` event twice (WebSocket followers and webhooks saw duplicates).
#[test]
fn an_iterations_events_are_recorded_once_per_job() {
    use agentcore_store::EventKind;
    let dir = tempfile::tempdir().expect("tempdir");
    for url in urls(dir.path()) {
        let store = BlockingStore::connect(&url).expect("open");
        let db = store.store();
        store.block_on(db.start_job(&job("j3"))).expect("job");
        for _attempt in 0..3 {
            store.block_on(db.record_event("j3", EventKind::JobStarted, &json!({}))).expect("e");
            store
                .block_on(db.record_event("j3", EventKind::Baseline, &json!({"s": 0.5})))
                .expect("e");
            for i in 1..=2 {
                store
                    .block_on(db.record_event("j3", EventKind::Iteration, &json!({"iteration": i})))
                    .expect("e");
                store
                    .block_on(db.record_event(
                        "j3",
                        EventKind::CheckpointSaved,
                        &json!({"iteration": i, "checkpoint_id": format!("c{i}")}),
                    ))
                    .expect("e");
            }
        }
        let kinds: Vec<String> = store
            .block_on(db.events("j3"))
            .expect("events")
            .iter()
            .map(|e| format!("{}:{}", e.kind.as_str(), e.payload["iteration"]))
            .collect();
        assert_eq!(
            kinds,
            [
                "training.job.started:null",
                "training.baseline:null",
                "training.iteration:1",
                "training.checkpoint.saved:1",
                "training.iteration:2",
                "training.checkpoint.saved:2",
                "training.job.started:null",
                "training.job.started:null",
            ],
            "{url}"
        );
    }
}

/// The PostgreSQL migrations declare the same tables and columns as the SQLite ones.
#[test]
fn migration_folders_are_in_step() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let schema = |db: &str| -> Vec<(String, Vec<String>)> {
        let mut files: Vec<_> = std::fs::read_dir(root.join(db))
            .expect("folder")
            .map(|e| e.expect("entry").path())
            .collect();
        files.sort();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().expect("name").to_string_lossy().into_owned())
            .collect();
        let mut out = vec![("files".to_string(), names)];
        for f in files {
            let text = std::fs::read_to_string(&f).expect("read");
            for block in text.split("CREATE TABLE ").skip(1) {
                let name = block.split_whitespace().next().expect("table").to_string();
                let body = &block[block.find('(').expect("(") + 1..block.find(");").expect(");")];
                let columns = body
                    .lines()
                    .map(str::trim)
                    .filter(|l| {
                        !l.is_empty() && !l.starts_with("PRIMARY") && !l.starts_with("UNIQUE")
                    })
                    .map(|l| l.split_whitespace().next().expect("column").to_string())
                    .collect();
                out.push((name, columns));
            }
            for line in text.lines().filter(|l| l.starts_with("ALTER TABLE ")) {
                let words: Vec<&str> = line.split_whitespace().collect();
                // ALTER TABLE <table> ADD COLUMN <column> ...
                out.push((format!("alter {}", words[2]), vec![words[5].to_string()]));
            }
        }
        out
    };
    let sqlite = schema("sqlite");
    assert!(sqlite.len() > 5, "{sqlite:?}");
    assert_eq!(sqlite, schema("postgres"));
}

/// `Store::connect` takes `postgres://`, `sqlite://PATH`, `sqlite:PATH` and plain paths, and
/// names the rule for anything else.
#[test]
fn database_urls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        for url in [
            format!("sqlite://{}", dir.path().join("a.db").display()),
            format!("sqlite:{}", dir.path().join("b.db").display()),
        ] {
            let store = Store::connect(&url).await.expect("sqlite url");
            assert_eq!(store.backend(), agentcore_store::Backend::Sqlite);
            assert!(!store.location().starts_with("sqlite"), "{}", store.location());
            store.close().await;
        }
        assert!(dir.path().join("a.db").exists() && dir.path().join("b.db").exists());
        for bad in ["mysql://root@localhost/db", "sqlite:", "sqlite::memory:"] {
            let err = Store::connect(bad).await.expect_err(bad);
            assert!(matches!(err, StoreError::Url { .. }), "{bad}: {err}");
            assert!(err.to_string().contains("postgres://"), "{err}");
        }
        // A password never reaches a message.
        let err =
            Store::connect("postgres://user:hunter2@127.0.0.1:1/db").await.expect_err("port 1");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(err.to_string().contains("***"), "{err}");
    });
}

/// The latest validation score is read from the iterations' JSON (a database-specific
/// expression).
#[test]
fn last_validation_reads_the_newest_scored_iteration() {
    let dir = tempfile::tempdir().expect("tempdir");
    for url in urls(dir.path()) {
        let store = BlockingStore::connect(&url).expect("open");
        store.block_on(store.store().start_job(&job("v"))).expect("job");
        assert_eq!(store.block_on(store.store().last_validation("v")).expect("none"), None);
        for (i, metrics) in [
            json!({"eval_success_rate": 0.25}),
            json!({"eval_success_rate": 0.5, "avg_reward": 1}),
            json!({"eval_success_rate": null}),
            json!({"avg_reward": 0.1}),
        ]
        .iter()
        .enumerate()
        {
            let i = u32::try_from(i).unwrap() + 1;
            store.block_on(store.store().record_iteration("v", i, metrics, "0")).expect("it");
        }
        assert_eq!(store.block_on(store.store().last_validation("v")).expect("v"), Some(0.5));
    }
}

/// Concurrent writers that read before they write (deploy reads the active row and the last
/// version). On SQLite, a deferred transaction whose snapshot another connection's commit made
/// stale failed at once with "database is locked" (CI saw it as an internal error of
/// `training.deploy_checkpoint`); on PostgreSQL, two deploys could read the same version.
#[test]
fn concurrent_deploys_to_one_environment_take_each_version_once() {
    use agentcore_store::{EventKind, NewDeployment};
    const DEPLOYS: usize = 24;
    let dir = tempfile::tempdir().expect("tempdir");
    for url in urls(dir.path()) {
        let store = BlockingStore::connect(&url).expect("open");
        let db = store.store().clone();
        store.block_on(db.start_job(&job("j4"))).expect("job");
        let results = store.block_on(async {
            let tasks: Vec<_> = (0..DEPLOYS)
                .map(|i| {
                    let db = db.clone();
                    tokio::spawn(async move {
                        // Event writes interleave with the deploys, as the worker's do.
                        db.record_event("j4", EventKind::JobStarted, &json!({ "i": i })).await?;
                        db.deploy(&NewDeployment {
                            id: format!("d{i}"),
                            org: "acme".into(),
                            agent_id: "seed-agent".into(),
                            environment: "production".into(),
                            job_id: "j4".into(),
                            checkpoint_id: format!("c{i}"),
                            evaluation: None,
                            forced: false,
                            deployed_by: "test".into(),
                            note: None,
                        })
                        .await
                    })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.expect("task"));
            }
            out
        });
        let mut versions: Vec<i64> =
            results.into_iter().map(|r| r.expect("every deploy succeeds").version).collect();
        versions.sort_unstable();
        let expected: Vec<i64> = (1..=i64::try_from(DEPLOYS).unwrap()).collect();
        assert_eq!(versions, expected, "{url}");
        let (rows, total) = store
            .block_on(db.deployments("acme", "seed-agent", Some("production"), 100, 0))
            .expect("list");
        assert_eq!(total, u64::try_from(DEPLOYS).unwrap(), "{url}");
        let active: Vec<_> = rows.iter().filter(|d| d.status == "active").collect();
        assert_eq!(active.len(), 1, "{url}");
        // The active one is the newest, and each earlier one is the previous of the next.
        assert_eq!(active[0].version, i64::try_from(DEPLOYS).unwrap(), "{url}");
        let by_version = |v: i64| rows.iter().find(|d| d.version == v).unwrap();
        for v in 2..=i64::try_from(DEPLOYS).unwrap() {
            assert_eq!(by_version(v).previous_id.as_deref(), Some(by_version(v - 1).id.as_str()));
        }
    }
}

/// A nullable float column written null, then a value, then null again, on one connection's
/// cached statement (sqlx 0.9's `Any` declares a null `f64` as `float4` to PostgreSQL, and a
/// statement prepared with it refused the next `f64` with "incorrect binary data format").
#[test]
fn nullable_floats_alternate_between_null_and_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    for url in urls(dir.path()) {
        let store = BlockingStore::connect(&url).expect("open");
        store.block_on(store.store().start_job(&job("j1"))).expect("job");
        let rates = [None, Some(0.5), None, Some(0.1 + 0.2), Some(0.75), None];
        for (i, rate) in rates.iter().enumerate() {
            let row = agentcore_store::CheckpointRow {
                id: format!("c{i}"),
                job_id: "j1".into(),
                iteration: u32::try_from(i).unwrap(),
                path: format!("/ckpt/{i}"),
                eval_success_rate: *rate,
                deleted: false,
                created_at: String::new(),
            };
            store.block_on(store.store().record_checkpoint(&row)).unwrap_or_else(|e| {
                panic!("{url}: checkpoint {i} with {rate:?}: {e}");
            });
        }
        let back: Vec<Option<f64>> = store
            .block_on(store.store().checkpoints("j1"))
            .expect("checkpoints")
            .into_iter()
            .map(|c| c.eval_success_rate)
            .collect();
        assert_eq!(back, rates, "{url}");
    }
}
