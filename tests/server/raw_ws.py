"""A WebSocket client on a bare TCP socket, for tests that need a client that truly does not read.

Client libraries read the socket from a background thread (websockets) or buffer for us; this one reads only
when the test calls :meth:`RawWebSocket.recv`, so TCP backpressure reaches the server exactly as a stuck
client makes it: the client's receive window fills, then the server's send buffer, then the server's own
transport. Frames it sends are masked as RFC 6455 requires of a client.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
from urllib.parse import urlsplit

OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8


class RawWebSocket:
    """One WebSocket connection to ``url`` (``http://host:port``) at ``path``; ``rcvbuf`` shrinks the
    socket's receive buffer so it fills after a few kilobytes."""

    def __init__(self, url: str, path: str = "/v1/stream", *, rcvbuf: int | None = 4096,
                 timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((parts.hostname, parts.port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)  # byte by byte: nothing after the handshake is consumed here
            if not chunk:
                raise ConnectionError(f"the server closed during the handshake: {head!r}")
            head += chunk
        self.status = int(head.split(b" ", 2)[1])
        self.close_code: int | None = None

    def send(self, data: bytes | str) -> None:
        """One unfragmented, masked message: binary for bytes, text for str."""
        opcode, body = (OP_TEXT, data.encode()) if isinstance(data, str) else (OP_BINARY, data)
        self.sock.sendall(frame(opcode, body))

    def _exact(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = self.sock.recv(min(n - len(out), 1 << 20))
            if not chunk:
                raise ConnectionError("connection closed mid-frame")
            out += chunk
        return bytes(out)

    def recv(self) -> bytes | str | None:
        """The next data message, or None once the server sent a close frame (``close_code`` then holds its
        code) or the connection ended (or was reset). Raises ``TimeoutError`` as the socket does."""
        while True:
            try:
                first = self.sock.recv(2)
            except ConnectionResetError:
                return None
            if not first:
                return None
            if len(first) == 1:
                first += self._exact(1)
            opcode, size = first[0] & 0x0F, first[1] & 0x7F
            if size == 126:
                size = struct.unpack("!H", self._exact(2))[0]
            elif size == 127:
                size = struct.unpack("!Q", self._exact(8))[0]
            body = self._exact(size)
            if opcode == OP_CLOSE:
                self.close_code = struct.unpack("!H", body[:2])[0] if len(body) >= 2 else 1005
                return None
            if opcode == OP_TEXT:
                return body.decode()
            if opcode == OP_BINARY:
                return body
            # ping/pong: not a data message

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawWebSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def frame(opcode: int, body: bytes) -> bytes:
    """A final, masked client frame."""
    mask = os.urandom(4)
    n = len(body)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    masked = (int.from_bytes(body, "little") ^ int.from_bytes(mask * (n // 4 + 1), "little")).to_bytes(
        n + 4, "little")[:n] if n else b""
    return head + mask + masked
