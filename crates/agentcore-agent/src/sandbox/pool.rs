//! The warm pool of sandboxed Python workers.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

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
    /// Whether every test passed, as the tests' own interpreter (which never ran the code) says.
    pub passed: bool,
    /// The run itself.
    pub exec: ExecOutcome,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Reply {
    stdout: String,
    error: Option<String>,
    output_limited: bool,
}

/// What the code's interpreter says after running the code of a verification: the names the
/// tests may use (re-serialized field by field, so nothing else reaches the tests).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServeReply {
    stdout: String,
    error: Option<String>,
    output_limited: bool,
    names: BTreeMap<String, Name>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Name {
    kind: NameKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    type_name: Option<String>,
}

#[derive(Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
enum NameKind {
    Call,
    Value,
    Other,
}

/// A message of the tests' interpreter: a call of one of the code's functions, or the verdict.
#[derive(Deserialize)]
#[serde(untagged)]
enum JudgeMessage {
    Call(Call),
    Verdict(JudgeVerdict),
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Call {
    call: String,
    args: String,
    kwargs: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JudgeVerdict {
    verdict: bool,
    stdout: String,
    error: Option<String>,
    output_limited: bool,
}

/// The code interpreter's answer to a call: encoded plain data, or the exception it raised.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct CallReply {
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    args_after: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raised: Option<Raised>,
    stdout: String,
    output_limited: bool,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Raised {
    #[serde(rename = "type")]
    type_name: String,
    message: String,
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
        if let Some((uid, gid)) = config.user {
            std::os::unix::fs::chown(scratch.path(), Some(uid), Some(gid))?;
        }
        let mut cmd = Command::new(&config.launcher[0]);
        cmd.args(&config.launcher[1..])
            .args(launcher_args(scratch.path(), &config.read_paths, &config.limits, config.user))
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

impl Worker {
    /// Sends one request line and waits until `deadline` for the reply, read as `T`. On any
    /// failure the interpreter is killed (or found dead) and the reason comes back as a status
    /// and a message for the model.
    fn exchange<T: DeserializeOwned>(
        &mut self,
        request: &impl Serialize,
        deadline: Instant,
        config: &SandboxConfig,
    ) -> Result<T, (ExecStatus, String)> {
        let mut line = serde_json::to_string(request)
            .map_err(|e| (ExecStatus::Crashed, format!("cannot encode the request: {e}")))?;
        line.push('\n');
        if let Err(e) = self.stdin.write_all(line.as_bytes()).and_then(|()| self.stdin.flush()) {
            let why = self.death();
            return Err((ExecStatus::Crashed, format!("{why} ({e})")));
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        match self.replies.recv_timeout(wait) {
            Ok(Ok(text)) => serde_json::from_str::<T>(&text).map_err(|e| {
                self.kill();
                (ExecStatus::Crashed, format!("malformed reply from the interpreter: {e}"))
            }),
            Ok(Err(e)) if e == "reply too large" => {
                self.kill();
                let limit = config.limits.output_chars;
                Err((ExecStatus::OutputLimit, format!("output is limited to {limit} characters")))
            }
            Ok(Err(_)) | Err(RecvTimeoutError::Disconnected) => {
                Err((ExecStatus::Crashed, self.death()))
            }
            Err(RecvTimeoutError::Timeout) => {
                self.kill();
                Err((
                    ExecStatus::Timeout,
                    format!(
                        "TimeoutError: the call ran longer than {:.1} s and was stopped",
                        config.limits.wall.as_secs_f64()
                    ),
                ))
            }
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
    spares: Arc<Spares>,
}

/// Interpreters started ahead of need and never used: each verification takes two and they are
/// discarded after it, so a background thread starts the next ones while the caller works (the
/// start costs tens of milliseconds; taking a spare costs nothing).
#[derive(Default)]
struct Spares {
    workers: Mutex<Vec<Worker>>,
    refilling: std::sync::atomic::AtomicBool,
}

/// Spare interpreters kept for verifications (two per verification).
const SPARE_INTERPRETERS: usize = 4;

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
        Ok(Self { config, idle: Mutex::new(vec![first]), spares: Arc::default() })
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
        self.call(&serde_json::json!({ "code": code }))
    }

    /// Runs `code`, then `tests` against it; passed only when the tests finish without an
    /// exception (a failed `assert`, an error, an early exit or a timeout all fail).
    ///
    /// The code and the tests run in two fresh interpreters that are discarded afterwards: the
    /// tests never share an interpreter with the code they judge. In the tests' namespace each
    /// function the code defined is a proxy whose call is relayed (by this process) to the code's
    /// interpreter and whose result comes back as plain data (None, bool, int, float, complex,
    /// str, bytes, list, tuple, dict, set, frozenset; lists, dicts and sets passed as arguments
    /// are updated in place); plain values the code defined are copied; classes and other objects
    /// cannot be used by the tests. The verdict is the tests' interpreter's alone, so nothing the
    /// code does to its own interpreter (replacing the harness, patching builtins or `json`,
    /// exiting, printing) can make tests pass, and nothing survives into another verification.
    #[must_use]
    pub fn run_tests(&self, code: &str, tests: &str) -> TestOutcome {
        let start = Instant::now();
        let wall = self.config.limits.wall;
        let fail = |status, stdout: String, error: String| TestOutcome {
            passed: false,
            exec: ExecOutcome { status, stdout, error: Some(error), duration: start.elapsed() },
        };
        let (code_worker, judge_worker) = self.fresh_pair();
        let (mut code_worker, mut judge_worker) = match (code_worker, judge_worker) {
            (Ok(c), Ok(j)) => (c, j),
            (Err(e), _) | (_, Err(e)) => {
                return fail(
                    ExecStatus::Crashed,
                    String::new(),
                    format!("sandbox unavailable: {e}"),
                );
            }
        };
        let deadline = start + wall;
        let served: ServeReply = match code_worker.exchange(
            &serde_json::json!({"serve": true, "code": code}),
            deadline,
            &self.config,
        ) {
            Ok(r) => r,
            Err((status, why)) => return fail(status, String::new(), why),
        };
        if served.output_limited {
            let limit = self.config.limits.output_chars;
            return fail(
                ExecStatus::OutputLimit,
                served.stdout,
                format!("output is limited to {limit} characters"),
            );
        }
        if let Some(error) = served.error {
            return fail(ExecStatus::Error, served.stdout, error);
        }
        let request = serde_json::json!({"judge": tests, "names": served.names});
        let mut message: Result<JudgeMessage, _> =
            judge_worker.exchange(&request, Instant::now() + wall, &self.config);
        let deadline = Instant::now() + wall;
        loop {
            match message {
                Err((status, why)) => return fail(status, served.stdout, why),
                Ok(JudgeMessage::Verdict(v)) => {
                    let status = if v.output_limited {
                        ExecStatus::OutputLimit
                    } else if v.error.is_some() {
                        ExecStatus::Error
                    } else {
                        ExecStatus::Ok
                    };
                    return TestOutcome {
                        passed: v.verdict && status == ExecStatus::Ok,
                        exec: ExecOutcome {
                            status,
                            stdout: served.stdout + &v.stdout,
                            error: v.error,
                            duration: start.elapsed(),
                        },
                    };
                }
                Ok(JudgeMessage::Call(call)) => {
                    let reply: CallReply = match code_worker.exchange(&call, deadline, &self.config)
                    {
                        Ok(r) => r,
                        Err((status, why)) => {
                            let why = format!("the answer's code failed during the tests: {why}");
                            return fail(status, served.stdout, why);
                        }
                    };
                    message = judge_worker.exchange(&reply, deadline, &self.config);
                }
            }
        }
    }

    /// Two interpreters that never ran anything: spares where there are, else started now (side
    /// by side); the spares are topped up in the background.
    fn fresh_pair(&self) -> (Result<Worker, SandboxError>, Result<Worker, SandboxError>) {
        let (a, b) = {
            let mut spares = self.spares.workers.lock().unwrap_or_else(PoisonError::into_inner);
            (spares.pop(), spares.pop())
        };
        let pair = match (a, b) {
            (Some(a), Some(b)) => (Ok(a), Ok(b)),
            (Some(a), None) => (Ok(a), Worker::spawn(&self.config)),
            (None, _) => std::thread::scope(|s| {
                let other = s.spawn(|| Worker::spawn(&self.config));
                let one = Worker::spawn(&self.config);
                let other = other
                    .join()
                    .unwrap_or_else(|_| Err(SandboxError::Start("start thread panicked".into())));
                (one, other)
            }),
        };
        self.refill_spares();
        pair
    }

    fn refill_spares(&self) {
        use std::sync::atomic::Ordering;
        if self.spares.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let spares = Arc::clone(&self.spares);
        let config = self.config.clone();
        std::thread::spawn(move || {
            loop {
                let have = spares.workers.lock().unwrap_or_else(PoisonError::into_inner).len();
                if have >= SPARE_INTERPRETERS {
                    break;
                }
                match Worker::spawn(&config) {
                    Ok(w) => spares.workers.lock().unwrap_or_else(PoisonError::into_inner).push(w),
                    Err(_) => break,
                }
            }
            spares.refilling.store(false, Ordering::Release);
        });
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

    fn call(&self, request: &serde_json::Value) -> ExecOutcome {
        let start = Instant::now();
        let mut worker = match self.take_worker() {
            Ok(w) => w,
            Err(e) => {
                return ExecOutcome {
                    status: ExecStatus::Crashed,
                    stdout: String::new(),
                    error: Some(format!("sandbox unavailable: {e}")),
                    duration: start.elapsed(),
                };
            }
        };
        match worker.exchange::<Reply>(request, start + self.config.limits.wall, &self.config) {
            Ok(reply) => {
                let status = if reply.output_limited {
                    ExecStatus::OutputLimit
                } else if reply.error.is_some() {
                    ExecStatus::Error
                } else {
                    ExecStatus::Ok
                };
                self.give_back(worker);
                ExecOutcome {
                    status,
                    stdout: reply.stdout,
                    error: reply.error,
                    duration: start.elapsed(),
                }
            }
            Err((status, why)) => ExecOutcome {
                status,
                stdout: String::new(),
                error: Some(why),
                duration: start.elapsed(),
            },
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
