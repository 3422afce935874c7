"""The server's edge: message size caps, the connection limit, the per-address session limit, and large JSON
messages coded off the event loop.

A real server (uvicorn on 127.0.0.1) over a fake engine (tests/server/fake_engine.py): no model runs, so
these tests take seconds. Checks are of codes, counts and order, not timings.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from lipsync_tools.client import LipsyncClient
from lipsync_tools.errors import ProtocolError
from lipsync_tools.protocol import (
    AudioChunk,
    AudioFormat,
    BinaryCodec,
    Codec,
    ErrorReply,
    FrameReply,
    FrameRequest,
    ImageFormat,
    JsonCodec,
    Message,
    Pacing,
    SessionStart,
    SessionStarted,
)
from lipsync_tools.protocol.limits import (
    MAX_AUDIO_CHUNK_BYTES,
    MAX_CLIENT_BINARY_MESSAGE_BYTES,
    MAX_CLIENT_JSON_MESSAGE_BYTES,
)
from lipsync_tools.server import LipsyncServer, ServerConfig
from lipsync_tools.server.config import (
    MAX_BINARY_REQUEST_BYTES,
    MAX_JSON_REQUEST_BYTES,
    OFFLOAD_CODEC_BYTES,
    WS_MAX_MESSAGE_BYTES,
)
from tests.server.fake_engine import FAKE_PACKAGE, fake_server
from tests.server.raw_ws import OP_BINARY, RawWebSocket

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

BINARY = BinaryCodec()
JSON = JsonCodec()
BIN_TYPE = {"Content-Type": "application/x-lipsync"}
JSON_TYPE = {"Content-Type": "application/json"}


def request(i: int = 1, image: ImageFormat = ImageFormat.JPEG) -> FrameRequest:
    return FrameRequest(request_id=i, package_id=FAKE_PACKAGE, frame_index=i % 50, audio=AudioFormat.REPLAY,
                        image=image)


def full_chunk_binary() -> bytes:
    return bytes(BINARY.encode(AudioChunk(request_id=3, payload=bytes(MAX_AUDIO_CHUNK_BYTES))))


def full_chunk_json(size: int) -> str:
    """A valid JSON audio_chunk of 1 MiB, padded with whitespace (which JSON allows) to ``size`` bytes."""
    text = JSON.encode(AudioChunk(request_id=3, payload=bytes(MAX_AUDIO_CHUNK_BYTES)))
    assert len(text) <= size
    return text[:-1] + " " * (size - len(text)) + "}"


def oversize_count(server: LipsyncServer) -> float:
    return server.state.metrics.value("lipsync_errors_total", code="oversize")


def wait_for(condition: Callable[[], bool], seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def ws_connect(url: str, **kwargs: Any) -> ClientConnection:
    return connect(url.replace("http", "ws", 1) + "/v1/stream", compression=None, open_timeout=10,
                   max_size=None, **kwargs)


def ws_recv(ws: ClientConnection) -> Message:
    data = ws.recv(timeout=30)
    return (BINARY if isinstance(data, bytes) else JSON).decode(data)


@pytest.fixture(scope="module")
def server() -> Iterator[LipsyncServer]:
    with fake_server() as (running, _):
        yield running


# --- size caps --------------------------------------------------------------------------------------------


def test_caps_are_what_the_largest_valid_client_message_needs() -> None:
    # The largest valid client message is a full audio_chunk: 1 MiB of PCM and a 32-byte header, or in JSON
    # its base64 (4/3) in a small envelope, with 64 KiB left for keys and whitespace.
    assert MAX_BINARY_REQUEST_BYTES == MAX_CLIENT_BINARY_MESSAGE_BYTES == len(full_chunk_binary())
    assert MAX_BINARY_REQUEST_BYTES == (1 << 20) + 32
    envelope = len(JSON.encode(AudioChunk(request_id=2**32 - 1, payload=bytes(MAX_AUDIO_CHUNK_BYTES))))
    assert MAX_JSON_REQUEST_BYTES == MAX_CLIENT_JSON_MESSAGE_BYTES == 4 * ((1 << 20) + 2) // 3 + (64 << 10)
    assert 0 < MAX_JSON_REQUEST_BYTES - envelope <= 64 << 10
    assert WS_MAX_MESSAGE_BYTES == MAX_JSON_REQUEST_BYTES  # the transport takes the larger of the two
    # uvicorn is configured with it (and no longer with the 21.4 MiB of the protocol's request payload)
    config = ServerConfig(port=0)
    assert LipsyncServer(config).uvicorn.config.ws_max_size == WS_MAX_MESSAGE_BYTES < 2 << 20


def test_http_body_one_byte_over_the_cap_is_oversize_and_at_the_cap_is_read(server: LipsyncServer) -> None:
    url = f"{server.url}/v1/frame"
    before = oversize_count(server)
    cases: list[tuple[bytes, dict[str, str], Codec]] = [
        (full_chunk_binary(), BIN_TYPE, BINARY),
        (full_chunk_json(MAX_JSON_REQUEST_BYTES).encode(), JSON_TYPE, JSON),
    ]
    for body, headers, codec in cases:
        # at the cap: read and decoded (a valid audio_chunk, just not what /v1/frame takes)
        r = httpx.post(url, content=body, headers=headers, timeout=30)
        assert r.status_code == 400, r.content[:200]
        reply = codec.decode(r.content)
        assert isinstance(reply, ErrorReply) and reply.code == "unexpected_message"
        # one byte more: refused from its Content-Length, and while it streams without one
        for content in (body + b" ", iter([body, b" "])):
            r = httpx.post(url, content=content, headers=headers, timeout=30)
            assert r.status_code == 413
            refused = codec.decode(r.content)
            assert isinstance(refused, ErrorReply) and refused.code == "oversize"
            assert str(len(body)) in refused.message  # the limit is named
    assert oversize_count(server) == before + 4
    assert httpx.post(url, content=BINARY.encode(request()), headers=BIN_TYPE).status_code == 200


def test_binary_websocket_message_over_the_cap_is_oversize_and_the_socket_stays_open(
    server: LipsyncServer,
) -> None:
    before = oversize_count(server)
    with ws_connect(server.url) as ws:
        ws.send(full_chunk_binary())  # at the cap: decoded (an audio_chunk without a session)
        reply = ws_recv(ws)
        assert isinstance(reply, ErrorReply) and reply.code == "unexpected_message"
        ws.send(full_chunk_binary() + b"\0")  # one byte over: under the transport's (JSON) cap, over binary's
        reply = ws_recv(ws)
        assert isinstance(reply, ErrorReply) and reply.code == "oversize"
        assert f"{MAX_BINARY_REQUEST_BYTES + 1} bytes" in reply.message and "smaller chunks" in reply.message
        ws.send(BINARY.encode(request(9)))  # the socket still works
        answered = ws_recv(ws)
        assert isinstance(answered, FrameReply) and answered.request_id == 9
    assert oversize_count(server) == before + 1


def test_json_websocket_message_over_the_cap_closes_1009_and_the_server_serves_on(
    server: LipsyncServer,
) -> None:
    before = oversize_count(server)
    with ws_connect(server.url) as ws:
        ws.send(full_chunk_json(MAX_JSON_REQUEST_BYTES))  # exactly at the cap: read and decoded
        reply = ws_recv(ws)
        assert isinstance(reply, ErrorReply) and reply.code == "unexpected_message"
        with pytest.raises((ConnectionClosed, OSError)):  # noqa: PT012 (the send or the read sees the close)
            ws.send(full_chunk_json(MAX_JSON_REQUEST_BYTES + 1))  # refused from its frame header
            ws.recv(timeout=10)
        # 1009 when the client reads the server's close frame; 1006 or None when the server's close reached it
        # as a reset while it was still writing the big message (timing: both seen on this machine)
        assert ws.close_code in (1009, 1006, None)
    assert wait_for(lambda: oversize_count(server) == before + 1)
    with ws_connect(server.url) as ws:  # the next client is served
        ws.send(JSON.encode(request(4)))
        answered = ws_recv(ws)
        assert isinstance(answered, FrameReply) and answered.request_id == 4


# --- connection limit -------------------------------------------------------------------------------------


def test_connection_over_max_connections_is_refused_cleanly_and_the_server_serves_on() -> None:
    with fake_server(max_connections=2) as (server, _):
        overloaded = lambda: server.state.metrics.value("lipsync_errors_total", code="overloaded")  # noqa: E731
        first, second = ws_connect(server.url), ws_connect(server.url)
        try:
            for ws in (first, second):  # both open and working
                ws.send(BINARY.encode(request(1)))
                assert isinstance(ws_recv(ws), FrameReply)
            # a third WebSocket: accepted, told why, closed with 1013 (try again later)
            with ws_connect(server.url) as third:
                refused = ws_recv(third)
                assert isinstance(refused, ErrorReply) and refused.code == "overloaded"
                assert "--max-connections 2" in refused.message
                with pytest.raises(ConnectionClosed):
                    third.recv(timeout=10)
                assert third.close_code == 1013
            # an HTTP request: 503 with the protocol's error body, in its own encoding
            r = httpx.post(f"{server.url}/v1/frame", content=BINARY.encode(request(2)), headers=BIN_TYPE)
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            error = BINARY.decode(r.content)
            assert isinstance(error, ErrorReply) and error.code == "overloaded"
            r = httpx.get(f"{server.url}/v1/packages")
            assert r.status_code == 503 and JSON.decode(r.content).code == "overloaded"  # type: ignore[union-attr]
            # monitoring still answers a full server
            assert httpx.get(f"{server.url}/healthz").status_code == 200
            assert httpx.get(f"{server.url}/readyz").status_code == 200
            exposition = httpx.get(f"{server.url}/metrics").text
            assert 'lipsync_errors_total{code="overloaded"} 3' in exposition
            assert "lipsync_connections_refused_total 3" in exposition
        finally:
            first.close()
        assert overloaded() == 3
        # one left: room again (the server notices the close a moment later)
        assert wait_for(lambda: httpx.get(f"{server.url}/v1/packages").status_code == 200)
        with ws_connect(server.url) as again:
            again.send(BINARY.encode(request(5)))
            assert isinstance(ws_recv(again), FrameReply)
        second.close()


def test_in_flight_http_requests_count_against_the_connection_limit() -> None:
    with fake_server(delay=3.0, max_connections=1) as (server, _):
        results: list[int] = []

        def slow() -> None:
            r = httpx.post(f"{server.url}/v1/frame", content=BINARY.encode(request(1)), headers=BIN_TYPE,
                           timeout=30)
            results.append(r.status_code)

        worker = threading.Thread(target=slow)
        worker.start()
        try:
            # while the first is being rendered (3 s), a second request is refused
            assert wait_for(lambda: server.state.metrics.value("lipsync_messages_total", protocol="binary",
                                                               type="frame_request") == 1)
            r = httpx.post(f"{server.url}/v1/frame", content=BINARY.encode(request(2)), headers=BIN_TYPE)
            assert r.status_code == 503
        finally:
            worker.join(30)
        assert results == [200]
        assert httpx.post(f"{server.url}/v1/frame", content=BINARY.encode(request(3)),
                          headers=BIN_TYPE, timeout=30).status_code == 200


def test_serve_options_reach_the_config_and_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import lipsync_tools.server
    from lipsync_tools.cli.main import app
    from lipsync_tools.errors import UsageError

    configs: list[ServerConfig] = []
    monkeypatch.setattr(lipsync_tools.server, "run", lambda config, **_: configs.append(config))
    result = CliRunner().invoke(app, ["serve", "--max-connections", "3", "--max-sessions-per-ip", "2"])
    assert result.exit_code == 0, result.output
    assert (configs[0].max_connections, configs[0].max_sessions_per_ip) == (3, 2)
    defaults = ServerConfig()
    assert (defaults.max_connections, defaults.max_sessions_per_ip) == (256, 8)
    for bad in ({"max_connections": 0}, {"max_sessions_per_ip": 0}):
        with pytest.raises(UsageError, match=next(iter(bad))):
            ServerConfig(**bad).check()  # type: ignore[arg-type]


# --- sessions per client address --------------------------------------------------------------------------


def ws_from(url: str, address: str) -> ClientConnection:
    """A WebSocket whose client end is bound to ``address`` (any of 127.0.0.0/8 reaches a loopback server)."""
    sock = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=10,
                                    source_address=(address, 0))
    return connect(url.replace("http", "ws", 1) + "/v1/stream", sock=sock, compression=None,
                   open_timeout=10, max_size=None)


def test_sessions_per_client_address_are_limited_with_a_clear_message() -> None:
    with fake_server(max_sessions_per_ip=2) as (server, _), LipsyncClient(server.url) as client:
        first = client.session(FAKE_PACKAGE, pacing=Pacing.UNPACED)
        second = client.session(FAKE_PACKAGE, pacing=Pacing.UNPACED)
        with pytest.raises(ProtocolError) as refused:
            client.session(FAKE_PACKAGE, pacing=Pacing.UNPACED)
        assert refused.value.code == "overloaded"
        assert "client address 127.0.0.1 already runs 2 live sessions" in str(refused.value)
        assert "--max-sessions-per-ip 2" in str(refused.value)
        assert server.state.metrics.value("lipsync_sessions_refused_total") == 1
        # another address is counted apart
        with ws_from(server.url, "127.0.0.2") as other:
            start = SessionStart(request_id=1, package_id=FAKE_PACKAGE, pacing=Pacing.UNPACED)
            other.send(BINARY.encode(start))
            assert isinstance(ws_recv(other), SessionStarted)
        # an ended session frees its place
        first.end()
        assert list(first) == []
        first.close()
        third = client.session(FAKE_PACKAGE, pacing=Pacing.UNPACED)
        for session in (second, third):
            session.end()
            list(session)
            session.close()
    # every place was given back (ended, refused and disconnected sessions alike)
    assert wait_for(lambda: server.state._client_sessions == {})


# --- large JSON messages off the event loop ---------------------------------------------------------------


def test_large_json_replies_are_encoded_off_the_event_loop(
    server: LipsyncServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A spy encoder holds every large JSON encode until the test lets it go. Were it run on the event loop,
    # the loop would be stuck in it and the small request below could not be answered meanwhile.
    real_encode = JsonCodec.encode
    started, release = threading.Event(), threading.Event()
    threads: list[tuple[str, int]] = []

    def spy(self: JsonCodec, msg: Message) -> str:
        size = len(getattr(msg, "payload", b""))
        if threading.current_thread() is not threading.main_thread():  # the server's calls
            threads.append((threading.current_thread().name, size))
            if size > OFFLOAD_CODEC_BYTES:
                started.set()
                release.wait(30)
        return real_encode(self, msg)

    monkeypatch.setattr(JsonCodec, "encode", spy)
    big: list[Message] = []
    with ws_connect(server.url) as ws:
        ws.send(JSON.encode(request(1, ImageFormat.RAW_BGR)))  # a 2.76 MB raw frame: 3.7 MB of JSON
        reader = threading.Thread(target=lambda: big.append(ws_recv(ws)))
        reader.start()
        try:
            assert started.wait(30)
            # meanwhile a small request, JSON too, is answered at once
            answered = httpx.post(f"{server.url}/v1/frame", content=JSON.encode(request(2)),
                                  headers=JSON_TYPE, timeout=10)
            assert answered.status_code == 200
            assert not big  # the big reply is still being encoded
        finally:
            release.set()
            reader.join(30)
        # the same over HTTP: a large JSON body is encoded in a codec thread too
        r = httpx.post(f"{server.url}/v1/frame", content=JSON.encode(request(3, ImageFormat.RAW_BGR)),
                       headers=JSON_TYPE, timeout=30)
        assert r.status_code == 200 and len(r.content) > 3_600_000
    assert isinstance(big[0], FrameReply) and len(big[0].payload) == 1280 * 720 * 3
    large = [t for t, size in threads if size > OFFLOAD_CODEC_BYTES]
    small = [t for t, size in threads if size <= OFFLOAD_CODEC_BYTES]
    assert len(large) == 2 and all(t.startswith("lipsync-codec") for t in large), threads
    assert small and not any(t.startswith("lipsync-codec") for t in small), threads  # the JPEG reply


def test_large_json_messages_are_decoded_off_the_event_loop(
    server: LipsyncServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_decode = JsonCodec.decode
    threads: list[tuple[str, int]] = []

    def spy(self: JsonCodec, data: Any) -> Message:
        if threading.current_thread() is not threading.main_thread():
            threads.append((threading.current_thread().name, len(data)))
        return real_decode(self, data)

    monkeypatch.setattr(JsonCodec, "decode", spy)
    with ws_connect(server.url) as ws:
        ws.send(full_chunk_json(MAX_JSON_REQUEST_BYTES))
        assert isinstance(ws_recv(ws), ErrorReply)
        ws.send(JSON.encode(request(1)))
        assert isinstance(ws_recv(ws), FrameReply)
    r = httpx.post(f"{server.url}/v1/frame", content=full_chunk_json(MAX_JSON_REQUEST_BYTES).encode(),
                   headers=JSON_TYPE, timeout=30)
    assert r.status_code == 400
    large = [t for t, n in threads if n > OFFLOAD_CODEC_BYTES]
    small = [t for t, n in threads if n <= OFFLOAD_CODEC_BYTES]
    assert len(large) == 2 and all(t.startswith("lipsync-codec") for t in large), threads
    assert small and not any(t.startswith("lipsync-codec") for t in small), threads


def test_a_websocket_frame_over_the_cap_is_refused_from_its_header(server: LipsyncServer) -> None:
    # A client that announces 2 MiB and sends 10 bytes is closed (1009) at once: the server neither waits
    # for the rest nor buffers it.
    before = oversize_count(server)
    with RawWebSocket(server.url, rcvbuf=None) as ws:
        ws.sock.sendall(struct.pack("!BBQ", 0x80 | OP_BINARY, 0x80 | 127, 2 << 20) + bytes(4) + bytes(10))
        assert ws.recv() is None
        assert ws.close_code == 1009
    assert wait_for(lambda: oversize_count(server) == before + 1)


def test_a_session_refused_by_admission_gives_its_address_place_back() -> None:
    with (fake_server(max_sessions=1, max_sessions_per_ip=2) as (server, _),
          LipsyncClient(server.url) as client):
        with client.session(FAKE_PACKAGE, pacing=Pacing.UNPACED) as first:
            with pytest.raises(ProtocolError, match="--max-sessions 1"):
                client.session(FAKE_PACKAGE, pacing=Pacing.UNPACED)
            assert server.state._client_sessions == {"127.0.0.1": 1}
            first.end()
            list(first)
        assert wait_for(lambda: server.state._client_sessions == {})


@pytest.mark.parametrize(("path", "content_type"), [("/v1/frame", "application/x-lipsync"),
                                                    ("/v1/packages", "application/json")])
def test_a_client_that_leaves_half_way_through_its_body_is_a_disconnect_not_an_internal_error(
    path: str, content_type: str
) -> None:
    """Found by `lipsync bench --soak`: Starlette's ClientDisconnect was logged and counted as `internal`."""
    import socket
    from urllib.parse import urlsplit

    with fake_server() as (server, _):
        where = urlsplit(server.url)
        for _ in range(3):
            with socket.create_connection((where.hostname, where.port), timeout=10) as sock:
                sock.sendall(
                    f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
                    "Content-Length: 1000\r\n\r\n".encode() + b"x" * 500
                )
        metrics = server.state.metrics
        assert wait_for(lambda: metrics.value("lipsync_disconnects_total", pending="false") == 3)
        assert metrics.value("lipsync_errors_total", code="internal") == 0
        assert httpx.get(f"{server.url}/healthz").status_code == 200  # and it serves on
