"""Every kind of bad input gets its error code (or a clean close), is counted, and disturbs nobody else."""

from __future__ import annotations

import json
import re
import struct
import threading
import time

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from lipsync_tools.client import LipsyncClient
from lipsync_tools.protocol import (
    CODECS,
    PROTOCOL_VERSION,
    AudioFormat,
    BinaryCodec,
    ErrorReply,
    FrameReply,
    FrameRequest,
    JsonCodec,
    Message,
    SessionStart,
    SessionStarted,
)
from tests.server.servers import PACKAGE_ID, noise_window

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

BINARY = CODECS["binary"]
JSON = CODECS["json"]
BIN_TYPE = {"Content-Type": "application/x-lipsync"}
JSON_TYPE = {"Content-Type": "application/json"}


def replay_bytes(frame_index: int = 0, package_id: str = PACKAGE_ID, request_id: int = 5) -> bytearray:
    msg = FrameRequest(request_id=request_id, package_id=package_id, frame_index=frame_index,
                       audio=AudioFormat.REPLAY)
    return bytearray(BinaryCodec().encode(msg))


def patched(data: bytearray, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


# (name, body, content type, expected code, expected HTTP status)
HTTP_CASES = [
    ("bad magic", b"NOPE" + bytes(40), BIN_TYPE, "bad_magic", 400),
    ("future version", patched(replay_bytes(), 4, "<B", PROTOCOL_VERSION + 1), BIN_TYPE,
     "unsupported_version", 400),
    ("truncated header", bytes(replay_bytes()[:20]), BIN_TYPE, "truncated", 400),
    ("truncated body", bytes(replay_bytes()[:-1]), BIN_TYPE, "truncated", 400),
    ("trailing data", bytes(replay_bytes()) + b"x", BIN_TYPE, "trailing_data", 400),
    ("reserved bytes", patched(replay_bytes(), 22, "<H", 1), BIN_TYPE, "bad_field", 400),
    ("payload claims 20 MiB", patched(replay_bytes(), 24, "<I", 20 << 20), BIN_TYPE, "oversize", 413),
    ("pcm16 without samples", patched(replay_bytes(), 18, "<B", 1), BIN_TYPE, "bad_audio", 422),
    ("unknown package", bytes(replay_bytes(package_id="nobody")), BIN_TYPE, "unknown_package", 404),
    ("frame out of range", bytes(replay_bytes(frame_index=50)), BIN_TYPE, "frame_out_of_range", 422),
    ("not a request", BINARY.encode(SessionStart(request_id=1, package_id=PACKAGE_ID)), BIN_TYPE,
     "unexpected_message", 400),
    ("invalid json", b'{"v":1,', JSON_TYPE, "invalid_json", 400),
    ("json future version", b'{"v":9,"type":"frame_request"}', JSON_TYPE, "unsupported_version", 400),
    ("json missing field", b'{"v":2,"type":"frame_request","request_id":1}', JSON_TYPE, "bad_field", 400),
    ("json unknown package",
     JsonCodec().encode(FrameRequest(request_id=3, package_id="nobody", frame_index=0,
                                     audio=AudioFormat.REPLAY)).encode(), JSON_TYPE, "unknown_package", 404),
]


def error_counts(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics").text
    found = re.finditer(r'^lipsync_errors_total\{code="(\w+)"\} (\S+)$', text, re.M)
    return {m[1]: float(m[2]) for m in found}


@pytest.mark.parametrize(("name", "body", "headers", "code", "status"), HTTP_CASES,
                         ids=[c[0] for c in HTTP_CASES])
def test_http_bad_request_gets_its_code_and_is_counted(
    url: str, name: str, body: bytes, headers: dict[str, str], code: str, status: int
) -> None:
    before = error_counts(url).get(code, 0)
    r = httpx.post(f"{url}/v1/frame", content=body, headers=headers)
    assert r.status_code == status, r.content[:300]
    reply = (BINARY if headers is BIN_TYPE else JSON).decode(r.content)
    assert isinstance(reply, ErrorReply)
    assert reply.code == code
    assert error_counts(url).get(code, 0) == before + 1
    if code == "unknown_package":
        assert reply.request_id in (5, 3)  # a well-formed request's id is echoed


def test_http_transport_limits(url: str) -> None:
    r = httpx.post(f"{url}/v1/frame", content=b"hello", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    assert JSON.decode(r.content).code == "bad_field"  # type: ignore[union-attr]
    # Content-Length above the cap is refused before the body is read
    big = b"\0" * (23 << 20)
    r = httpx.post(f"{url}/v1/frame", content=big, headers=BIN_TYPE)
    assert r.status_code == 413
    assert BINARY.decode(r.content).code == "oversize"  # type: ignore[union-attr]

    def chunks() -> object:
        for _ in range(24):
            yield b"\0" * (1 << 20)

    # chunked upload without a length: counted as it arrives
    r = httpx.post(f"{url}/v1/frame", content=chunks(), headers=BIN_TYPE)  # type: ignore[arg-type]
    assert r.status_code == 413


def ws(url: str) -> ClientConnection:
    return connect(url.replace("http", "ws", 1) + "/v1/stream", compression=None, open_timeout=10,
                   legacy=True)


def recv(sock: ClientConnection) -> Message:
    data = sock.recv(timeout=30)
    return (BINARY if isinstance(data, bytes) else JSON).decode(data)


def test_websocket_errors_keep_the_socket_open(url: str) -> None:
    with ws(url) as sock:
        cases: list[tuple[bytes | str, str]] = [
            (bytes(replay_bytes()[:20]), "truncated"),
            (bytes(replay_bytes()) + b"!", "trailing_data"),
            (patched(replay_bytes(), 24, "<I", 20 << 20), "oversize"),
            ('{"v":1', "invalid_json"),
            ("[1, 2]", "invalid_json"),
            (patched(replay_bytes(), 5, "<B", 9), "bad_type"),
            (bytes(replay_bytes(package_id="nobody")), "unknown_package"),
            (bytes(replay_bytes(frame_index=10_000)), "frame_out_of_range"),
            # an audio chunk of 3 bytes (not whole samples), and before any session_start
            (b"LSYN\x02\x06" + bytes(18) + struct.pack("<I", 3) + bytes(4) + b"abc", "bad_audio"),
            (b"LSYN\x02\x06" + bytes(18) + struct.pack("<I", 2) + bytes(4) + b"ab", "unexpected_message"),
            (JSON.encode(ErrorReply(request_id=1, code="internal", message="x")), "unexpected_message"),
        ]
        for data, code in cases:
            sock.send(data)
            raw = sock.recv(timeout=30)
            # answered in the encoding it arrived in: a binary frame for bytes, a text frame for JSON
            assert type(raw) is type(data), (code, type(raw))
            reply = (BINARY if isinstance(raw, bytes) else JSON).decode(raw)
            assert isinstance(reply, ErrorReply), code
            assert reply.code == code
        # the socket still works: a silent session start on a bad package, then a good one
        sock.send(BINARY.encode(SessionStart(request_id=2, package_id="nobody")))
        assert recv(sock) == ErrorReply(request_id=2, code="unknown_package", message=recv_message(url))
        sock.send(BINARY.encode(SessionStart(request_id=3, package_id=PACKAGE_ID, start_frame=50)))
        bad_start = recv(sock)
        assert isinstance(bad_start, ErrorReply) and bad_start.code == "frame_out_of_range"
        sock.send(BINARY.encode(SessionStart(request_id=4, package_id=PACKAGE_ID)))
        started = recv(sock)
        assert isinstance(started, SessionStarted) and started.frame_count == 50


def recv_message(url: str) -> str:
    return "package 'nobody' is not loaded; list the loaded ones with GET /v1/packages"


@pytest.mark.parametrize(("data", "code"), [
    (b"GET / HTTP/1.1\r\n\r\n", "bad_magic"),
    (patched(replay_bytes(), 4, "<B", 7), "unsupported_version"),
    ('{"v":3,"type":"frame_request"}', "unsupported_version"),
])
def test_websocket_closing_errors_reply_then_close_1002(url: str, data: bytes | str, code: str) -> None:
    with ws(url) as sock:
        sock.send(data)
        reply = recv(sock)
        assert isinstance(reply, ErrorReply) and reply.code == code
        with pytest.raises(ConnectionClosed):
            sock.recv(timeout=10)
        assert sock.close_code == 1002


def as_v1_reader(data: bytes | str) -> Message:
    """What a protocol-1 client reads: the error must carry version 1 (error_reply's layout is unchanged)."""
    if isinstance(data, bytes):
        assert data[4] == 1, data[:8]
        return BINARY.decode(patched(bytearray(data), 4, "<B", PROTOCOL_VERSION))
    obj = json.loads(data)
    assert obj["v"] == 1, obj
    return JSON.decode(json.dumps({**obj, "v": PROTOCOL_VERSION}))


def test_an_old_client_gets_a_version_error_it_can_read(url: str) -> None:
    old_binary = patched(replay_bytes(), 4, "<B", 1)
    old_json = JSON.encode(FrameRequest(request_id=3, package_id=PACKAGE_ID, frame_index=0,
                                        audio=AudioFormat.REPLAY)).replace(f'"v":{PROTOCOL_VERSION}', '"v":1')
    r = httpx.post(f"{url}/v1/frame", content=old_binary, headers=BIN_TYPE)
    assert r.status_code == 400
    for reply in (as_v1_reader(r.content),
                  as_v1_reader(httpx.post(f"{url}/v1/frame", content=old_json, headers=JSON_TYPE).text)):
        assert isinstance(reply, ErrorReply) and reply.code == "unsupported_version"
        assert "version 1" in reply.message and f"version {PROTOCOL_VERSION}" in reply.message
        assert "pip install -U lipsync-tools" in reply.message
    for data in (old_binary, old_json):
        with ws(url) as sock:
            sock.send(data)
            reply = as_v1_reader(sock.recv(timeout=30))
            assert isinstance(reply, ErrorReply) and reply.code == "unsupported_version"
            with pytest.raises(ConnectionClosed):
                sock.recv(timeout=10)
            assert sock.close_code == 1002


def disconnect_counts(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    found = re.search(r'^lipsync_disconnects_total\{pending="true"\} (\S+)$', text, re.M)
    return float(found[1]) if found else 0.0


def test_client_leaving_mid_batch_is_counted_and_harmless(url: str) -> None:
    before = disconnect_counts(url)
    sock = ws(url)
    for i in range(3):
        sock.send(BINARY.encode(FrameRequest.from_pcm(noise_window(i), request_id=i, package_id=PACKAGE_ID,
                                                      frame_index=i)))
    time.sleep(0.05)  # let the server read them into the batcher
    sock.close()
    deadline = time.monotonic() + 20
    while disconnect_counts(url) < before + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert disconnect_counts(url) == before + 1
    with LipsyncClient(url) as client:  # and the server still serves
        reply = client.frame(FrameRequest(request_id=1, package_id=PACKAGE_ID, frame_index=0,
                                          audio=AudioFormat.REPLAY))
    assert reply.frame_index == 0


def test_a_bad_client_does_not_disturb_a_good_one(url: str) -> None:
    replies: list[FrameReply] = []
    failures: list[BaseException] = []

    def good_client() -> None:
        try:
            with LipsyncClient(url, protocol="binary") as client, client.stream() as stream:
                for i in range(6):
                    request = FrameRequest.from_pcm(noise_window(i), request_id=100 + i,
                                                    package_id=PACKAGE_ID, frame_index=i)
                    replies.append(stream.frame(request, timeout=60))
        except BaseException as exc:
            failures.append(exc)

    good = threading.Thread(target=good_client)
    good.start()
    rounds = 0
    while good.is_alive() and rounds < 200:
        rounds += 1
        _, body, headers, _, status = HTTP_CASES[rounds % len(HTTP_CASES)]
        assert httpx.post(f"{url}/v1/frame", content=body, headers=headers).status_code == status
        with ws(url) as sock:
            sock.send(b"garbage!" * 8)
            reply = recv(sock)
            assert isinstance(reply, ErrorReply) and reply.code == "bad_magic"
    good.join(timeout=90)
    assert not failures, failures
    assert [r.request_id for r in replies] == list(range(100, 106))
    assert [r.frame_index for r in replies] == list(range(6))
    assert rounds > 1, "the bad client never ran beside the good one"


def _oversize_count(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    line = next((x for x in text.splitlines() if x.startswith('lipsync_errors_total{code="oversize"}')), None)
    return float(line.rsplit(" ", 1)[1]) if line else 0.0


def test_websocket_message_over_the_transport_cap_is_refused_and_counted(url: str) -> None:
    from lipsync_tools.server.config import MAX_BINARY_REQUEST_BYTES, MAX_JSON_REQUEST_BYTES

    before = _oversize_count(url)
    sock = ws(url)
    # The server closes (1009) while the 20 MB message is still being written: the client sees either the
    # close or a reset connection, depending on timing.
    with pytest.raises((ConnectionClosed, OSError)):  # noqa: PT012 (the send or the read sees the close)
        sock.send(bytes(max(MAX_BINARY_REQUEST_BYTES, MAX_JSON_REQUEST_BYTES) + 1))
        sock.recv(timeout=10)
    sock.close()
    deadline = time.monotonic() + 10
    while _oversize_count(url) < before + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _oversize_count(url) == before + 1
    with ws(url) as sock:  # and the server still serves
        sock.send(bytes(replay_bytes()))
        assert not isinstance(recv(sock), ErrorReply)
