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


# --- Verification in two interpreters -------------------------------------------------------------
# The answer's code runs in one interpreter (`serve`), the tests in another (`judge`) that never
# runs the answer's code: a function of the code is a proxy in the judge's namespace, whose call
# goes to the other interpreter (through the parent) and comes back as plain data. The verdict is
# the judge's alone, so nothing the code does (patching the harness, `json`, builtins, exiting,
# printing) can make the tests pass.

_PLAIN = "plain values only: None, bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset"


def _enc(v, depth=0):
    if depth > 200:
        raise TypeError("the value is nested more than 200 levels deep")
    t = type(v)
    if v is None or t is bool or t is int or t is float or t is str:
        return v
    if t is list:
        return [_enc(x, depth + 1) for x in v]
    if t is tuple:
        return {"$t": [_enc(x, depth + 1) for x in v]}
    if t is dict:
        return {"$d": [[_enc(k, depth + 1), _enc(x, depth + 1)] for k, x in v.items()]}
    if t is set or t is frozenset:
        return {"$s" if t is set else "$fs": [_enc(x, depth + 1) for x in v]}
    if t is bytes:
        return {"$b": v.hex()}
    if t is complex:
        return {"$c": [v.real, v.imag]}
    raise TypeError("a value of type %s cannot reach the tests (%s)" % (t.__name__, _PLAIN))


def _dec(v):
    if type(v) is list:
        return [_dec(x) for x in v]
    if type(v) is not dict:
        return v
    (tag, x), = v.items()
    if tag == "$t":
        return tuple(_dec(i) for i in x)
    if tag == "$d":
        return {_dec(k): _dec(i) for k, i in x}
    if tag == "$s":
        return {_dec(i) for i in x}
    if tag == "$fs":
        return frozenset(_dec(i) for i in x)
    if tag == "$b":
        return bytes.fromhex(x)
    if tag == "$c":
        return complex(x[0], x[1])
    raise ValueError("unknown tag %r" % (tag,))


def _dumps(v):
    return json.dumps(_enc(v))


def _loads(text):
    return _dec(json.loads(text))


def _send(obj):
    _proto_out.write(json.dumps(obj).encode() + b"\n")


def _describe(e):
    try:
        return type(e).__name__, str(e)[:2000]
    except BaseException:
        return "Exception", "(the exception could not be shown)"


def _serve(req):
    """Runs the answer's code, tells the parent its names, then serves calls to its functions."""
    import types
    cap = _Capture()
    sys.stdout = sys.stderr = cap
    g = {"__name__": "__main__", "__builtins__": builtins}
    err = _run(req["code"], g, cap)
    names = {}
    if err is None:
        for k, v in list(g.items()):
            if k.startswith("__") or isinstance(v, types.ModuleType):
                continue
            if isinstance(v, type):
                names[k] = {"kind": "other", "type": "class"}
            elif callable(v):
                names[k] = {"kind": "call"}
            else:
                try:
                    names[k] = {"kind": "value", "value": _dumps(v)}
                except Exception:
                    names[k] = {"kind": "other", "type": type(v).__name__}
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    _send({"stdout": _stable(cap.text()), "error": _stable(err), "output_limited": cap.over, "names": names})
    while True:
        line = _readline()
        if line is None:
            return
        call = json.loads(line)
        cap = _Capture()
        sys.stdout = sys.stderr = cap
        reply = {}
        try:
            args = _loads(call["args"])
            kwargs = _loads(call["kwargs"])
            result = g[call["call"]](*args, **kwargs)
            reply["result"] = _dumps(result)
            after = []
            for a in args:
                after.append(_enc(a) if type(a) in (list, dict, set) else None)
            reply["args_after"] = json.dumps(after)
        except _OutputLimit:
            reply = {"raised": {"type": "OutputLimitExceeded", "message": "output is limited to %d characters" % _MAX_OUT}}
        except MemoryError:
            reply = {"raised": {"type": "MemoryError", "message": "the sandbox's memory limit was reached"}}
        except BaseException as e:
            t, m = _describe(e)
            reply = {"raised": {"type": t, "message": m}}
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        reply["stdout"] = _stable(cap.text())
        reply["output_limited"] = cap.over
        _send(reply)


class _RemoteError(Exception):
    pass


