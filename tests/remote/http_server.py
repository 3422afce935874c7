"""A loopback-only HTTP server whose answers a test scripts: ranges or not, errors, redirects, lies.

Each path gets a list of :class:`Reply` objects, used one per request in order (the last one repeats), and
every request is logged with its ``Range`` and ``If-Range`` headers. Every loop in a handler is bounded
and every sleep is short, so a client that gives up early never leaves a thread running for long.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal


@dataclass
class Reply:
    """How to answer one request.

    ``length``: ``"exact"`` sends the true Content-Length; ``"none"`` sends none and closes the connection
    to end the body; ``"chunked"`` uses chunked transfer encoding; an int sends that (possibly false)
    Content-Length. ``send``: stop after this many body bytes and close the connection. ``delay_s``: wait
    before answering at all; ``stall_s``: wait after the bytes sent. ``trickle``: (bytes, seconds) per tick.
    """

    body: bytes = b""
    status: int = 200
    ranges: bool = True
    length: Literal["exact", "none", "chunked"] | int = "exact"
    send: int | None = None
    delay_s: float = 0.0
    stall_s: float = 0.0
    trickle: tuple[int, float] | None = None
    location: str | None = None
    etag: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Logged:
    path: str
    range: str | None
    if_range: str | None


class LoopbackServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: dict[str, list[Reply]] = {}
        self.log: list[Logged] = []
        self.lock = threading.Lock()

    def route(self, path: str, *replies: Reply) -> str:
        """Answer ``path`` with ``replies`` in order; returns the full URL."""
        with self.lock:
            self.routes[path] = list(replies)
        return self.url(path)

    def url(self, path: str) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}{path}"

    def next_reply(self, path: str) -> Reply | None:
        with self.lock:
            replies = self.routes.get(path)
            if not replies:
                return None
            return replies.pop(0) if len(replies) > 1 else replies[0]

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up early is what several tests do on purpose


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: LoopbackServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        try:
            self._answer()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True

    def _answer(self) -> None:
        server = self.server
        with server.lock:
            server.log.append(Logged(self.path, self.headers.get("Range"), self.headers.get("If-Range")))
        reply = server.next_reply(self.path.split("?", 1)[0])
        if reply is None:
            self._simple(404, b"not found")
            return
        time.sleep(reply.delay_s)
        if reply.location is not None:
            self.send_response(reply.status if reply.status != 200 else 302)
            self.send_header("Location", reply.location)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if reply.status != 200:
            self._simple(reply.status, reply.body or b"error")
            return
        body, start, status = reply.body, 0, 200
        asked = self.headers.get("Range")
        if asked and reply.ranges:
            if_range = self.headers.get("If-Range")
            match = re.fullmatch(r"bytes=(\d+)-", asked)
            if match and (if_range is None or if_range == reply.etag):
                start = int(match.group(1))
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
        payload = body[start:]
        self.send_response(status)
        if reply.etag:
            self.send_header("ETag", reply.etag)
        if reply.ranges:
            self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        for key, value in reply.headers.items():
            self.send_header(key, value)
        if reply.length == "exact":
            self.send_header("Content-Length", str(len(payload)))
        elif reply.length == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
        elif reply.length == "none":
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(reply.length))
        self.end_headers()
        to_send = payload if reply.send is None else payload[: reply.send]
        step, pause = reply.trickle if reply.trickle else (1 << 16, 0.0)
        for offset in range(0, len(to_send), step):  # bounded by the body's length
            piece = to_send[offset : offset + step]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if reply.length == "chunked" else piece)
            self.wfile.flush()
            time.sleep(pause)
        time.sleep(reply.stall_s)
        if reply.send is not None:
            self.close_connection = True
        elif reply.length == "chunked":
            self.wfile.write(b"0\r\n\r\n")

    def _simple(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def loopback_server() -> Iterator[LoopbackServer]:
    """A :class:`LoopbackServer` on 127.0.0.1 and a free port, serving in a thread until the block ends."""
    server = LoopbackServer()
    assert server.server_address[0] == "127.0.0.1"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
