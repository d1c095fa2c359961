//! Running model-written Python safely.
//!
//! Every interpreter runs in a child process that a small launcher (the `agentcore-sandbox`
//! binary, or `agentcore __sandbox-exec`) restricts before it `exec`s Python:
//!
//! - **rlimits**: address space (memory), CPU seconds, size of files written, open files, no core
//!   dumps; raising them again is blocked by seccomp (we may run as root, which could otherwise
//!   raise hard limits).
//! - **user**: started as root, the launcher becomes `nobody` ([`SANDBOX_USER`]) with no
//!   supplementary groups, so only world-readable files are readable at all.
//! - **capabilities**: all dropped.
//! - **Landlock** (filesystem): read and execute beneath the interpreter's prefix and the system
//!   library directories only (of `/etc` only the dynamic loader's cache and the time zone); read
//!   and write beneath the scratch directory only; `/dev/null`.
//!   Nothing else, in particular not `/proc`, so the parent's `/proc/<pid>/environ` is out of reach.
//!   Landlock network rules (TCP bind/connect) and scopes (signals, abstract unix sockets) where the
//!   kernel has them.
//! - **seccomp**: no sockets at all, no new processes or threads (`fork`, `vfork`, `clone`,
//!   `clone3`), no `ptrace`, no mounts or namespaces, no rlimit changes, no kernel keyring, BPF,
//!   perf or io_uring.
//! - **environment**: cleared; the child sees only `PATH`, `HOME` (the scratch dir), `LANG` and
//!   `PYTHONHASHSEED=0`.
//! - **repeatability**: string hashing is fixed and default reprs print `at 0x0` instead of a
//!   memory address, so an observation depends on the code alone and a seeded rollout repeats.
//! - **wall time and output** are enforced by the parent: a call that runs past its wall limit or
//!   writes more than the output limit is killed, and the interpreter replaced.
//!
//! Interpreters are kept warm in a pool ([`PythonSandbox`]): starting one costs tens of
//! milliseconds, more than most tool calls. Each call runs with fresh globals; afterwards the worker
//! restores `builtins`, drops modules the call imported and empties its scratch dir. A worker is
//! retired after a number of calls, and replaced at once after a timeout, a crash or a protocol
//! error.
//!
//! Verification ([`PythonSandbox::run_tests`]) never uses a warm interpreter: the code and the
//! tests that judge it run in two fresh interpreters, the tests' one never runs the code (its
//! functions are proxies that return plain data), and both are discarded afterwards. The verdict
//! is decided where the judged code never ran, so harness replacement, patched builtins, early
//! exits and forged output cannot turn a failure into a pass, and no state of one verification
//! reaches the next.

mod launcher;
mod pool;

pub use launcher::launcher_main;
pub use pool::{ExecOutcome, ExecStatus, PythonSandbox, TestOutcome};

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// Errors setting up the sandbox (not errors of the code it runs: those are [`ExecOutcome`]s).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// No launcher binary could be found.
    #[error(
        "sandbox launcher not found: set AGENTCORE_SANDBOX_LAUNCHER to the agentcore-sandbox binary ({0})"
    )]
    NoLauncher(String),
    /// The Python interpreter could not be resolved.
    #[error("python interpreter {python:?} unusable: {reason}")]
    NoPython {
        /// What was tried.
        python: String,
        /// Why it failed.
        reason: String,
    },
    /// A worker failed to start.
    #[error("sandboxed python worker failed to start: {0}")]
    Start(String),
    /// I/O.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Resource limits of one sandboxed interpreter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxLimits {
    /// Wall time of one call.
    pub wall: Duration,
    /// CPU seconds over a worker's life (RLIMIT_CPU; the wall limit bounds a single call).
    pub cpu_seconds: u64,
    /// Address space in bytes (RLIMIT_AS).
    pub memory_bytes: u64,
    /// Characters of captured output per call.
    pub output_chars: usize,
    /// Largest file the code may write, in bytes (RLIMIT_FSIZE).
    pub file_bytes: u64,
    /// Open file descriptors (RLIMIT_NOFILE).
    pub open_files: u64,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        Self {
            wall: Duration::from_secs(5),
            cpu_seconds: 600,
            memory_bytes: 512 << 20,
            output_chars: 64 << 10,
            file_bytes: 16 << 20,
            open_files: 64,
        }
    }
}

/// Where the launcher and the interpreter are, and how the pool behaves.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Command that applies the restrictions and execs what follows `--` (program + leading args).
    pub launcher: Vec<OsString>,
    /// The real interpreter (not a shim script: shims fork, which the sandbox forbids).
    pub python: PathBuf,
    /// Directories the interpreter may read and execute from.
    pub read_paths: Vec<PathBuf>,
    /// Per-call and per-worker limits.
    pub limits: SandboxLimits,
    /// Calls a worker serves before it is retired.
    pub max_calls_per_worker: usize,
    /// Workers kept idle at most.
    pub max_idle_workers: usize,
    /// The user and group the interpreter runs as (`None`: this process's own, when it is not
    /// root).
    pub user: Option<(u32, u32)>,
}

