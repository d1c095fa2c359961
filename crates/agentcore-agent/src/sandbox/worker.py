# agentcore python worker: runs inside the sandbox (landlock + seccomp + rlimits applied by the
# launcher before exec). One JSON request per line on the protocol input, one JSON reply per line
# on the protocol output. The protocol uses duplicated descriptors; fds 0/1/2 point at /dev/null so
# that code writing to them directly cannot corrupt replies.
import ast, builtins, io, json, os, re, sys, traceback

# The code runs in the scratch directory; modules are not imported from there.
sys.path[:] = [p for p in sys.path if p not in ("", ".")]
# Default reprs name a memory address, which differs from run to run: an observation that the
# agent sees must be a function of the code alone, or the same seed gives another trajectory.
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+>")


def _stable(text):
    return None if text is None else _ADDRESS.sub(" at 0x0>", text)


_proto_in = os.fdopen(os.dup(0), "rb")
_proto_out = os.fdopen(os.dup(1), "wb", buffering=0)
_null = os.open(os.devnull, os.O_RDWR)
for _fd in (0, 1, 2):
    os.dup2(_null, _fd)
_MAX_OUT = int(sys.argv[1])
_SCRATCH = os.getcwd()


class _OutputLimit(BaseException):
    pass


class _Capture(io.TextIOBase):
    def __init__(self):
        self.parts, self.size, self.over = [], 0, False

    def writable(self):
        return True

    def write(self, s):
        s = str(s)
        room = _MAX_OUT - self.size
        if len(s) > room:
            self.parts.append(s[:max(room, 0)])
            self.size = _MAX_OUT
            self.over = True
            raise _OutputLimit()
        self.parts.append(s)
        self.size += len(s)
        return len(s)

    def text(self):
        return "".join(self.parts)


def _readline():
    line = _proto_in.readline()
    return line if line.endswith(b"\n") else None


def _clean_scratch():
    for root, dirs, files in os.walk(_SCRATCH, topdown=False):
        for f in files:
            try:
                os.unlink(os.path.join(root, f))
            except OSError:
                pass
        for d in dirs:
            try:
                os.rmdir(os.path.join(root, d))
            except OSError:
                pass


def _run(source, g, cap, echo=False):
    try:
        tree = ast.parse(source, "<agent>")
        last = None
        if echo and tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, "<agent>", "exec"), g)
        if last is not None:
            value = eval(compile(last, "<agent>", "eval"), g)
            if value is not None:
                print(repr(value))
        return None
    except _OutputLimit:
        return "OutputLimitExceeded: output is limited to %d characters" % _MAX_OUT
    except MemoryError:
        return "MemoryError: the sandbox's memory limit was reached"
    except SystemExit as e:
        return None if e.code in (None, 0) else "SystemExit: %r" % (e.code,)
    except BaseException:
        et, ev, tb = sys.exc_info()
        lines = traceback.format_exception(et, ev, tb.tb_next if tb is not None else None)
        return "".join(lines)[-4000:]


_builtins_snapshot = dict(builtins.__dict__)
_modules_snapshot = set(sys.modules)
_proto_out.write(b'{"ready": true}\n')
while True:
    line = _readline()
    if line is None:
        break
    req = json.loads(line)
    nonce = req.pop("nonce", None)
    cap = _Capture()
    sys.stdout = sys.stderr = cap
    g = {"__name__": "__main__", "__builtins__": builtins}
    # Like a REPL, the value of a final expression is printed (the tags format sends expressions).
    err = _run(req["code"], g, cap, echo=req.get("tests") is None)
    verdict = None
    if err is None and req.get("tests") is not None:
        err = _run(req["tests"], g, cap)
        if err is None:
            verdict = nonce
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    # Undo what the code may have changed in the interpreter before the next, unrelated call.
    builtins.__dict__.clear()
    builtins.__dict__.update(_builtins_snapshot)
    for name in set(sys.modules) - _modules_snapshot:
        del sys.modules[name]
    _clean_scratch()
    os.chdir(_SCRATCH)
    reply = {"stdout": _stable(cap.text()), "error": _stable(err), "output_limited": cap.over, "verdict": verdict}
    _proto_out.write(json.dumps(reply).encode() + b"\n")
