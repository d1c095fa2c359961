//! The launcher: restricts its own process, then `exec`s the interpreter.
//!
//! It runs single-threaded, so the seccomp filter installed on the calling thread is the one the
//! interpreter inherits across `execve`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
};
use rustix::process::{Resource, Rlimit, setrlimit};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule, TargetArch};

/// Parsed launcher arguments.
#[derive(Debug, Default)]
struct Plan {
    scratch: Option<PathBuf>,
    read: Vec<PathBuf>,
    memory: Option<u64>,
    cpu: Option<u64>,
    fsize: Option<u64>,
    nofile: Option<u64>,
    /// Run as this user and group (set when the launcher starts as root).
    user: Option<(u32, u32)>,
    program: Vec<OsString>,
}

/// The arguments [`super::PythonSandbox`] passes to the launcher, before `--` and the program.
pub(crate) fn launcher_args(
    scratch: &std::path::Path,
    read: &[PathBuf],
    limits: &super::SandboxLimits,
    user: Option<(u32, u32)>,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["--scratch".into(), scratch.into()];
    for r in read {
        args.push("--read".into());
        args.push(r.into());
    }
    for (flag, v) in [
        ("--memory", limits.memory_bytes),
        ("--cpu", limits.cpu_seconds),
        ("--fsize", limits.file_bytes),
        ("--nofile", limits.open_files),
    ] {
        args.push(flag.into());
        args.push(v.to_string().into());
    }
    if let Some((uid, gid)) = user {
        args.push("--user".into());
        args.push(format!("{uid}:{gid}").into());
    }
    args.push("--".into());
    args
}

fn parse(args: &[OsString]) -> Result<Plan, String> {
    let mut plan = Plan::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let a = a.to_str().ok_or("non-UTF-8 flag")?;
        if a == "--" {
            plan.program = it.cloned().collect();
            break;
        }
        let v = it.next().ok_or_else(|| format!("{a} needs a value"))?;
        let num = || -> Result<u64, String> {
            v.to_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("{a} needs a number, got {v:?}"))
        };
        match a {
            "--scratch" => plan.scratch = Some(v.into()),
            "--read" => plan.read.push(v.into()),
            "--memory" => plan.memory = Some(num()?),
            "--cpu" => plan.cpu = Some(num()?),
            "--fsize" => plan.fsize = Some(num()?),
            "--nofile" => plan.nofile = Some(num()?),
            "--user" => {
                let text = v.to_str().unwrap_or_default();
                let ids = text
                    .split_once(':')
                    .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)));
                plan.user = Some(ids.ok_or_else(|| format!("--user needs UID:GID, got {v:?}"))?);
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if plan.program.is_empty() {
        return Err("nothing to run after --".into());
    }
    if plan.scratch.is_none() {
        return Err("--scratch is required".into());
    }
    Ok(plan)
}

fn limit(resource: Resource, v: u64) -> Result<(), String> {
    // CPU: SIGXCPU at the soft limit (reported as such), SIGKILL one second later.
    let hard = if resource == Resource::Cpu { v + 1 } else { v };
    setrlimit(resource, Rlimit { current: Some(v), maximum: Some(hard) })
        .map_err(|e| format!("setrlimit {resource:?}: {e}"))
}

fn apply_rlimits(plan: &Plan) -> Result<(), String> {
    limit(Resource::Core, 0)?;
    if let Some(v) = plan.memory {
        limit(Resource::As, v)?;
    }
    if let Some(v) = plan.cpu {
        limit(Resource::Cpu, v)?;
    }
    if let Some(v) = plan.fsize {
        limit(Resource::Fsize, v)?;
    }
    if let Some(v) = plan.nofile {
        limit(Resource::Nofile, v)?;
    }
    Ok(())
}

/// Becomes `uid:gid` with no supplementary groups (needs the launcher to start as root). The
/// launcher is single-threaded, so the per-thread system calls change the whole process.
fn become_user((uid, gid): (u32, u32)) -> Result<(), String> {
    use rustix::process::{Gid, Uid};
    use rustix::thread::{set_thread_groups, set_thread_res_gid, set_thread_res_uid};
    let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
    set_thread_groups(&[]).map_err(|e| format!("setgroups: {e}"))?;
    set_thread_res_gid(gid, gid, gid).map_err(|e| format!("setresgid {}: {e}", gid.as_raw()))?;
    set_thread_res_uid(uid, uid, uid).map_err(|e| format!("setresuid {}: {e}", uid.as_raw()))
}

fn drop_capabilities() -> Result<(), String> {
    use rustix::thread::{CapabilitySet, CapabilitySets, set_capabilities};
    set_capabilities(
        None,
        CapabilitySets {
            effective: CapabilitySet::empty(),
            permitted: CapabilitySet::empty(),
            inheritable: CapabilitySet::empty(),
        },
    )
    .map_err(|e| format!("dropping capabilities: {e}"))
}