/// The unprivileged user and group (`nobody:nogroup`) the sandbox runs as when started as root.
pub const SANDBOX_USER: (u32, u32) = (65534, 65534);

/// The only files of `/etc` the interpreter may read: the dynamic loader's cache and the time zone.
const ETC_FILES: [&str; 2] = ["/etc/ld.so.cache", "/etc/localtime"];

impl SandboxConfig {
    /// Finds the launcher and the interpreter of this machine, with default limits.
    ///
    /// Launcher: `AGENTCORE_SANDBOX_LAUNCHER`, else an `agentcore-sandbox` binary beside the current
    /// executable or one directory up (cargo's `target/<profile>/` for test binaries in `deps/`),
    /// else the current executable itself if it is the `agentcore` CLI. Interpreter:
    /// `AGENTCORE_PYTHON`, else `python3` on `PATH`, resolved to the real binary.
    ///
    /// # Errors
    /// [`SandboxError::NoLauncher`] or [`SandboxError::NoPython`].
    pub fn detect() -> Result<Self, SandboxError> {
        let launcher = find_launcher()?;
        let user = rustix::process::geteuid().is_root().then_some(SANDBOX_USER);
        let (python, prefixes) = match std::env::var("AGENTCORE_PYTHON") {
            Ok(python) => resolve_python(&python, user)?,
            // `python3` on PATH may live where the sandbox user cannot read (pyenv under /root):
            // then the system interpreter.
            Err(_) => resolve_python("python3", user)
                .or_else(|first| resolve_python("/usr/bin/python3", user).map_err(|_| first))?,
        };
        let mut read_paths: Vec<PathBuf> = ["/usr", "/lib", "/lib64", "/lib32", "/bin"]
            .iter()
            .chain(ETC_FILES.iter())
            .map(PathBuf::from)
            .filter(|p| p.exists())
            .collect();
        for p in prefixes {
            if !read_paths.iter().any(|r| p.starts_with(r)) {
                read_paths.push(p);
            }
        }
        Ok(Self {
            launcher,
            python,
            read_paths,
            limits: SandboxLimits::default(),
            max_calls_per_worker: 256,
            max_idle_workers: 8,
            user,
        })
    }
}

fn find_launcher() -> Result<Vec<OsString>, SandboxError> {
    if let Some(p) = std::env::var_os("AGENTCORE_SANDBOX_LAUNCHER") {
        return Ok(vec![p]);
    }
    let exe = std::env::current_exe()?;
    let mut tried = Vec::new();
    let mut dir = exe.parent();
    for _ in 0..2 {
        let Some(d) = dir else { break };
        let candidate = d.join("agentcore-sandbox");
        if candidate.is_file() {
            return Ok(vec![candidate.into_os_string()]);
        }
        tried.push(candidate.display().to_string());
        dir = d.parent();
    }
    if exe.file_stem().is_some_and(|s| s == "agentcore") {
        return Ok(vec![exe.into_os_string(), "__sandbox-exec".into()]);
    }
    Err(SandboxError::NoLauncher(format!("tried {}", tried.join(", "))))
}

/// Runs the interpreter once, outside the sandbox but as the sandbox's user, to learn its real
/// path and install prefixes (and that the user can run it).
fn resolve_python(
    python: &str,
    user: Option<(u32, u32)>,
) -> Result<(PathBuf, Vec<PathBuf>), SandboxError> {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(python);
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid).current_dir("/");
    }
    let out = cmd
        .args([
            "-I",
            "-S",
            "-c",
            "import sys; print(sys.executable); print(sys.prefix); print(sys.base_prefix)",
        ])
        .output()
        .map_err(|e| SandboxError::NoPython { python: python.to_owned(), reason: e.to_string() })?;
    if !out.status.success() {
        return Err(SandboxError::NoPython {
            python: python.to_owned(),
            reason: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().map(PathBuf::from);
    let exe = lines.next().filter(|p| p.is_file()).ok_or_else(|| SandboxError::NoPython {
        python: python.to_owned(),
        reason: "sys.executable is empty".to_owned(),
    })?;
    let exe = exe.canonicalize()?;
    let mut prefixes: Vec<PathBuf> = lines.filter_map(|p| p.canonicalize().ok()).collect();
    if let Some(dir) = exe.parent() {
        prefixes.push(dir.to_path_buf());
    }
    prefixes.dedup();
    Ok((exe, prefixes))
}
