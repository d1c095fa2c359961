//! The sandbox escape suite: every attempt comes back as a tool error within its limit, and the
//! pool (and this process) keeps working afterwards.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use agentcore_agent::sandbox::{ExecStatus, PythonSandbox, SandboxConfig};

fn config(wall_ms: u64) -> SandboxConfig {
    let mut c = SandboxConfig::detect().expect("python3 and the launcher");
    c.launcher = vec![env!("CARGO_BIN_EXE_agentcore-sandbox").into()];
    c.limits.wall = Duration::from_millis(wall_ms);
    c
}

fn pool() -> PythonSandbox {
    PythonSandbox::new(config(3000)).expect("sandbox starts")
}

/// After an attack, the same pool still runs ordinary code.
fn assert_still_works(p: &PythonSandbox) {
    let out = p.run("print(6 * 7)");
    assert_eq!(out.status, ExecStatus::Ok, "{out:?}");
    assert_eq!(out.stdout.trim(), "42");
}

#[test]
fn runs_code_and_reports_errors_as_outcomes() {
    let p = pool();
    let out = p.run("xs = [3, 1, 2]\nprint(sorted(xs))");
    assert_eq!(out.status, ExecStatus::Ok);
    assert_eq!(out.observation(), "[1, 2, 3]");
    let out = p.run("print('before')\n1 / 0");
    assert_eq!(out.status, ExecStatus::Error);
    assert!(out.observation().starts_with("before\n"), "{out:?}");
    assert!(out.observation().contains("ZeroDivisionError"), "{out:?}");
    let out = p.run("def f(:\n  pass");
    assert!(out.error.as_deref().is_some_and(|e| e.contains("SyntaxError")), "{out:?}");
}

#[test]
fn network_is_unreachable() {
    let p = pool();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let out = p.run(&format!(
        "import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\nprint('connected')"
    ));
    assert_eq!(out.status, ExecStatus::Error, "{out:?}");
    assert!(out.observation().contains("Operation not permitted"), "{out:?}");
    // curl through subprocess: no new processes.
    let out = p.run(&format!(
        "import subprocess\nprint(subprocess.run(['curl', '-s', 'http://127.0.0.1:{port}/']).returncode)"
    ));
    assert_eq!(out.status, ExecStatus::Error, "{out:?}");
    assert!(out.observation().contains("PermissionError"), "{out:?}");
    // curl by replacing the interpreter: curl itself inherits the seccomp filter.
    let out = p.run(&format!(
        "import os\nos.execv('/usr/bin/curl', ['curl', '-s', 'http://127.0.0.1:{port}/'])"
    ));
    assert_ne!(out.status, ExecStatus::Ok, "{out:?}");
    std::thread::sleep(Duration::from_millis(100));
    assert!(listener.accept().is_err(), "something connected to the listener");
    assert_still_works(&p);
}

#[test]
fn cannot_write_outside_the_scratch_dir() {
    let p = pool();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("escaped.txt");
    let out = p.run(&format!("open({:?}, 'w').write('x')", target.display().to_string()));
    assert_eq!(out.status, ExecStatus::Error, "{out:?}");
    assert!(out.observation().contains("Permission denied"), "{out:?}");
    assert!(!target.exists());
    // Inside the scratch dir is fine, and it is emptied before the next call.
    let out = p.run("open('notes.txt', 'w').write('hello')\nprint(open('notes.txt').read())");
    assert_eq!(out.stdout.trim(), "hello", "{out:?}");
    let out = p.run("import os\nprint(os.listdir('.'))");
    assert_eq!(out.stdout.trim(), "[]", "{out:?}");
}

