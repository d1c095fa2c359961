"""A small WebSocket client (RFC 6455) for ``TrainingClient.stream``: text messages from the
server, pings answered, masked client frames. Written on the standard library so the SDK keeps
no dependencies; ``websockets`` (the guide's choice) works against the same endpoint."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import ssl
import struct
import urllib.parse
from typing import Iterator, Optional

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# The largest message accepted: the server's messages are a few hundred bytes.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class WebSocket:
    """One connection; iterate it for the text messages, until the server closes."""

    def __init__(self, sock: socket.socket, buffered: bytes = b"") -> None:
        self._sock, self._buf = sock, buffered

    @classmethod
    def connect(cls, url: str, token: Optional[str] = None, timeout: float = 60.0) -> "WebSocket":
        """Opens ``ws://`` or ``wss://`` ``url``; ``token`` goes in ``Authorization: Bearer``.
        A refused upgrade raises ``agentcore.sdk.HTTPError`` with the server's status and body."""
        from .sdk import HTTPError

        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("ws", "wss"):
            raise ValueError(f"a WebSocket URL starts with ws:// or wss://, got {url!r}")
        port = u.port or (443 if u.scheme == "wss" else 80)
        sock = socket.create_connection((u.hostname, port), timeout=timeout)
        if u.scheme == "wss":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=u.hostname)
        key = base64.b64encode(os.urandom(16)).decode()
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        lines = [f"GET {path} HTTP/1.1", f"Host: {u.netloc}", "Upgrade: websocket", "Connection: Upgrade",
                 f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        if token:
            lines.append(f"Authorization: Bearer {token}")
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                sock.close()
                raise ConnectionError(f"{url}: the server closed the connection during the handshake")
            head += chunk
            if len(head) > 65536:
                sock.close()
                raise ConnectionError(f"{url}: handshake answer too long")
        head, rest = head.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
        if status != 101:
            body = rest
            length = int(headers.get("content-length", "0") or 0)
            while len(body) < length:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                body += chunk
            sock.close()
            raise HTTPError(status, body.decode(errors="replace"))
        accept = base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode()
        if headers.get("sec-websocket-accept") != accept:
            sock.close()
            raise ConnectionError(f"{url}: the server's Sec-WebSocket-Accept does not match the key")
        return cls(sock, rest)

    def __enter__(self) -> "WebSocket":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._send(0x8, b"")
        except OSError:
            pass
        self._sock.close()

    def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self._sock.recv(max(4096, n - len(self._buf)))
            if not chunk:
                raise ConnectionError("the WebSocket connection ended without a close frame")
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self._sock.sendall(header + mask + masked)

    def __iter__(self) -> Iterator[str]:
        message = b""
        while True:
            b0, b1 = self._read(2)
            fin, opcode, n = b0 & 0x80, b0 & 0x0F, b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", self._read(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", self._read(8))
            mask = self._read(4) if b1 & 0x80 else b""
            if n > MAX_MESSAGE_BYTES or len(message) + n > MAX_MESSAGE_BYTES:
                raise ConnectionError(f"a WebSocket message over {MAX_MESSAGE_BYTES} bytes")
            payload = self._read(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x8:  # close: answered, and the iteration ends
                return
            if opcode == 0x9:  # ping
                self._send(0xA, payload)
                continue
            if opcode == 0xA:
                continue
            message += payload
            if fin:
                yield message.decode()
                message = b""
