"""The clients' sans-I/O core: requests built, answers read, audio cut and paced, session state checked.

No server and no socket: bytes in, messages or errors out.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest

from lipsync_tools.client._common import (
    WS_MAX_SIZE,
    ClientOptions,
    SessionPhase,
    SessionState,
    api_json,
    audio_chunks,
    decode_wire,
    frame_call,
    health_call,
    load_package_call,
    metrics_call,
    paced_chunks,
    packages_call,
    pcm_bytes,
    ready_call,
    ready_delay,
    unload_package_call,
)
from lipsync_tools.errors import ProtocolError
from lipsync_tools.protocol import (
    CODECS,
    MAX_AUDIO_CHUNK_BYTES,
    AudioChunk,
    AudioFormat,
    ErrorReply,
    FrameReply,
    FrameRequest,
    ImageFormat,
    Message,
    SessionEnd,
    SessionStart,
    SessionStarted,
    UnsupportedVersionError,
)

REQUEST = FrameRequest(request_id=4, package_id="alice", frame_index=7, audio=AudioFormat.REPLAY)
REPLY = FrameReply(request_id=4, frame_index=7, image=ImageFormat.PNG, width=1, height=1, payload=b"x")
START = SessionStart(request_id=9, package_id="alice")
STARTED = SessionStarted(request_id=9, package_id="alice", fps=25.0, frame_count=50, width=320, height=240)


def wire_bytes(protocol: str, message: Message) -> bytes:
    wire = CODECS[protocol].encode(message)
    return wire.encode("utf-8") if isinstance(wire, str) else wire


def session_frame(k: int) -> FrameReply:
    return FrameReply(request_id=0, frame_index=k, image=ImageFormat.PNG, width=1, height=1, payload=b"x",
                      session_frame=k, audio_offset=k * 640)


def streaming() -> SessionState:
    state = SessionState(START, timeout=5.0)
    state.start_message()
    state.receive_started(STARTED)
    return state


# --- settings -----------------------------------------------------------------------------------------------


def test_options_check_the_url_and_codec_and_derive_the_websocket_settings() -> None:
    options = ClientOptions.parse("https://example.org:8443/", "json", "s3cret", 7.5)
    assert (options.url, options.codec.name) == ("https://example.org:8443", "json")
    assert options.ws_url == "wss://example.org:8443/v1/stream"
    assert options.headers == {"Authorization": "Bearer s3cret"}
    assert options.ws_options() == {"additional_headers": {"Authorization": "Bearer s3cret"},
                                    "max_size": WS_MAX_SIZE, "compression": None, "open_timeout": 7.5}
    assert ClientOptions.parse("http://h:1", "binary", None, 1).headers == {}
    with pytest.raises(ProtocolError, match="must start with http:// or https://") as url:
        ClientOptions.parse("ws://h:1", "binary", None, 1)
    assert url.value.code == "bad_field"
    with pytest.raises(ProtocolError, match="unknown codec 'xml'"):
        ClientOptions.parse("http://h:1", "xml", None, 1)


# --- HTTP ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["binary", "json"])
def test_a_frame_call_posts_the_request_in_its_codec_and_reads_the_reply(protocol: str) -> None:
    codec = CODECS[protocol]
    call = frame_call(codec, REQUEST)
    assert (call.method, call.path) == ("POST", "/v1/frame")
    assert call.headers == {"Content-Type": codec.content_type}
    assert call.content == wire_bytes(protocol, REQUEST) and codec.decode(call.content) == REQUEST
    assert call.read(200, f"{codec.content_type}; charset=utf-8", wire_bytes(protocol, REPLY)) == REPLY


def test_a_frame_answer_is_the_reply_or_the_servers_error() -> None:
    read = frame_call(CODECS["binary"], REQUEST).read
    missing = ErrorReply(request_id=4, code="unknown_package", message="no package 'alice'")
    refused = wire_bytes("binary", missing)
    with pytest.raises(ProtocolError, match="no package 'alice'") as error:
        read(404, "application/x-lipsync", refused)
    assert error.value.code == "unknown_package"
    old = wire_bytes("json", ErrorReply(request_id=0, code="unsupported_version", message="speak version 2"))
    with pytest.raises(UnsupportedVersionError):
        read(400, "application/json", old)
    with pytest.raises(ProtocolError, match="expected frame_reply, got session_end") as odd:
        read(200, "application/x-lipsync", wire_bytes("binary", SessionEnd(request_id=1)))
    assert odd.value.code == "unexpected_message"
    with pytest.raises(ProtocolError, match="HTTP 502 with Content-Type 'text/html'") as proxy:
        read(502, "text/html", b"<html>bad gateway</html>")
    assert proxy.value.code == "internal"
    with pytest.raises(ProtocolError) as garbage:
        read(200, "application/x-lipsync", b"garbage!")
    assert garbage.value.code == "bad_magic"


def test_api_calls_build_their_requests() -> None:
    load = load_package_call("bob", "/data/bob.lipsync")
    assert (load.method, load.path) == ("POST", "/v1/packages")
    assert load.headers == {"Content-Type": "application/json"}
    assert json.loads(load.content or b"") == {"id": "bob", "path": "/data/bob.lipsync"}
    plain = (packages_call(), unload_package_call("bob"), health_call(), ready_call(), metrics_call())
    assert [(c.method, c.path, c.content) for c in plain] == [
        ("GET", "/v1/packages", None), ("DELETE", "/v1/packages/bob", None), ("GET", "/healthz", None),
        ("GET", "/readyz", None), ("GET", "/metrics", None)]


def test_api_answers_are_read_and_errors_mapped() -> None:
    info = {"id": "bob", "n_frames": 50}
    assert packages_call().read(200, "application/json", json.dumps({"packages": [info]}).encode()) == [info]
    assert load_package_call("bob", "x").read(200, "application/json", json.dumps(info).encode()) == info
    assert unload_package_call("bob").read(200, "application/json", b'{"unloaded": "bob"}') is None
    not_loaded = json.dumps({"code": "unknown_package", "message": "package 'bob' is not loaded"}).encode()
    with pytest.raises(ProtocolError, match="package 'bob' is not loaded") as missing:
        unload_package_call("bob").read(404, "application/json", not_loaded)
    assert missing.value.code == "unknown_package"
    with pytest.raises(ProtocolError, match="HTTP 500: b'Internal Server Error'") as crash:
        packages_call().read(500, "text/plain", b"Internal Server Error")
    assert crash.value.code == "internal"
    with pytest.raises(ProtocolError, match="no list of packages") as odd:
        packages_call().read(200, "application/json", b'{"items": []}')
    assert odd.value.code == "internal"
    with pytest.raises(ProtocolError, match="expected a JSON object"):
        load_package_call("bob", "x").read(200, "application/json", b"[1, 2]")
    assert api_json(200, b"") is None
    with pytest.raises(ProtocolError, match="a JSON body") as bad:
        load_package_call("bob", "x").read(400, "application/json",
                                           b'{"code": "bad_field", "message": "a JSON body with an id"}')
    assert bad.value.code == "bad_field"
    assert [health_call().read(s, None, b"") for s in (200, 204, 404, 503)] == [True, False, False, False]
    assert metrics_call().read(200, "text/plain; version=0.0.4", b"lipsync_up 1\n") == "lipsync_up 1\n"
    with pytest.raises(ProtocolError) as denied:
        metrics_call().read(401, "application/json", b'{"code": "unauthorized", "message": "wrong token"}')
    assert denied.value.code == "unauthorized"


def test_readiness_is_true_false_or_a_startup_failure() -> None:
    read = ready_call().read
    assert read(200, "application/json", b'{"ready": true}') is True
    assert read(503, "application/json", b'{"ready": false, "reason": "loading"}') is False
    assert read(503, "text/html", b"<html>proxy</html>") is False  # not up yet: keep polling
    with pytest.raises(ProtocolError, match="server startup failed: no such model") as failed:
        read(503, "application/json", b'{"ready": false, "reason": "startup failed: no such model"}')
    assert failed.value.code == "internal"
    with pytest.raises(ProtocolError) as denied:
        read(401, "application/json", b'{"code": "unauthorized", "message": "wrong token"}')
    assert denied.value.code == "unauthorized"
    assert ready_delay(deadline=10.0, interval=0.05, now=9.0) == 0.05
    assert ready_delay(deadline=10.0, interval=0.05, now=10.0) is None


# --- audio --------------------------------------------------------------------------------------------------


def test_audio_is_int16_and_cut_into_whole_sample_chunks() -> None:
    samples = np.arange(-5, 5, dtype=np.int16)
    assert pcm_bytes(samples) == samples.astype("<i2").tobytes()
    assert pcm_bytes(bytearray(b"\1\0")) == b"\1\0"
    for bad in (np.zeros(4, np.float32), np.zeros((2, 2), np.int16)):
        with pytest.raises(ProtocolError, match="1-D int16 PCM") as refused:
            pcm_bytes(bad)
        assert refused.value.code == "bad_audio"
    assert [len(c) for c in audio_chunks(bytes(8000))] == [3200, 3200, 1600]  # 0.1 s default
    assert [len(c) for c in audio_chunks(bytes(10), chunk_seconds=0.0)] == [2] * 5  # never less than a sample
    assert [len(c) for c in audio_chunks(bytes(MAX_AUDIO_CHUNK_BYTES + 4), chunk_seconds=3600)] == [
        MAX_AUDIO_CHUNK_BYTES, 4]
    data = bytes(range(200))
    assert b"".join(audio_chunks(data, chunk_seconds=0.001)) == data  # in order, nothing lost or copied twice


def test_realtime_pacing_waits_for_each_chunks_time() -> None:
    ticks: Iterator[float] = iter([100.0, 100.0, 100.05, 100.3, 100.3])

    def clock() -> float:
        return next(ticks)

    paced = list(paced_chunks(bytes(3 * 3200), 0.1, realtime=True, clock=clock))
    # chunk k is due at 100 + 0.1 k; the clock says how much of that has passed already (late: no wait)
    assert [round(delay, 6) for delay, _ in paced] == [0.0, 0.05, 0.0]
    assert [len(chunk) for _, chunk in paced] == [3200, 3200, 3200]
    assert [delay for delay, _ in paced_chunks(bytes(6400), 0.1, realtime=False, clock=lambda: 0.0)] == [0, 0]


# --- sessions -----------------------------------------------------------------------------------------------


def test_a_session_runs_start_audio_end_in_order() -> None:
    state = SessionState(START, timeout=5.0)
    assert state.start_message() is START and state.phase is SessionPhase.STARTING
    assert state.receive_started(STARTED) is STARTED and state.started is STARTED
    first = state.audio_messages(np.zeros(4000, np.int16), chunk_seconds=0.1, now=50.0)
    assert [(m.request_id, len(m.payload)) for m in first] == [(1, 3200), (2, 3200), (3, 1600)]
    assert all(isinstance(m, AudioChunk) for m in first)
    more = state.audio_messages(bytes(6400), chunk_seconds=0.2, now=51.0)
    assert [(m.request_id, len(m.payload)) for m in more] == [(4, 6400)]  # numbered on; clock kept
    assert state.audio_started == 50.0
    assert state.end_message() == SessionEnd(request_id=9)
    assert state.phase is SessionPhase.ENDED
    assert state.frame_timeout(None) == 5.0 and state.frame_timeout(0.5) == 0.5
    assert state.receive_frame(session_frame(0)) == session_frame(0)
    assert state.play_time(session_frame(25)) == 50.0 + 1.0  # 16000 samples after the first chunk
    assert state.play_time(REPLY) is None  # no timeline
    summary = SessionEnd(request_id=9, frames_sent=1, frames_dropped=0)
    assert state.receive_frame(summary) is None
    assert state.finished and state.summary == summary
    with pytest.raises(ProtocolError, match="got frame_reply after the session finished"):
        state.receive_frame(session_frame(1))


def test_steps_out_of_order_are_refused_before_anything_is_sent() -> None:
    idle = SessionState(START)
    for step in (lambda: idle.audio_messages(bytes(2), 0.1, 0.0), idle.end_message,
                 lambda: idle.frame_timeout(None), lambda: idle.receive_started(STARTED)):
        with pytest.raises(ProtocolError, match="before session_start: start the session first") as early:
            step()
        assert early.value.code == "unexpected_message"
    idle.start_message()
    with pytest.raises(ProtocolError, match="cannot send session_start before session_started"):
        idle.start_message()
    with pytest.raises(ProtocolError, match="cannot send audio before session_started"):
        idle.audio_messages(bytes(2), 0.1, 0.0)
    ended = streaming()
    ended.end_message()
    with pytest.raises(ProtocolError, match="cannot send audio after session_end") as late:
        ended.audio_messages(bytes(2), 0.1, 0.0)
    assert late.value.code == "unexpected_message"
    with pytest.raises(ProtocolError, match="cannot send session_end after session_end"):
        ended.end_message()
    with pytest.raises(ProtocolError, match="cannot send session_start after session_end"):
        ended.start_message()
    assert ended.audio_started is None  # nothing was sent


def test_bad_audio_counts_nothing() -> None:
    state = streaming()
    with pytest.raises(ProtocolError) as odd:
        state.audio_messages(bytes(3201), chunk_seconds=0.1, now=1.0)  # half a sample at the end
    assert odd.value.code == "bad_audio"
    assert state.audio_started is None
    assert state.audio_messages(b"", chunk_seconds=0.1, now=1.5) == []  # no audio: the clock waits
    assert state.audio_started is None
    assert [m.request_id for m in state.audio_messages(bytes(2), 0.1, now=2.0)] == [1]
    assert state.audio_started == 2.0


def test_the_handshake_reads_a_refusal_or_an_odd_answer() -> None:
    state = SessionState(START)
    state.start_message()
    with pytest.raises(ProtocolError, match="cannot carry another live session") as refused:
        state.receive_started(ErrorReply(request_id=9, code="overloaded",
                                         message="cannot carry another live session"))
    assert refused.value.code == "overloaded"
    assert state.phase is SessionPhase.IDLE and state.started is None  # the socket may try again
    assert state.start_message() is START
    with pytest.raises(ProtocolError, match="expected session_started, got frame_reply") as odd:
        state.receive_started(REPLY)
    assert odd.value.code == "unexpected_message"


def test_session_messages_are_frames_errors_or_unexpected() -> None:
    state = streaming()
    with pytest.raises(ProtocolError, match="expected frame_reply, got session_started") as odd:
        state.receive_frame(STARTED)
    assert odd.value.code == "unexpected_message" and not state.finished
    with pytest.raises(ProtocolError) as kept:
        state.receive_frame(ErrorReply(request_id=3, code="bad_audio", message="odd chunk"))
    assert kept.value.code == "bad_audio" and not state.finished  # the server keeps the socket open
    with pytest.raises(ProtocolError, match="no audio for 30 s") as closing:
        state.receive_frame(ErrorReply(request_id=0, code="idle_timeout", message="no audio for 30 s"))
    assert closing.value.code == "idle_timeout" and state.finished and state.summary is None
    dropped = streaming()
    dropped.connection_closed()
    assert dropped.finished and dropped.summary is None


def test_sequence_numbers_wrap_at_32_bits() -> None:
    state = streaming()
    state._sequence = 0xFFFF_FFFE
    assert [m.request_id for m in state.audio_messages(bytes(6), 0.0, 0.0)] == [0xFFFF_FFFF, 0, 1]


def test_wire_messages_are_decoded_by_frame_kind() -> None:
    binary, text = CODECS["binary"].encode(REPLY), CODECS["json"].encode(REPLY)
    assert isinstance(binary, bytes) and isinstance(text, str)
    assert decode_wire(binary) == REPLY and decode_wire(text) == REPLY
    with pytest.raises(ProtocolError) as swapped:  # JSON sent in a binary frame
        decode_wire(text.encode())
    assert swapped.value.code == "bad_magic"