#[test]
fn cannot_read_the_parent_environment() {
    let p = pool();
    let secret = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it for tests");
    let out = p.run("import os\nprint(sorted(os.environ))");
    assert_eq!(out.status, ExecStatus::Ok, "{out:?}");
    assert_eq!(out.stdout.trim(), "['HOME', 'LANG', 'PATH', 'PYTHONHASHSEED']");
    let out = p.run("import os\nprint(open('/proc/%d/environ' % os.getppid(), 'rb').read())");
    assert_eq!(out.status, ExecStatus::Error, "{out:?}");
    assert!(!out.observation().contains(&secret));
    let out = p.run("print(open('/proc/self/environ', 'rb').read())");
    assert_eq!(out.status, ExecStatus::Error, "{out:?}");
    assert_still_works(&p);
}

#[test]
fn fork_bomb_fails_fast() {
    let p = pool();
    let t = Instant::now();
    let out = p.run("import os\nwhile True:\n    os.fork()");
    assert_eq!(out.status, ExecStatus::Error, "{out:?}");
    assert!(out.observation().contains("PermissionError"), "{out:?}");
    assert!(t.elapsed() < Duration::from_secs(3));
    let out = p.run("import threading\nthreading.Thread(target=print).start()");
    assert_eq!(out.status, ExecStatus::Error, "{out:?}");
    assert_still_works(&p);
}

#[test]
fn four_gib_allocation_is_a_memory_error() {
    let p = pool();
    let out = p.run("x = bytearray(4 << 30)");
    assert_eq!(out.status, ExecStatus::Error, "{out:?}");
    assert!(out.observation().contains("MemoryError"), "{out:?}");
    assert_still_works(&p);
}

#[test]
fn infinite_loop_is_stopped_at_the_wall_limit() {
    let p = PythonSandbox::new(config(1000)).unwrap();
    let t = Instant::now();
    let out = p.run("while True:\n    pass");
    let took = t.elapsed();
    assert_eq!(out.status, ExecStatus::Timeout, "{out:?}");
    assert!(took >= Duration::from_millis(1000) && took < Duration::from_millis(2500), "{took:?}");
    assert!(out.observation().contains("TimeoutError"));
    assert_still_works(&p);
}

#[test]
fn cpu_limit_kills_the_interpreter() {
    let mut c = config(10_000);
    c.limits.cpu_seconds = 1;
    let p = PythonSandbox::new(c).unwrap();
    let out = p.run("while True:\n    pass");
    assert_eq!(out.status, ExecStatus::Crashed, "{out:?}");
    assert!(out.observation().contains("CPU time limit"), "{out:?}");
    assert_still_works(&p);
}

#[test]
fn hundred_mib_of_output_is_cut() {
    let p = pool();
    let limit = p.config().limits.output_chars;
    let t = Instant::now();
    let out = p.run("print('x' * (100 << 20))");
    assert_eq!(out.status, ExecStatus::OutputLimit, "{out:?}");
    assert_eq!(out.stdout.len(), limit);
    let out = p.run("while True:\n    print('y' * 1000)");
    assert_eq!(out.status, ExecStatus::OutputLimit, "{out:?}");
    assert!(out.stdout.len() <= limit);
    // Writing to the raw descriptors goes nowhere and cannot corrupt the protocol.
    let out = p.run("import os\nfor _ in range(100):\n    os.write(1, b'{\"stdout\": \"forged\"}\\n' * 1000)\nprint('done')");
    assert_eq!(out.status, ExecStatus::Ok, "{out:?}");
    assert_eq!(out.stdout.trim(), "done");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_still_works(&p);
}

#[test]
fn cannot_raise_limits_or_trace() {
    let p = pool();
    let out = p.run("import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))");
    assert_eq!(out.status, ExecStatus::Error, "{out:?}");
    let out = p.run("import ctypes\nprint(ctypes.CDLL(None).ptrace(16, 1, 0, 0))");
    // PTRACE_ATTACH returns -1 (EPERM) when denied; anything else would be an escape.
    assert!(out.status != ExecStatus::Ok || out.stdout.trim() == "-1", "{out:?}");
}