def _exception(raised):
    cls = getattr(builtins, str(raised.get("type")), None)
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        return _RemoteError("%s: %s" % (raised.get("type"), raised.get("message")))
    try:
        return cls(raised.get("message"))
    except Exception:
        return _RemoteError("%s: %s" % (raised.get("type"), raised.get("message")))


def _update(orig, new):
    if type(orig) is list and type(new) is list:
        orig[:] = new
    elif type(orig) is dict and type(new) is dict:
        orig.clear()
        orig.update(new)
    elif type(orig) is set and type(new) is set:
        orig.clear()
        orig.update(new)


class _Channel:
    printed = []


def _proxy(name):
    def call(*args, **kwargs):
        _send({"call": name, "args": _dumps(list(args)), "kwargs": _dumps(kwargs)})
        line = _readline()
        if line is None:
            raise SystemExit(1)
        rep = json.loads(line)
        if rep.get("stdout"):
            _Channel.printed.append(rep["stdout"])
        if "raised" in rep:
            raise _exception(rep["raised"])
        after = rep.get("args_after")
        if after is not None:
            for a, new in zip(args, _dec(json.loads(after))):
                _update(a, new)
        return _loads(rep["result"])
    call.__name__ = call.__qualname__ = name
    return call


class _Opaque:
    def __init__(self, name, kind):
        object.__setattr__(self, "_what", "`%s` is a %s of the answer's code; the tests see its "
                           "functions and plain values only" % (name, kind))

    def __getattr__(self, _):
        raise TypeError(object.__getattribute__(self, "_what"))

    def __call__(self, *a, **k):
        raise TypeError(object.__getattribute__(self, "_what"))

    def __eq__(self, _):
        raise TypeError(object.__getattribute__(self, "_what"))

    __hash__ = None


def _judge(req):
    g = {"__name__": "__main__", "__builtins__": builtins}
    for k, d in req["names"].items():
        if d["kind"] == "call":
            g[k] = _proxy(k)
        elif d["kind"] == "value":
            g[k] = _loads(d["value"])
        else:
            g[k] = _Opaque(k, d.get("type", "object"))
    cap = _Capture()
    sys.stdout = sys.stderr = cap
    err = _run(req["judge"], g, cap)
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    out = "".join(_Channel.printed) + cap.text()
    _send({"verdict": err is None, "stdout": _stable(out), "error": _stable(err), "output_limited": cap.over})


_builtins_snapshot = dict(builtins.__dict__)
_modules_snapshot = set(sys.modules)
# Every module loaded now, with its namespace: a call that patches one (`json.dumps = ...`,
# `os.listdir = ...`, the worker's own helpers in `__main__`) is undone before the next call.
_namespaces = [(name, m, dict(m.__dict__)) for name, m in sys.modules.items() if m is not None]
_sys_path = list(sys.path)
_environ = dict(os.environ)


def _restore():
    builtins.__dict__.clear()
    builtins.__dict__.update(_builtins_snapshot)
    for name in set(sys.modules) - _modules_snapshot:
        del sys.modules[name]
    for name, module, saved in _namespaces:
        sys.modules[name] = module
        ns = module.__dict__
        if name != "__main__":
            # (In `__main__` the loop's own variables come and go; only its definitions return.)
            for k in [k for k in ns if k not in saved]:
                del ns[k]
        for k, v in saved.items():
            if ns.get(k, _restore) is not v:
                ns[k] = v
    sys.path[:] = _sys_path
    if dict(os.environ) != _environ:
        os.environ.clear()
        os.environ.update(_environ)


_proto_out.write(b'{"ready": true}\n')
while True:
    line = _readline()
    if line is None:
        break
    req = json.loads(line)
    # A verifying interpreter serves one verification and is then discarded by the parent.
    if req.get("serve"):
        _serve(req)
        break
    if "judge" in req:
        _judge(req)
        break
    cap = _Capture()
    sys.stdout = sys.stderr = cap
    g = {"__name__": "__main__", "__builtins__": builtins}
    # Like a REPL, the value of a final expression is printed (the tags format sends expressions).
    err = _run(req["code"], g, cap, echo=True)
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    # Undo what the code may have changed in the interpreter before the next call.
    _restore()
    _clean_scratch()
    os.chdir(_SCRATCH)
    reply = {"stdout": _stable(cap.text()), "error": _stable(err), "output_limited": cap.over}
    _proto_out.write(json.dumps(reply).encode() + b"\n")
