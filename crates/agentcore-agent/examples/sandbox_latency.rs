//! Latency of sandboxed Python calls: a cold start (new worker), warm calls, and a verification
//! (code + tests, `run_tests`).
//! `cargo run --release -p agentcore-agent --example sandbox_latency`
use std::time::Instant;

use agentcore_agent::sandbox::{PythonSandbox, SandboxConfig};

#[expect(clippy::print_stdout, reason = "an example that reports its measurements")]
fn main() {
    let config = SandboxConfig::detect().expect("sandbox config");
    let mut cold = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let p = PythonSandbox::new(config.clone()).expect("sandbox");
        cold.push(t.elapsed().as_secs_f64() * 1e3);
        drop(p);
    }
    let p = PythonSandbox::new(config).expect("sandbox");
    let mut warm = Vec::new();
    for i in 0..500 {
        let t = Instant::now();
        let out = p.run(&format!("sorted([{i}, 3, 1, 2])"));
        assert!(out.ok());
        warm.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut verify = Vec::new();
    for i in 0..50 {
        let t = Instant::now();
        let out = p.run_tests(
            "def add(a, b):\n    return a + b",
            &format!("assert add({i}, 2) == {i} + 2\nassert add(-1, 1) == 0"),
        );
        assert!(out.passed, "{out:?}");
        verify.push(t.elapsed().as_secs_f64() * 1e3);
    }
    // As in a job: verifications between model turns (here 100 ms of other work), so the spare
    // interpreters are started while the caller works.
    let mut spaced = Vec::new();
    for i in 0..30 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let t = Instant::now();
        let out = p.run_tests(
            "def add(a, b):\n    return a + b",
            &format!("assert add({i}, 1) == {i} + 1"),
        );
        assert!(out.passed, "{out:?}");
        spaced.push(t.elapsed().as_secs_f64() * 1e3);
    }
    for (name, mut v) in [
        ("cold start", cold),
        ("warm call", warm),
        ("verification, back to back", verify),
        ("verification, 100 ms apart", spaced),
    ] {
        v.sort_by(f64::total_cmp);
        println!(
            "{name}: median {:.2} ms, min {:.2}, p90 {:.2}, max {:.2} (n = {})",
            v[v.len() / 2],
            v[0],
            v[v.len() * 9 / 10],
            v[v.len() - 1],
            v.len()
        );
    }
}