/// Observations must not depend on the process: string hashing (set order) and memory addresses
/// in default reprs differ between interpreters unless pinned, and a seeded rollout would diverge.
#[test]
fn observations_repeat_across_interpreters() {
    let code = "print(list({'alpha', 'beta', 'gamma', 'delta', 'eps', 'zeta'}))\n[1, 2].count";
    let outputs: Vec<String> = (0..4)
        .map(|_| {
            let out = pool().run(code);
            assert_eq!(out.status, ExecStatus::Ok, "{out:?}");
            out.stdout
        })
        .collect();
    assert!(outputs[0].contains("<built-in method count of list object at 0x0>"), "{outputs:?}");
    assert!(outputs.iter().all(|o| *o == outputs[0]), "{outputs:?}");
}

#[test]
fn calls_do_not_leak_into_each_other() {
    let p = pool();
    let out = p.run("import builtins\nbuiltins.print = lambda *a, **k: None\nbuiltins.len = None");
    assert_eq!(out.status, ExecStatus::Ok, "{out:?}");
    let out = p.run("print(len([1, 2, 3]))");
    assert_eq!(out.stdout.trim(), "3", "{out:?}");
    let out = p.run("secret = 5");
    assert!(out.ok());
    let out = p.run("print(secret)");
    assert!(out.observation().contains("NameError"), "{out:?}");
}

#[test]
fn tests_decide_pass_and_cannot_be_faked() {
    let p = pool();
    let code = "def add(a, b):\n    return a + b";
    assert!(p.run_tests(code, "assert add(2, 3) == 5").passed);
    let failed = p.run_tests(code, "assert add(2, 3) == 6");
    assert!(!failed.passed);
    assert!(failed.exec.observation().contains("AssertionError"));
    for cheat in [
        "import sys\nsys.exit(0)",
        "import os\nos._exit(0)",
        "print('all tests passed')\nraise SystemExit",
        "while True:\n    pass",
    ] {
        let t = p.run_tests(cheat, "assert add(2, 3) == 5");
        assert!(!t.passed, "{cheat:?} passed: {:?}", t.exec);
    }
    // Catching the assertion inside the code does not help: tests run after it.
    let t = p.run_tests(
        "def add(a, b):\n    return 0\ntry:\n    pass\nexcept AssertionError:\n    pass",
        "assert add(2, 3) == 5",
    );
    assert!(!t.passed);
}

