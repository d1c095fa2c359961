//! The warm start's demonstrations: the "right" expression of every seed family really solves its
//! tasks (checked by running it in the sandbox and verifying against `expected_outcome`), and the
//! "wrong" one is really wrong on most of them.

use std::sync::Arc;

use agentcore_agent::sandbox::{PythonSandbox, SandboxConfig, SandboxError};
use agentcore_tasks::seed::{FAMILIES, generate};
use agentcore_tasks::verify::{Tolerance, verify_result};
use agentcore_train::demos::{expressions, miscopy};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn sandbox() -> Arc<PythonSandbox> {
    let config = match SandboxConfig::detect() {
        Err(SandboxError::NoLauncher(_)) => {
            let status = std::process::Command::new(env!("CARGO"))
                .args(["build", "-q", "-p", "agentcore-agent", "--bin", "agentcore-sandbox"])
                .status()
                .expect("cargo");
            assert!(status.success());
            SandboxConfig::detect().expect("launcher after building it")
        }
        other => other.expect("sandbox config"),
    };
    Arc::new(PythonSandbox::new(config).expect("sandbox"))
}

#[test]
fn right_expressions_solve_and_wrong_ones_mostly_fail() {
    let sb = sandbox();
    let tasks = generate(12 * 20, 7, None).expect("tasks");
    for family in FAMILIES {
        let mine: Vec<_> =
            tasks.iter().filter(|t| t.metadata.as_ref().unwrap().family == family).collect();
        assert!(mine.len() >= 15, "{family}");
        let mut wrong_passes = 0;
        for t in &mine {
            let (right, wrong) = expressions(t).unwrap_or_else(|| panic!("{family}: {}", t.query));
            let expected = t.expected_result().expect("result");
            let out = sb.run(&right);
            assert!(out.ok(), "{family}: {right}: {out:?}");
            let v = verify_result(&out.stdout, expected, Tolerance::default());
            assert!(
                v.passed,
                "{family}: {} -> {right} printed {} ({})",
                t.query,
                out.stdout.trim(),
                v.reason
            );
            let out = sb.run(&wrong);
            if out.ok() && verify_result(&out.stdout, expected, Tolerance::default()).passed {
                wrong_passes += 1;
            }
        }
        // A wrong call may be right by accident (an already sorted list, a max at the end).
        assert!(
            wrong_passes * 2 < mine.len(),
            "{family}: wrong expression passed {wrong_passes}/{}",
            mine.len()
        );
    }
}

#[test]
fn miscopy_changes_exactly_one_digit() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for _ in 0..100 {
        let m = miscopy("[12, 345, 6]", 1.0, &mut rng);
        let diff = m.chars().zip("[12, 345, 6]".chars()).filter(|(a, b)| a != b).count();
        assert_eq!(diff, 1, "{m}");
    }
    assert_eq!(miscopy("[12]", 0.0, &mut rng), "[12]");
    assert_eq!(miscopy("no digits", 1.0, &mut rng), "no digits");
}
