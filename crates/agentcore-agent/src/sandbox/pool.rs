//! The warm pool of sandboxed Python workers.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::launcher::launcher_args;
use super::{SandboxConfig, SandboxError};

const WORKER_PY: &str = include_str!("worker.py");
/// How long a fresh worker may take to say it is ready.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecStatus {
    /// The code ran to the end.
    Ok,
    /// The code raised (including `MemoryError` at the memory limit).
    Error,
    /// The call ran past its wall-time limit and was killed.
    Timeout,
    /// The code printed more than the output limit.
    OutputLimit,
    /// The interpreter died (CPU limit, a denied `exec`, a crash).
    Crashed,
}

/// The result of running code.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExecOutcome {
    /// How it ended.
    pub status: ExecStatus,
    /// Captured `print` output (at most the output limit).
    pub stdout: String,
    /// The error text: a traceback, or what the sandbox did.
    pub error: Option<String>,
    /// Wall time of the call.
    pub duration: Duration,
}

impl ExecOutcome {
    /// Whether the code ran without error.
    #[must_use]
    pub fn ok(&self) -> bool {
        self.status == ExecStatus::Ok
    }

    /// The observation the model sees: the output, then the error if any.
    #[must_use]
    pub fn observation(&self) -> String {
        match &self.error {
            None => self.stdout.trim_end().to_owned(),
            Some(e) if self.stdout.is_empty() => e.trim_end().to_owned(),
            Some(e) => format!("{}\n{}", self.stdout.trim_end(), e.trim_end()),
        }
    }
}

/// The result of running code and then tests against it.
#[derive(Debug, Clone)]
pub struct TestOutcome {
    /// Whether every test passed (the harness returned the nonce only it was given).
    pub passed: bool,
    /// The run itself.
    pub exec: ExecOutcome,
}

#[derive(Deserialize)]
struct Reply {
    stdout: String,
    error: Option<String>,
    output_limited: bool,
    verdict: Option<String>,
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    replies: Receiver<Result<String, String>>,
    stderr_tail: Arc<Mutex<Vec<u8>>>,
    calls: usize,
    _scratch: tempfile::TempDir,
}

impl Worker {
    fn spawn(config: &SandboxConfig) -> Result<Self, SandboxError> {
        let scratch = tempfile::Builder::new().prefix(&scratch_prefix()).tempdir()?;
        let mut cmd = Command::new(&config.launcher[0]);
        cmd.args(&config.launcher[1..])
            .args(launcher_args(scratch.path(), &config.read_paths, &config.limits))
            .arg(&config.python)
            // Not `-I`: it implies `-E`, which would ignore PYTHONHASHSEED. The environment is cleared
            // anyway, `-s` drops the user site, and the worker drops the cwd from `sys.path`.
            .args(["-s", "-S", "-B", "-c", WORKER_PY])
            .arg(config.limits.output_chars.to_string())
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", scratch.path())
            .env("LANG", "C.UTF-8")
            // A fixed string hash: set and dict orders of strings repeat from run to run.
            .env("PYTHONHASHSEED", "0")
            .current_dir(scratch.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        let stdin = child.stdin.take().ok_or_else(|| SandboxError::Start("no stdin".into()))?;
        let stdout = child.stdout.take().ok_or_else(|| SandboxError::Start("no stdout".into()))?;
        let mut stderr =
            child.stderr.take().ok_or_else(|| SandboxError::Start("no stderr".into()))?;
        // A reply is JSON: at most 6 bytes per captured character plus a bounded traceback.
        let max_line = config.limits.output_chars * 6 + (64 << 10);
        let (tx, replies) = channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            loop {
                let mut line = Vec::new();
                let n = (&mut reader).take(max_line as u64 + 1).read_until(b'\n', &mut line);
                let msg = match n {
                    Ok(0) => Err("the interpreter exited".to_owned()),
                    Ok(_) if line.len() > max_line => Err("reply too large".to_owned()),
                    Ok(_) if !line.ends_with(b"\n") => Err("the interpreter exited".to_owned()),
                    Ok(_) => Ok(String::from_utf8_lossy(&line).into_owned()),
                    Err(e) => Err(e.to_string()),
                };
                let stop = msg.is_err();
                if tx.send(msg).is_err() || stop {
                    break;
                }
            }
        });
        let stderr_tail = Arc::new(Mutex::new(Vec::new()));
        let tail = Arc::clone(&stderr_tail);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut t = tail.lock().unwrap_or_else(PoisonError::into_inner);
                t.extend_from_slice(&buf[..n]);
                let excess = t.len().saturating_sub(4096);
                t.drain(..excess);
            }
        });
        let mut worker = Self { child, stdin, replies, stderr_tail, calls: 0, _scratch: scratch };
        match worker.replies.recv_timeout(START_TIMEOUT) {
            Ok(Ok(line)) if line.contains("\"ready\"") => Ok(worker),
            other => {
                worker.kill();
                // Give the stderr thread a moment to collect the launcher's message.
                std::thread::sleep(Duration::from_millis(50));
                Err(SandboxError::Start(format!(
                    "{}; stderr: {}",
                    match other {
                        Ok(Ok(l)) => format!("unexpected first line {l:?}"),
                        Ok(Err(e)) => e,
                        Err(_) => "no answer within the start timeout".to_owned(),
                    },
                    worker.stderr()
                )))
            }
        }
    }

    fn stderr(&self) -> String {
        let t = self.stderr_tail.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&t).trim().to_owned()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Why the interpreter died, from its exit status.
    fn death(&mut self) -> String {
        use std::os::unix::process::ExitStatusExt;
        let status = self.child.wait().ok();
        match status.and_then(|s| s.signal()) {
            Some(libc::SIGXCPU) => "the CPU time limit was reached".to_owned(),
            Some(libc::SIGKILL) => "the interpreter was killed".to_owned(),
            Some(libc::SIGSYS) => "a forbidden system call was made".to_owned(),
            Some(s) => format!("the interpreter died from signal {s}"),
            None => match status.and_then(|s| s.code()) {
                Some(c) => format!("the interpreter exited with status {c}"),
                None => "the interpreter exited".to_owned(),
            },
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A pool of warm sandboxed interpreters. Cheap to share (`Arc`), safe to call from many threads.
pub struct PythonSandbox {
    config: SandboxConfig,
    idle: Mutex<Vec<Worker>>,
}

impl std::fmt::Debug for PythonSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PythonSandbox").field("config", &self.config).finish_non_exhaustive()
    }
}