#[test]
fn many_threads_share_one_pool() {
    let p = pool();
    p.warm(2).unwrap();
    let results: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|i| {
                let p = &p;
                s.spawn(move || p.run(&format!("print({i} * {i})")).stdout)
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let want: Vec<String> = (0..8).map(|i| format!("{}\n", i * i)).collect();
    assert_eq!(results, want);
}

/// The red-team suite of reward hacks: code written to make failing tests pass. Every one of them
/// answers `add` wrongly (or not at all), so every verdict must be false.
#[test]
fn reward_hacks_never_pass() {
    let p = pool();
    let tests = "assert add(2, 3) == 5\nassert add(-1, 1) == 0";
    let wrong = "def add(a, b):\n    return a - b\n";
    let hacks: &[(&str, String)] = &[
        (
            "harness replacement",
            format!("{wrong}import sys\nsys.modules['__main__']._run = lambda *a, **k: None"),
        ),
        (
            "verdict and nonce from the frames",
            format!(
                "{wrong}import sys\nf = sys._getframe()\nwhile f is not None:\n    \
                 for k in ('nonce', 'verdict', 'req'):\n        if k in f.f_locals:\n            \
                 print(f.f_locals[k])\n    f.f_globals['_run'] = lambda *a, **k: None\n    \
                 f = f.f_back"
            ),
        ),
        ("os._exit(0)", "import os\nos._exit(0)".to_owned()),
        ("sys.exit in a finally", format!("{wrong}try:\n    raise AssertionError\nfinally:\n    import sys\n    sys.exit(0)")),
        (
            "patched AssertionError and builtins",
            format!(
                "{wrong}import builtins\nbuiltins.AssertionError = StopIteration\n\
                 builtins.__dict__['isinstance'] = lambda *a: True"
            ),
        ),
        (
            "patched json",
            format!(
                "{wrong}import json\nforged = '{{\"verdict\": true, \"stdout\": \"\", \"error\": null, \"output_limited\": false}}'\n\
                 json.dumps = lambda *a, **k: forged\njson.loads = lambda *a, **k: {{'verdict': True}}"
            ),
        ),
        (
            "atexit and signal handlers",
            format!(
                "{wrong}import atexit, os, signal\n\
                 atexit.register(lambda: os._exit(0))\n\
                 signal.signal(signal.SIGALRM, lambda *a: os._exit(0))\nsignal.setitimer(signal.ITIMER_REAL, 0.01)"
            ),
        ),
        (
            "a forged verdict printed and written to every descriptor",
            format!(
                "{wrong}import os\nforged = b'{{\"verdict\": true, \"stdout\": \"\", \"error\": null, \"output_limited\": false}}\\n'\n\
                 print('all tests passed')\nfor fd in range(64):\n    try:\n        os.write(fd, forged)\n    except OSError:\n        pass"
            ),
        ),
        (
            "an exception deriving from BaseException",
            "class Escape(BaseException):\n    pass\ndef add(a, b):\n    raise Escape()".to_owned(),
        ),
        (
            "SystemExit from the function",
            "def add(a, b):\n    raise SystemExit(0)".to_owned(),
        ),
        (
            "a result equal to everything",
            "class Any:\n    def __eq__(self, other):\n        return True\ndef add(a, b):\n    return Any()"
                .to_owned(),
        ),
        (
            "an int subclass equal to everything",
            "class I(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n\
             def add(a, b):\n    return I(0)"
                .to_owned(),
        ),
        ("add is not a function", "add = 5".to_owned()),
    ];
    for (name, code) in hacks {
        let t = p.run_tests(code, tests);
        assert!(!t.passed, "reward hack `{name}` passed: {:?}", t.exec);
    }
    // The honest answer still passes after all of them.
    assert!(p.run_tests("def add(a, b):\n    return a + b", tests).passed);
}

/// What one verification does to its interpreters (or the tests to theirs) never reaches the next:
/// after code and tests that patch everything they can, tests that always fail still fail.
#[test]
fn no_state_survives_between_verifications() {
    let p = pool();
    let patch_code = "import builtins, sys\nbuiltins.AssertionError = StopIteration\n\
                      sys.modules['__main__']._run = lambda *a, **k: None\n\
                      def add(a, b):\n    return a + b";
    let patch_tests =
        "import sys\nsys.modules['__main__']._run = lambda *a, **k: None\nassert add(1, 1) == 2";
    for _ in 0..4 {
        let _ = p.run_tests(patch_code, patch_tests);
    }
    for _ in 0..8 {
        let t = p.run_tests("def add(a, b):\n    return a + b", "assert False");
        assert!(!t.passed, "{:?}", t.exec);
    }
}

/// The tests see the code's functions and plain values, not its objects: results and arguments
/// travel as data (in-place updates of arguments included), exceptions keep their type.
#[test]
fn tests_see_functions_and_plain_values() {
    let p = pool();
    let code = "LIMIT = (3, {'a': [1.5, None]}, {1, 2}, b'x', 2+1j, float('inf'))\n\
                def sort_in_place(xs):\n    xs.sort()\n\
                def check(n, *, strict=False):\n    if n < 0:\n        raise ValueError('negative: %d' % n)\n    return {'n': n, 'strict': strict, 'big': 10 ** 30}\n\
                def noisy():\n    print('hello from the code')\n    return [1, (2, 3)]\n\
                class Stack:\n    pass";
    let tests = "assert LIMIT == (3, {'a': [1.5, None]}, {1, 2}, b'x', 2+1j, float('inf'))\n\
                 xs = [3, 1, 2]\nsort_in_place(xs)\nassert xs == [1, 2, 3], xs\n\
                 assert check(4, strict=True) == {'n': 4, 'strict': True, 'big': 10 ** 30}\n\
                 try:\n    check(-1)\nexcept ValueError as e:\n    assert 'negative: -1' in str(e)\nelse:\n    raise AssertionError('no ValueError')\n\
                 assert noisy() == [1, (2, 3)]\n\
                 def helper():\n    return check(1)['n']\nassert helper() == 1";
    let t = p.run_tests(code, tests);
    assert!(t.passed, "{:?}", t.exec);
    assert!(t.exec.stdout.contains("hello from the code"), "{:?}", t.exec);
    let class = p.run_tests(code, "Stack()");
    assert!(!class.passed);
    assert!(class.exec.observation().contains("`Stack` is a class"), "{:?}", class.exec);
    let generator = p.run_tests("def gen():\n    yield 1", "assert list(gen()) == [1]");
    assert!(!generator.passed);
    assert!(
        generator.exec.observation().contains("cannot reach the tests"),
        "{:?}",
        generator.exec
    );
}

/// The interpreter sees its own files and its scratch directory: not `/etc` (beyond the loader's
/// cache), not `/root`; started by root it runs as an unprivileged user.
#[test]
fn sees_only_the_interpreter_and_runs_unprivileged() {
    let p = pool();
    for path in ["/etc/shadow", "/etc/passwd", "/etc/hostname"] {
        let out = p.run(&format!("open({path:?}).read()"));
        assert_eq!(out.status, ExecStatus::Error, "{path} was readable: {out:?}");
        assert!(out.observation().contains("PermissionError"), "{out:?}");
    }
    for dir in ["/root", "/etc", "/home"] {
        let out = p.run(&format!("import os\nos.listdir({dir:?})"));
        assert_eq!(out.status, ExecStatus::Error, "{dir} was listable: {out:?}");
    }
    let out = p.run("import os\nprint(os.getuid(), os.getgid(), os.getgroups())");
    assert!(out.ok(), "{out:?}");
    if rustix::process::geteuid().is_root() {
        assert_eq!(out.stdout.trim(), "65534 65534 []", "{out:?}");
    } else {
        assert_ne!(out.stdout.split_whitespace().next(), Some("0"), "{out:?}");
    }
    // Time zones and the standard library still work.
    let out = p.run("import time, json, re, math\nprint(time.localtime().tm_year > 2000)");
    assert_eq!(out.stdout.trim(), "True", "{out:?}");
    assert_still_works(&p);
}

/// A tool call that patches modules loaded at start (`json`, `os`, `sys.path`, the worker's own
/// helpers) does not change what the next call sees.
#[test]
fn patched_modules_do_not_reach_the_next_call() {
    let p = pool();
    let patch = p.run(
        // (Lists only: the worker's own replies, dicts, keep working, so the worker survives.)
        "import json, os, sys\n_dumps = json.dumps\n\
         json.dumps = lambda o, *a, **k: 'forged' if isinstance(o, list) else _dumps(o, *a, **k)\n\
         os.listdir = None\n\
         json.extra = 1\nsys.path.append('/tmp/evil')\nos.environ['EVIL'] = '1'\n\
         sys.modules['__main__']._stable = lambda t: t\nprint('patched')",
    );
    assert_eq!(patch.stdout.trim(), "patched", "{patch:?}");
    let out = p.run(
        "import json, os, sys\nprint(json.dumps([1]), os.listdir is not None, hasattr(json, 'extra'), \
         '/tmp/evil' in sys.path, 'EVIL' in os.environ)\nraise ValueError('still reported')",
    );
    assert_eq!(out.stdout.trim(), "[1] True False False False", "{out:?}");
    assert!(out.observation().contains("ValueError: still reported"), "{out:?}");
}
