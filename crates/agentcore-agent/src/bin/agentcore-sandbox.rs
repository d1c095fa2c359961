//! `agentcore-sandbox [--scratch DIR] [--read DIR]... [--memory B] [--cpu S] [--fsize B]
//! [--nofile N] -- PROGRAM ARGS...`: restricts itself (rlimits, Landlock, capabilities, seccomp)
//! and execs PROGRAM. See `agentcore_agent::sandbox`.

fn main() -> std::process::ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let err = agentcore_agent::sandbox::launcher_main(&args);
    #[expect(
        clippy::print_stderr,
        reason = "the launcher's only way to report why it did not exec"
    )]
    {
        eprintln!("{err}");
    }
    std::process::ExitCode::from(126)
}