fn apply_landlock(plan: &Plan) -> Result<(), String> {
    let abi = ABI::V6;
    let err = |e: landlock::RulesetError| format!("landlock: {e}");
    let read = AccessFs::from_read(abi);
    let all = AccessFs::from_all(abi);
    let mut ruleset = Ruleset::default()
        // Filesystem rules are the sandbox's core: refuse to run where the kernel cannot enforce
        // them at all (checked below); network rules and scopes are best effort (seccomp already
        // denies sockets and foreign signals need no extra rule to be harmless without ptrace).
        .handle_access(all)
        .map_err(err)?
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)
        .map_err(err)?
        .scope(Scope::AbstractUnixSocket | Scope::Signal)
        .map_err(err)?
        .create()
        .map_err(err)?;
    for p in &plan.read {
        // A single file (e.g. `/etc/ld.so.cache`) gets the file rights of `read` only.
        let access = if p.is_dir() { read } else { read & AccessFs::from_file(abi) };
        let fd = PathFd::new(p).map_err(|e| format!("landlock: {}: {e}", p.display()))?;
        ruleset = ruleset.add_rule(PathBeneath::new(fd, access)).map_err(err)?;
    }
    if let Some(s) = &plan.scratch {
        let fd = PathFd::new(s).map_err(|e| format!("landlock: {}: {e}", s.display()))?;
        ruleset = ruleset.add_rule(PathBeneath::new(fd, all)).map_err(err)?;
    }
    let null = PathFd::new("/dev/null").map_err(|e| format!("landlock: /dev/null: {e}"))?;
    ruleset = ruleset
        .add_rule(PathBeneath::new(null, AccessFs::ReadFile | AccessFs::WriteFile))
        .map_err(err)?;
    let status = ruleset.restrict_self().map_err(err)?;
    if status.ruleset == RulesetStatus::NotEnforced {
        return Err("landlock is not available in this kernel: refusing to run code without \
             filesystem isolation"
            .into());
    }
    Ok(())
}

fn seccomp_program() -> Result<BpfProgram, String> {
    let denied = [
        libc::SYS_socket,
        libc::SYS_socketpair,
        libc::SYS_connect,
        libc::SYS_bind,
        libc::SYS_listen,
        libc::SYS_accept,
        libc::SYS_accept4,
        libc::SYS_fork,
        libc::SYS_vfork,
        libc::SYS_clone,
        libc::SYS_clone3,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_pidfd_open,
        libc::SYS_pidfd_getfd,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_setrlimit,
        libc::SYS_prlimit64,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_io_uring_setup,
        libc::SYS_personality,
        libc::SYS_capset,
        libc::SYS_reboot,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_kexec_load,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_acct,
    ];
    let rules: BTreeMap<i64, Vec<SeccompRule>> = denied.iter().map(|&n| (n, vec![])).collect();
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| format!("seccomp: {e}"))?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM.unsigned_abs()),
        arch,
    )
    .map_err(|e| format!("seccomp: {e}"))?;
    BpfProgram::try_from(filter).map_err(|e| format!("seccomp: {e}"))
}

/// Applies every restriction to this process and execs the program after `--`. Returns only on
/// failure, with the reason; the caller prints it and exits non-zero.
///
/// Used by the `agentcore-sandbox` binary and `agentcore __sandbox-exec`; `args` excludes the
/// program name (and the subcommand).
#[must_use]
pub fn launcher_main(args: &[OsString]) -> String {
    let plan = match parse(args) {
        Ok(p) => p,
        Err(e) => return format!("agentcore-sandbox: {e}"),
    };
    // Build everything that allocates or opens files before the restrictions start.
    let program = match seccomp_program() {
        Ok(p) => p,
        Err(e) => return format!("agentcore-sandbox: {e}"),
    };
    let steps = apply_rlimits(&plan)
        .and_then(|()| apply_landlock(&plan))
        .and_then(|()| plan.user.map_or(Ok(()), become_user))
        .and_then(|()| drop_capabilities())
        .and_then(|()| seccompiler::apply_filter(&program).map_err(|e| format!("seccomp: {e}")));
    if let Err(e) = steps {
        return format!("agentcore-sandbox: {e}");
    }
    let mut cmd = std::process::Command::new(&plan.program[0]);
    cmd.args(&plan.program[1..]);
    if let Some(s) = &plan.scratch {
        cmd.current_dir(s);
    }
    let err = cmd.exec();
    format!("agentcore-sandbox: exec {:?}: {err}", plan.program[0])
}
