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
        "Deployed ",
        "A/B: ",
        "Gradual rollout: split 0.5, status running",
        "Phase 5 done",
        "CLI deploy list: ",
        "CLI ab status: running 0.5 ",
        "CLI deploy refused: exit 2",
    ] {
        assert!(stdout.contains(needle), "{needle} missing from:\n{stdout}");
    }
}
