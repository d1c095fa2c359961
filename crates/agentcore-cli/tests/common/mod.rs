//! Helpers of the CLI's process-level tests: the binary, a child killed on drop, and a server
//! on loopback whose address and development token are read from its stderr.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_agentcore");

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `agentcore ARGS` with `env` to its end.
pub fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args).stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("agentcore runs")
}

/// Its stdout, after checking that it succeeded.
pub fn ok(out: &Output) -> String {
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `agentcore serve --port 0 ARGS` with a development token: the process, its URL, the token
/// and its banner line. Its stderr is read to the end in the background, so it never blocks
/// on a full pipe.
pub fn serve(args: &[&str]) -> (Killed, String, String, String) {
    serve_with_env(args, &[])
}

/// [`serve`] with extra environment variables.
pub fn serve_with_env(args: &[&str], env: &[(String, String)]) -> (Killed, String, String, String) {
    let mut server = Command::new(BIN)
        .args(["serve", "--port", "0"])
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env_remove("AGENTCORE_JWT_SECRET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve");
    let stderr = server.stderr.take().expect("stderr");
    let server = Killed(server);
    let mut lines = BufReader::new(stderr).lines();
    let (mut url, mut token, mut banner) = (String::new(), String::new(), String::new());
    while url.is_empty() || token.is_empty() {
        let line = lines.next().expect("server output").expect("line");
        if let Some(rest) = line.strip_prefix("agentcore serve: ") {
            url = rest.split_whitespace().next().expect("url").to_string();
            banner = rest.to_string();
        }
        if let Some(t) = line.strip_prefix("AGENTCORE_API_KEY=") {
            token = t.to_string();
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    (server, url, token, banner)
}
