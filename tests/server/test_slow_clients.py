"""Clients that do not read: the server holds a bounded amount for them and drops them with ``too_slow``.

A real server (uvicorn on 127.0.0.1) over a fake engine whose replies are raw 1280x720 frames (2.76 MB each),
and a client on a bare socket (tests/server/raw_ws.py) that reads only when the test says so. The checks are
of counts and order, not of timings: the machine is shared.
"""

from __future__ import annotations

import contextlib
import math
import socket
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from lipsync_tools.protocol import (
    AudioFormat,
    BinaryCodec,
    ErrorReply,
    FrameReply,
    FrameRequest,
    ImageFormat,
)
from tests.server.fake_engine import FAKE_PACKAGE, FAST_LIMITS, FakeInfo, fake_server
from tests.server.raw_ws import RawWebSocket

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

BINARY = BinaryCodec()
REPLY_BYTES = FakeInfo().width * FakeInfo().height * 3


def raw_request(i: int, image: ImageFormat = ImageFormat.RAW_BGR) -> bytes:
    return bytes(BINARY.encode(FrameRequest(request_id=i, package_id=FAKE_PACKAGE, frame_index=i % 50,
                                            audio=AudioFormat.REPLAY, image=image)))


def buffered_replies() -> int:
    """How many replies the kernel and the server's transport can take before a non-reading client's window
    shuts: the largest send buffer the kernel grows to (tcp_wmem), the transport's 64 KiB high-water mark,
    and one reply in flight into each."""
    wmem_max = 4 << 20
    with contextlib.suppress(OSError, ValueError, IndexError):
        wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    return math.ceil((wmem_max + (64 << 10)) / REPLY_BYTES) + 2


def wait_for(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def settled(read: Callable[[], int], quiet: float = 1.0, seconds: float = 30.0) -> int:
    """``read()`` once it has not changed for ``quiet`` seconds."""
    deadline = time.monotonic() + seconds
    last, since = read(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last


def test_pipelined_requests_that_are_never_read_hold_at_most_the_inflight_replies() -> None:
    # Issue 11: the in-flight slot was freed before the reply was sent, so a client that pipelined requests
    # and never read made the server render and hold every one (400 raw 720p requests: +2.2 GB).
    limits = FAST_LIMITS  # 2 requests in flight, 1 s for the socket to take a message
    sent = 100
    with fake_server(sessions=limits) as (server, engine):
        too_slow = lambda: server.state.metrics.value("lipsync_errors_total", code="too_slow")  # noqa: E731
        rss = psutil.Process().memory_info().rss
        with RawWebSocket(server.url) as ws:
            for i in range(sent):
                ws.send(raw_request(i))
            peak = rss
            stalled = settled(lambda: engine.rendered)
            peak = max(peak, psutil.Process().memory_info().rss)
            # Rendered: the requests in flight, plus the replies the kernel and the transport took before the
            # client's window shut (a few MB: here 4 of these 2.76 MB frames at most), never all 100.
            bound = limits.max_inflight_requests + buffered_replies()
            assert stalled <= bound < sent, (stalled, bound)
            assert peak - rss < 30 * REPLY_BYTES, (peak - rss) / 1e6  # before the fix: 200 replies' worth
            # The client took nothing for slow_client_seconds: the connection is dropped with too_slow, once.
            assert wait_for(lambda: too_slow() == 1, 30)
            assert settled(lambda: engine.rendered) <= bound  # dropping it rendered nothing more for it
            assert too_slow() == 1
            # What the client finds when it finally reads: frames the buffers held, then (if the socket took
            # it in time) the too_slow error, then the end of the connection.
            received: list[object] = []
            while (data := ws.recv()) is not None:
                received.append(BINARY.decode(data) if isinstance(data, bytes) else data)
        frames = [m for m in received if isinstance(m, FrameReply)]
        assert len(frames) <= stalled
        assert all(isinstance(m, FrameReply) or (isinstance(m, ErrorReply) and m.code == "too_slow")
                   for m in received), received
        assert ws.close_code in (None, 1008)  # a close frame, if one got through, says policy (too_slow)
        # and the server still answers the next client
        with RawWebSocket(server.url, rcvbuf=None) as good:
            good.send(raw_request(7, ImageFormat.JPEG))
            reply = good.recv()
            assert isinstance(reply, bytes)
            answered = BINARY.decode(reply)
            assert isinstance(answered, FrameReply) and answered.request_id == 7


def test_a_reading_client_gets_every_pipelined_reply_in_full() -> None:
    # The other side of the bound: a client that reads gets all its replies, however many it pipelines.
    with fake_server() as (server, engine), RawWebSocket(server.url, rcvbuf=None) as ws:
        for i in range(20):
            ws.send(raw_request(i))
        replies = []
        for _ in range(20):
            data = ws.recv()
            assert isinstance(data, bytes)
            replies.append(BINARY.decode(data))
    assert sorted(r.request_id for r in replies) == list(range(20))
    assert all(isinstance(r, FrameReply) and len(r.payload) == REPLY_BYTES for r in replies)
    assert engine.rendered == 20


def server_side(port: int, client: tuple[str, int]) -> list[str]:
    """States of this process's server-side sockets of the connection from ``client`` to ``port``."""
    return [c.status for c in psutil.Process().net_connections(kind="tcp")
            if c.laddr and c.laddr.port == port and c.raddr and (c.raddr.ip, c.raddr.port) == client]


def test_the_kernel_drops_a_connection_that_stays_stalled_after_the_close() -> None:
    # After the server's too_slow close, asyncio keeps a closed transport (and its buffered frames) until
    # the buffer is flushed, and the kernel probes a zero window for ever: TCP_USER_TIMEOUT on the listening
    # socket ends that, so a client that never reads again holds nothing on the server.
    limits = FAST_LIMITS
    if not hasattr(socket, "TCP_USER_TIMEOUT"):
        pytest.skip("TCP_USER_TIMEOUT is Linux-only")
    with fake_server(sessions=limits) as (server, _):
        listener = server.bind()
        port = listener.getsockname()[1]
        expected_ms = int(limits.stalled_connection_seconds * 1000)
        assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == expected_ms
        with RawWebSocket(server.url) as ws:
            client = ws.sock.getsockname()
            assert server_side(port, client) == ["ESTABLISHED"]
            for i in range(10):
                ws.send(raw_request(i))
            metrics = server.state.metrics
            assert wait_for(lambda: metrics.value("lipsync_errors_total", code="too_slow") == 1, 30)
            assert server_side(port, client) != []  # closed by the app, still held: its buffer is not flushed
            # Never read; the server's socket goes once the peer took nothing for stalled_connection_seconds.
            gone = wait_for(lambda: server_side(port, client) == [], limits.stalled_connection_seconds + 30)
            assert gone, server_side(port, client)
    assert limits.stalled_connection_seconds > limits.slow_client_seconds + 2 * limits.close_timeout_seconds
