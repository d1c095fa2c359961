#!/usr/bin/env python3
"""The server under abuse: peak and current memory of a real `agentcore serve` process.

Cases (issue 14, finding 4): a 2 MB batch of a million `0`s, a batch of 20,000 `rpc.discover`
calls, 16 unauthenticated requests announcing 30 MiB bodies (sent in full), and 200 slow-header
connections. Prints, per case, the server's VmRSS and VmHWM (peak) from /proc and what the client
saw, and at the end how many slow connections the server had closed.

    python3 scripts/bench_server_abuse.py [--bin target/debug/agentcore] [--slow 200]

Standard library only; the server runs with a fresh data directory on loopback.
"""
import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time


def memory(pid):
    text = open(f"/proc/{pid}/status").read()
    get = lambda k: int(re.search(rf"^{k}:\s+(\d+) kB", text, re.M).group(1)) // 1024
    return get("VmRSS"), get("VmHWM")


def post(port, body, token=None, timeout=60):
    """Sends a POST with `body` (bytes) and returns (status, response bytes)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    head = f"POST /api/v1/jsonrpc HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
    if token:
        head += f"Authorization: Bearer {token}\r\n"
    try:
        s.sendall(head.encode() + b"\r\n" + body)
    except (BrokenPipeError, ConnectionResetError):
        pass
    data = b""
    try:
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            data += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    s.close()
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1") else 0
    return status, data


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/debug/agentcore")
    ap.add_argument("--slow", type=int, default=200)
    args = ap.parse_args()
    data = tempfile.mkdtemp(prefix="agentcore-abuse-")
    proc = subprocess.Popen(
        [args.bin, "serve", "--port", "0", "--workers", "0", "--data-dir", data],
        stderr=subprocess.PIPE, text=True,
    )
    port = token = None
    while port is None or token is None:
        line = proc.stderr.readline()
        if not line:
            sys.exit("the server exited before it listened")
        if m := re.search(r"http://127\.0\.0\.1:(\d+)", line):
            port = int(m.group(1))
        if line.startswith("AGENTCORE_API_KEY="):
            token = line.strip().split("=", 1)[1]
    threading.Thread(target=lambda: proc.stderr.read(), daemon=True).start()
    pid = proc.pid
    print(f"server pid {pid}, port {port}; idle: RSS {memory(pid)[0]} MiB")

    def report(name, status, size):
        rss, hwm = memory(pid)
        print(f"{name}: HTTP {status}, {size / 1e6:.2f} MB answered; server RSS {rss} MiB, peak {hwm} MiB")

    zeros = b"[" + b",".join([b"0"] * 1_000_000) + b"]"
    status, body = post(port, zeros, token)
    report(f"batch of 1,000,000 zeros ({len(zeros) / 1e6:.1f} MB body)", status, len(body))
    discover = json.dumps([{"jsonrpc": "2.0", "method": "rpc.discover", "id": i} for i in range(20_000)]).encode()
    status, body = post(port, discover, token)
    report(f"batch of 20,000 rpc.discover ({len(discover) / 1e6:.1f} MB body)", status, len(body))
    big = b"0" * (30 << 20)
    statuses = []
    threads = [threading.Thread(target=lambda: statuses.append(post(port, big)[0])) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report(f"16 unauthenticated 30 MiB bodies (statuses {sorted(set(statuses))})", statuses[0], 0)
    slow = []
    for _ in range(args.slow):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /api/v1/jsonrpc HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: 1")
        slow.append(s)
    rss, hwm = memory(pid)
    print(f"{args.slow} slow-header connections open: server RSS {rss} MiB, peak {hwm} MiB")
    start = time.monotonic()
    closed = 0
    for s in slow:
        s.settimeout(max(0.1, 60 - (time.monotonic() - start)))
        # An answer (a 408) or the end of the stream: the server closed it; a timeout: still open.
        try:
            s.recv(1024)
            closed += 1
        except ConnectionResetError:
            closed += 1
        except socket.timeout:
            pass
    print(f"slow connections closed by the server: {closed} of {args.slow}, the last after {time.monotonic() - start:.1f} s")
    rss, hwm = memory(pid)
    print(f"at the end: server RSS {rss} MiB, peak {hwm} MiB")
    proc.terminate()
    proc.wait(timeout=30)


if __name__ == "__main__":
    main()