/// Scratch directories are named after the process that owns them, so that the ones a killed
/// process left behind (its `TempDir`s never dropped) can be recognised and removed.
fn scratch_prefix() -> String {
    format!("agentcore-py-{}-", std::process::id())
}

/// Removes `agentcore-py-<pid>-*` directories in `dir` whose process no longer runs. Best effort:
/// a directory that cannot be removed is left alone.
pub(crate) fn remove_stale_scratch_dirs(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("agentcore-py-"))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = std::path::Path::new("/proc").join(pid.to_string()).exists();
        if !alive && std::fs::remove_dir_all(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

impl PythonSandbox {
    /// A pool with the given configuration; starts one worker to prove the sandbox works here.
    ///
    /// # Errors
    /// [`SandboxError::Start`] with the launcher's message when the sandbox cannot be set up
    /// (no Landlock in the kernel, interpreter not readable, ...).
    pub fn new(config: SandboxConfig) -> Result<Self, SandboxError> {
        remove_stale_scratch_dirs(&std::env::temp_dir());
        let first = Worker::spawn(&config)?;
        Ok(Self { config, idle: Mutex::new(vec![first]) })
    }

    /// [`SandboxConfig::detect`] then [`PythonSandbox::new`].
    ///
    /// # Errors
    /// As both.
    pub fn detect() -> Result<Self, SandboxError> {
        Self::new(SandboxConfig::detect()?)
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// Starts workers until `n` are idle (in parallel), so the first calls of a batch do not wait.
    ///
    /// # Errors
    /// The first start failure.
    pub fn warm(&self, n: usize) -> Result<(), SandboxError> {
        let have = self.idle_len();
        let started: Vec<Result<Worker, SandboxError>> = std::thread::scope(|s| {
            let handles: Vec<_> = (have..n.min(self.config.max_idle_workers))
                .map(|_| s.spawn(|| Worker::spawn(&self.config)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(SandboxError::Start("start thread panicked".into()))
                    })
                })
                .collect()
        });
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        for w in started {
            idle.push(w?);
        }
        Ok(())
    }

    /// Idle workers now.
    #[must_use]
    pub fn idle_len(&self) -> usize {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Runs `code`; every failure of the code or of the sandbox limits is an [`ExecOutcome`].
    #[must_use]
    pub fn run(&self, code: &str) -> ExecOutcome {
        self.call(&serde_json::json!({ "code": code })).0
    }

    /// Runs `code`, then `tests` in the same namespace; passed only when the tests finish without
    /// an exception (a failed `assert`, an error, an early exit or a timeout all fail).
    #[must_use]
    pub fn run_tests(&self, code: &str, tests: &str) -> TestOutcome {
        // A security token, not job randomness: from the OS, not the job's seeded RNG.
        let mut bytes = [0u8; 16];
        if let Err(e) =
            std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes))
        {
            return TestOutcome {
                passed: false,
                exec: ExecOutcome {
                    status: ExecStatus::Crashed,
                    stdout: String::new(),
                    error: Some(format!("no randomness for the test nonce: {e}")),
                    duration: Duration::ZERO,
                },
            };
        }
        let nonce: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let (exec, verdict) = self.call(&serde_json::json!({
            "code": code, "tests": tests, "nonce": nonce,
        }));
        TestOutcome { passed: exec.ok() && verdict.as_deref() == Some(nonce.as_str()), exec }
    }

    fn take_worker(&self) -> Result<Worker, SandboxError> {
        let w = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        match w {
            Some(w) => Ok(w),
            None => Worker::spawn(&self.config),
        }
    }

    fn give_back(&self, mut worker: Worker) {
        worker.calls += 1;
        if worker.calls >= self.config.max_calls_per_worker {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.config.max_idle_workers {
            idle.push(worker);
        }
    }

    fn call(&self, request: &serde_json::Value) -> (ExecOutcome, Option<String>) {
        let start = Instant::now();
        let fail = |status, error: String| {
            (
                ExecOutcome {
                    status,
                    stdout: String::new(),
                    error: Some(error),
                    duration: start.elapsed(),
                },
                None,
            )
        };
        let mut worker = match self.take_worker() {
            Ok(w) => w,
            Err(e) => return fail(ExecStatus::Crashed, format!("sandbox unavailable: {e}")),
        };
        let mut line = request.to_string();
        line.push('\n');
        if let Err(e) = worker.stdin.write_all(line.as_bytes()).and_then(|()| worker.stdin.flush())
        {
            let why = worker.death();
            return fail(ExecStatus::Crashed, format!("{why} ({e})"));
        }
        let wall = self.config.limits.wall;
        match worker.replies.recv_timeout(wall) {
            Ok(Ok(text)) => match serde_json::from_str::<Reply>(&text) {
                Ok(reply) => {
                    let status = if reply.output_limited {
                        ExecStatus::OutputLimit
                    } else if reply.error.is_some() {
                        ExecStatus::Error
                    } else {
                        ExecStatus::Ok
                    };
                    self.give_back(worker);
                    (
                        ExecOutcome {
                            status,
                            stdout: reply.stdout,
                            error: reply.error,
                            duration: start.elapsed(),
                        },
                        reply.verdict,
                    )
                }
                Err(e) => {
                    fail(ExecStatus::Crashed, format!("malformed reply from the interpreter: {e}"))
                }
            },
            Ok(Err(e)) if e == "reply too large" => {
                worker.kill();
                fail(
                    ExecStatus::OutputLimit,
                    format!("output is limited to {} characters", self.config.limits.output_chars),
                )
            }
            Ok(Err(_)) | Err(RecvTimeoutError::Disconnected) => {
                let why = worker.death();
                fail(ExecStatus::Crashed, why)
            }
            Err(RecvTimeoutError::Timeout) => {
                worker.kill();
                fail(
                    ExecStatus::Timeout,
                    format!(
                        "TimeoutError: the call ran longer than {:.1} s and was stopped",
                        wall.as_secs_f64()
                    ),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_scratch_dirs_of_dead_processes_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        // Above any pid_max Linux allows (2^22), so never a running process.
        let dead = tmp.path().join("agentcore-py-4000000000-abc");
        let mine = tmp.path().join(format!("{}x", scratch_prefix()));
        let other = tmp.path().join("agentcore-py-notapid");
        for d in [&dead, &mine, &other] {
            std::fs::create_dir_all(d.join("sub")).unwrap();
            std::fs::write(d.join("sub/f.py"), "x = 1").unwrap();
        }
        assert_eq!(remove_stale_scratch_dirs(tmp.path()), 1);
        assert!(!dead.exists());
        assert!(mine.exists() && other.exists());
    }
}
