//! The fault-injection seam, one test per point: a job whose iteration fails (an error) or
//! panics at a named point, in an iteration or half-way through writing a checkpoint, resumes to
//! exactly the weights of an uninterrupted run, and records each iteration once.
//!
//! The jobs are real: the built-in model (tiny, warm-started for a few steps), the sandboxed
//! python tool, the verifier, GRPO updates and checkpoints.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use agentcore_agent::sandbox::PythonSandbox;
use agentcore_train::events::Event;
use agentcore_train::faults::{FaultAction, FaultPoint, Faults};
use agentcore_train::job::{JobContext, run};
use agentcore_train::settings::JobSettings;

fn settings() -> JobSettings {
    let mut s = JobSettings::embedded();
    s.n_tasks = 48;
    s.eval_fraction = 0.25;
    s.warm_start.steps = 6;
    s.warm_start.n_demos = 30;
    s.warm_start.batch_size = 4;
    s.warm_start.model.d_model = 32;
    s.warm_start.model.n_layers = 1;
    s.warm_start.model.n_heads = 2;
    s.warm_start.model.d_ff = 64;
    let c = &mut s.config;
    c.n_iterations = 4;
    c.batch_size = 3;
    c.n_trajectories_per_query = 3;
    c.max_completion_length = 24;
    c.max_steps_per_trajectory = 2;
    c.eval_interval = 1;
    c.checkpoint_interval = 2;
    c.learning_rate = 0.002;
    c.reward_shaping.enabled = true;
    c.seed = 5;
    assert!(s.violations().is_empty(), "{:?}", s.violations());
    s
}

fn ctx(data: &Path, job: &str, faults: Faults) -> JobContext {
    JobContext {
        data_dir: data.to_path_buf(),
        job_id: job.to_owned(),
        stop: Arc::new(AtomicBool::new(false)),
        faults,
        artifacts: Arc::new(agentcore_artifacts::Artifacts::local()),
        recorded_checkpoints: None,
    }
}

fn final_weights(data: &Path, job: &str) -> Vec<u8> {
    let ckpt = data.join("runs").join(job).join("checkpoints/ckpt-00004/model.safetensors");
    std::fs::read(&ckpt).unwrap_or_else(|e| panic!("{}: {e}", ckpt.display()))
}

#[test]
fn every_fault_point_resumes_to_the_uninterrupted_weights() {
    let sandbox = Arc::new(PythonSandbox::detect().expect("python3 and the sandbox launcher"));
    let data = tempfile::tempdir().unwrap();
    let settings = settings();
    run(
        &settings,
        &ctx(data.path(), "clean", Faults::default()),
        Arc::clone(&sandbox),
        &mut |_| {},
    )
    .expect("the uninterrupted run");
    let expected = final_weights(data.path(), "clean");
    let at_2 =
        std::fs::read(data.path().join("runs/clean/checkpoints/ckpt-00002/model.safetensors"))
            .unwrap();
    assert!(
        at_2 != expected,
        "iterations 3 and 4 change the weights (else equal ones prove nothing)"
    );
    for point in FaultPoint::ALL {
        // Iteration 3 lies between the checkpoints of 2 and 4; the checkpoint fault hits the
        // write of checkpoint 4 (the first one written after iteration 3).
        let iteration = if point == FaultPoint::Checkpoint { 4 } else { 3 };
        for action in [FaultAction::Error, FaultAction::Panic] {
            let job = format!("{}-{action:?}", point.name());
            let faults = Faults::default();
            faults.inject(point, iteration, action);
            let ctx_faulty = ctx(data.path(), &job, faults);
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run(&settings, &ctx_faulty, Arc::clone(&sandbox), &mut |_| {})
            }));
            match (action, outcome) {
                (FaultAction::Error, Ok(Err(e))) => {
                    assert!(e.to_string().contains("injected fault"), "{job}: {e}");
                }
                (FaultAction::Panic, Err(_)) => {}
                (_, other) => {
                    panic!("{job}: the fault did not fire: {:?}", other.map(|r| r.map(|_| ())))
                }
            }
            // Wall time (and with it cost) is cumulative across segments: the resumed job counts
            // the time up to its checkpoint.
            let at_checkpoint: serde_json::Value = serde_json::from_slice(
                &std::fs::read(
                    data.path()
                        .join("runs")
                        .join(&job)
                        .join("checkpoints/ckpt-00002/job_state.json"),
                )
                .unwrap(),
            )
            .unwrap();
            let wall_before = at_checkpoint["wall_seconds"].as_f64().unwrap();
            assert!(wall_before > 0.0, "{job}");
            let mut iterations = Vec::new();
            let resumed = run(
                &settings,
                &ctx(data.path(), &job, Faults::default()),
                Arc::clone(&sandbox),
                &mut |e| match e {
                    Event::Started { resumed_from, .. } => {
                        assert_eq!(*resumed_from, Some(2), "{job}")
                    }
                    Event::Iteration(m) => iterations.push(m.iteration),
                    _ => {}
                },
            )
            .unwrap_or_else(|e| panic!("{job}: resume failed: {e}"));
            assert_eq!(iterations, vec![3, 4], "{job}: iterations run after the resume");
            assert_eq!(resumed.iterations, 4, "{job}");
            assert!(
                resumed.wall_seconds > wall_before,
                "{job}: {} <= {wall_before}",
                resumed.wall_seconds
            );
            assert!(final_weights(data.path(), &job) == expected, "{job}: weights differ");
        }
    }
}

/// Issue 14, finding 3: the warm start's compute was not held to the budget (a long one ran to
/// its end whatever `max_budget_usd` said). At $1 a second and a $0.50 budget, a 20,000-step warm
/// start stops after about half a second of compute; the job ends `budget_exhausted` before its
/// first iteration, and the partial warm start is not cached.
#[test]
fn a_warm_start_stops_when_it_has_used_up_the_budget() {
    let sandbox = Arc::new(PythonSandbox::detect().expect("python3 and the sandbox launcher"));
    let data = tempfile::tempdir().unwrap();
    let mut s = settings();
    s.warm_start.steps = 20_000;
    s.price_per_hour_usd = rust_decimal::Decimal::from(3600);
    s.config.max_budget_usd = rust_decimal::Decimal::new(50, 2);
    let mut last_step = 0;
    let summary = run(&s, &ctx(data.path(), "costly", Faults::default()), sandbox, &mut |e| {
        if let Event::WarmStart(p) = e {
            last_step = p.step;
        }
    })
    .expect("a job stopped by its budget ends normally");
    assert_eq!(summary.stop_reason, agentcore_train::events::StopReason::BudgetExhausted);
    assert_eq!(summary.iterations, 0);
    assert!(last_step > 0 && last_step < 20_000, "the warm start ran {last_step} steps");
    let cached = data.path().join("warmstart").read_dir().is_ok_and(|mut d| {
        d.any(|e| e.is_ok_and(|e| e.path().join("trainer_state.json").exists()))
    });
    assert!(!cached, "a partial warm start was cached");
}
