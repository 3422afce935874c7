"""The browser demo: its files, the frames endpoint, its JavaScript codec and a real session in Chromium.

The browser tests drive Debian's chromium through Playwright (Playwright's own browser download is not
used). Without chromium a local run skips them; CI (``CI=true``, where ``make install`` installs it) fails.
Chromium's fake-media flags feed the espeak speech WAV as the microphone, so the page streams real speech.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from lipsync_tools.errors import ProtocolError
from lipsync_tools.protocol import (
    CODECS,
    AudioChunk,
    ErrorCode,
    ErrorReply,
    FrameReply,
    ImageFormat,
    Pacing,
    SessionEnd,
    SessionStart,
    SessionStarted,
)
from lipsync_tools.server import LipsyncServer, PackageSpec, ServerConfig
from lipsync_tools.server.demo import FRAMES_CONTENT_TYPE, STATIC_DIR, demo_routes
from lipsync_tools.server.metrics import Metrics
from tests.conftest import _in_ci
from tests.server.servers import PACKAGE_ID, running_server

TOKEN = "s3cret"
CHROMIUM = "/usr/bin/chromium"
BINARY = CODECS["binary"]
STATIC_FILES = ("demo.html", "demo.js", "demo.css", "capture-worklet.js")


# --- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_server(avatar_package: Path) -> Iterator[LipsyncServer]:
    """``astro`` on the identity model (loads in a fraction of a second), with a bearer token."""
    config = ServerConfig(
        packages=(PackageSpec(id=PACKAGE_ID, path=avatar_package),),
        port=0,
        model="identity",
        backend="torch",
        warmup_frames=1,
        token=TOKEN,
    )
    with running_server(config) as server:
        yield server


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium and Playwright; skips (locally) or fails (in CI) when either is missing."""
    exe = shutil.which("chromium") or (CHROMIUM if os.access(CHROMIUM, os.X_OK) else None)
    reason = None
    if exe is None:
        reason = "chromium is not installed (apt-get install chromium; `make install` does it)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "playwright is not installed (pip install -e '.[dev]')"
    if reason is not None:
        if _in_ci():
            pytest.fail(f"{reason}; CI must have it")
        pytest.skip(reason)
    assert exe is not None
    return exe


def launch_args(microphone_wav: Path | None = None) -> list[str]:
    """Chromium flags: no sandbox (CI runs as root), autoplay, and optionally a WAV as the microphone."""
    args = ["--no-sandbox", "--autoplay-policy=no-user-gesture-required"]
    if microphone_wav is not None:
        args += [
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={microphone_wav}",
        ]
    return args


class PageErrors(list[str]):
    """Console errors and uncaught exceptions of a page, collected as they happen."""

    def watch(self, page: Any) -> Any:
        page.on("console", lambda m: self.append(f"console: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.append(f"pageerror: {e}"))
        return page


@pytest.fixture
def demo_page(demo_server: LipsyncServer, chromium: str) -> Iterator[tuple[Any, PageErrors]]:
    """The demo page (with the token in its address) in headless Chromium, and its collected errors."""
    from playwright.sync_api import sync_playwright

    errors = PageErrors()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=launch_args())
        try:
            page = errors.watch(browser.new_page())
            page.goto(f"{demo_server.url}/demo?token={TOKEN}")
            page.wait_for_function("() => window.lipsyncCodec !== undefined")
            yield page, errors
        finally:
            browser.close()


# --- the page's files -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_demo_files_are_public_uncached_and_same_origin_only(demo_server: LipsyncServer) -> None:
    url = demo_server.url
    page = httpx.get(f"{url}/demo")  # no token: the page itself holds no data
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-cache"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert 'src="/demo/demo.js"' in page.text and 'href="/demo/demo.css"' in page.text
    for name, kind in (
        ("demo.js", "javascript"),
        ("demo.css", "text/css"),
        ("capture-worklet.js", "javascript"),
    ):
        r = httpx.get(f"{url}/demo/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"], name
        assert r.headers["cache-control"] == "no-cache"
        assert r.content == (STATIC_DIR / name).read_bytes()
    assert httpx.get(f"{url}/demo/missing.js").status_code == 404
    assert httpx.get(f"{url}/v1/packages").status_code == 401  # the API still wants the token
    for name in STATIC_FILES:  # nothing is fetched from another origin: no CDN, no web fonts
        text = (STATIC_DIR / name).read_text()
        assert "http://" not in text and "https://" not in text and "@import" not in text, name


# --- the frames endpoint ----------------------------------------------------------------------------------


def parse_frames(body: bytes) -> dict[str, Any]:
    """The frames container (docs in lipsync_tools/server/demo.py), parsed independently of the server."""
    magic, version, codec, reserved, count, width, height, fps = struct.unpack_from("<4sBBHIIId", body)
    lengths = struct.unpack_from(f"<{count}I", body, 28)
    images, offset = [], 28 + 4 * count
    for length in lengths:
        images.append(body[offset : offset + length])
        offset += length
    assert offset == len(body), "the body is longer or shorter than its lengths say"
    return {
        "magic": magic,
        "version": version,
        "codec": codec,
        "reserved": reserved,
        "count": count,
        "width": width,
        "height": height,
        "fps": fps,
        "images": images,
    }


@pytest.mark.slow
def test_frames_endpoint_sends_the_stored_frames(demo_server: LipsyncServer) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = httpx.get(f"{demo_server.url}/v1/packages/{PACKAGE_ID}/frames", headers=auth)
    assert r.status_code == 200 and r.headers["content-type"] == FRAMES_CONTENT_TYPE
    assert int(r.headers["content-length"]) == len(r.content)
    frames = parse_frames(r.content)
    loaded = demo_server.state.store.get(PACKAGE_ID)
    assert frames.pop("images") == loaded.encoded_frames
    assert frames == {
        "magic": b"LSFR",
        "version": 1,
        "codec": 1,
        "reserved": 0,
        "count": 50,
        "width": 320,
        "height": 240,
        "fps": 25.0,
    }
    assert loaded.encoded_frames[0][:2] == b"\xff\xd8"  # JPEG, as the codec byte says


@pytest.mark.slow
def test_frames_endpoint_errors_are_error_replies(demo_server: LipsyncServer) -> None:
    url = demo_server.url
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for path, headers, status, code in (
        (f"/v1/packages/{PACKAGE_ID}/frames", {}, 401, "unauthorized"),
        (f"/v1/packages/{PACKAGE_ID}/frames", {"Authorization": "Bearer wrong"}, 401, "unauthorized"),
        ("/v1/packages/nobody/frames", auth, 404, "unknown_package"),
        ("/v1/packages/-x/frames", auth, 400, "bad_field"),
    ):
        r = httpx.get(f"{url}{path}", headers=headers)
        assert r.status_code == status, path
        error = CODECS["json"].decode(r.content)
        assert isinstance(error, ErrorReply) and error.code == code, (path, error)


class FakeStore:
    """The two store calls the frames endpoint makes."""

    def __init__(self) -> None:
        self.packages: dict[str, Any] = {}

    def get(self, package_id: str) -> Any:
        if package_id not in self.packages:
            raise ProtocolError(ErrorCode.UNKNOWN_PACKAGE, f"no package {package_id!r}")
        return self.packages[package_id]

    def __contains__(self, package_id: object) -> bool:
        return package_id in self.packages


def fake_package(frames: list[bytes], codec: str = "png") -> Any:
    info = SimpleNamespace(width=4, height=2, fps=30.0, n_frames=len(frames) or 3)
    return SimpleNamespace(info=info, encoded_frames=frames, frame_codec=codec)


def fake_app(catalog: dict[str, Any]) -> tuple[TestClient, FakeStore, Metrics]:
    """The demo routes over a fake state whose ``ensure_package`` loads ids of ``catalog`` on first use."""
    store, metrics = FakeStore(), Metrics()

    async def ensure_package(package_id: str) -> None:
        if package_id in catalog and package_id not in store:
            store.packages[package_id] = catalog[package_id]

    state: Any = SimpleNamespace(store=store, metrics=metrics, ensure_package=ensure_package)
    return TestClient(Starlette(routes=demo_routes(state))), store, metrics


def test_frames_endpoint_loads_a_catalog_id_first_and_streams_the_stored_bytes() -> None:
    images = [b"\x89PNG-a", b"\x89PNG-bb", b"\x89PNG-ccc"]
    client, store, _ = fake_app({"cat": fake_package(images)})
    assert "cat" not in store
    r = client.get("/v1/packages/cat/frames")
    assert r.status_code == 200 and "cat" in store
    frames = parse_frames(r.content)
    assert frames["images"] == images and frames["codec"] == 2 and frames["fps"] == 30.0
    assert (frames["count"], frames["width"], frames["height"]) == (3, 4, 2)


def test_frames_endpoint_refuses_a_package_loaded_without_frames() -> None:
    client, _, metrics = fake_app({"bare": fake_package([])})
    r = client.get("/v1/packages/bare/frames")
    assert r.status_code == 400
    error = CODECS["json"].decode(r.content)
    assert isinstance(error, ErrorReply) and error.code == "bad_field"
    assert "was loaded without its full frames (--frames none)" in error.message
    assert 'lipsync_errors_total{code="bad_field"} 1' in metrics.render()
    r = client.get("/v1/packages/nobody/frames")
    assert r.status_code == 404 and CODECS["json"].decode(r.content).code == "unknown_package"


# --- the JavaScript codec against the Python one ----------------------------------------------------------

JS_DECODE = """(bytes) => {
  try {
    const m = window.lipsyncCodec.decode(new Uint8Array(bytes));
    if (m.payload) m.payload = Array.from(m.payload);
    return m;
  } catch (e) {
    return {error: e.code, message: e.message};
  }
}"""


def js_decode(page: Any, data: bytes) -> dict[str, Any]:
    result: dict[str, Any] = page.evaluate(JS_DECODE, list(data))
    return result


@pytest.mark.slow
def test_js_decoder_reads_what_the_python_codec_writes(demo_page: tuple[Any, PageErrors]) -> None:
    page, errors = demo_page
    jpeg = FrameReply(
        request_id=0,
        frame_index=42,
        image=ImageFormat.JPEG,
        width=320,
        height=240,
        timings={"infer": 3456, "encode": 789},
        session_frame=7,
        audio_offset=2**53 - 1,
        payload=b"\xff\xd8\xff\xd9",
    )
    assert js_decode(page, BINARY.encode(jpeg)) == {
        "type": "frame_reply",
        "version": 2,
        "requestId": 0,
        "frameIndex": 42,
        "image": 1,
        "width": 320,
        "height": 240,
        "rect": None,
        "silence": False,
        "timeline": True,
        "sessionFrame": 7,
        "audioOffset": 2**53 - 1,
        "timings": {"infer": 3456, "encode": 789},
        "payload": [0xFF, 0xD8, 0xFF, 0xD9],
    }
    crop = FrameReply(
        request_id=0,
        frame_index=43,
        image=ImageFormat.CROP_ONLY,
        width=2,
        height=1,
        rect=(100, 80, 196, 176),
        session_frame=70_000,
        audio_offset=2**32 + 5,
        payload=bytes([0, 0, 255, 255, 255, 255]),
    )
    got = js_decode(page, BINARY.encode(crop))
    assert (got["image"], got["width"], got["height"], got["rect"]) == (4, 2, 1, [100, 80, 196, 176])
    assert (got["sessionFrame"], got["audioOffset"], got["payload"]) == (
        70_000,
        2**32 + 5,
        [0, 0, 255, 255, 255, 255],
    )
    jpeg_crop = FrameReply(request_id=0, frame_index=43, image=ImageFormat.CROP_JPEG, width=96, height=96,
                           rect=(100, 80, 196, 176), session_frame=71, audio_offset=45440,
                           payload=b"\xff\xd8\xff\xd9")
    got = js_decode(page, BINARY.encode(jpeg_crop))
    assert (got["image"], got["rect"], got["payload"]) == (5, [100, 80, 196, 176], [0xFF, 0xD8, 0xFF, 0xD9])
    silence = FrameReply(
        request_id=0,
        frame_index=44,
        image=ImageFormat.CROP_ONLY,
        width=0,
        height=0,
        silence=True,
        session_frame=9,
        audio_offset=5760,
    )
    got = js_decode(page, BINARY.encode(silence))
    assert (got["silence"], got["rect"], got["payload"], got["width"]) == (True, None, [], 0)
    one_shot = FrameReply(request_id=3, frame_index=1, image=ImageFormat.PNG, width=1, height=1, payload=b"x")
    got = js_decode(page, BINARY.encode(one_shot))
    assert (got["timeline"], got["sessionFrame"], got["audioOffset"]) == (False, None, None)

    error = ErrorReply(request_id=3, code="overloaded", message="busy: retry in 2 s, ünïcode ✓")
    assert js_decode(page, BINARY.encode(error)) == {
        "type": "error_reply",
        "version": 2,
        "requestId": 3,
        "code": "overloaded",
        "message": "busy: retry in 2 s, ünïcode ✓",
    }
    # an error a version 1 server writes (same layout) is still read, so the page can say why it was refused
    old = js_decode(
        page, BINARY.encode_error(ErrorReply(request_id=0, code="unsupported_version", message="speak 1"), 1)
    )
    assert (old["version"], old["code"], old["message"]) == (1, "unsupported_version", "speak 1")
    started = SessionStarted(
        request_id=1, package_id=PACKAGE_ID, fps=29.97, frame_count=50, width=320, height=240, max_lag_ms=400
    )
    assert js_decode(page, BINARY.encode(started)) == {
        "type": "session_started",
        "version": 2,
        "requestId": 1,
        "packageId": PACKAGE_ID,
        "fps": 29.97,
        "frameCount": 50,
        "width": 320,
        "height": 240,
        "maxLagMs": 400,
    }
    end = SessionEnd(request_id=1, frames_sent=100, frames_dropped=3)
    assert js_decode(page, BINARY.encode(end)) == {
        "type": "session_end",
        "version": 2,
        "requestId": 1,
        "framesSent": 100,
        "framesDropped": 3,
    }
    assert errors == []


def malformed(message: bytes) -> list[tuple[str, bytes]]:
    """Broken variants of ``message``, one per check of the decoder's order."""
    version3 = message[:4] + b"\x03" + message[5:]
    return [
        ("bad magic", b"LSYX" + message[4:]),
        ("magic prefix only", message[:3]),
        ("short header", message[:20]),
        ("version 3", version3),
        ("reserved byte", message[:22] + b"\x01" + message[23:]),
        ("type 9", message[:5] + b"\x09" + message[6:]),
        ("cut payload", message[:-1]),
        ("extra byte", message + b"\0"),
        ("unknown flag", message[:6] + b"\x04\x00" + message[8:]),
    ]


@pytest.mark.slow
def test_js_decoder_refuses_what_the_python_codec_refuses(demo_page: tuple[Any, PageErrors]) -> None:
    page, _ = demo_page
    reply = BINARY.encode(
        FrameReply(
            request_id=0,
            frame_index=1,
            image=ImageFormat.JPEG,
            width=2,
            height=2,
            session_frame=1,
            audio_offset=640,
            payload=b"\xff\xd8",
        )
    )
    version1_reply = reply[:4] + b"\x01" + reply[5:]  # only an error_reply may come in version 1
    for name, data in [*malformed(reply), ("frame_reply in version 1", version1_reply)]:
        with pytest.raises(ProtocolError) as python:
            BINARY.decode(data)
        assert js_decode(page, data).get("error") == python.value.code, name


JS_ENCODE = """() => {
  const c = window.lipsyncCodec;
  const bytes = (buffer) => Array.from(new Uint8Array(buffer));
  let refused = null;
  try { c.encodeSessionStart({requestId: 1, packageId: "../etc"}); } catch (e) { refused = e.code; }
  return {
    start: bytes(c.encodeSessionStart({requestId: 5, packageId: "astro", startFrame: 3,
                                       image: c.IMAGE.CROP_ONLY, jpegQuality: 70,
                                       pacing: c.PACING.REALTIME})),
    chunk: bytes(c.encodeAudioChunk(6, c.floatToPcm16(new Float32Array([0, 0.5, -0.25, 1, -1, 2, -3])))),
    end: bytes(c.encodeSessionEnd(7)),
    refused,
  };
}"""


@pytest.mark.slow
def test_js_encoder_writes_what_the_python_codec_writes(demo_page: tuple[Any, PageErrors]) -> None:
    page, errors = demo_page
    out = page.evaluate(JS_ENCODE)
    start = SessionStart(
        request_id=5,
        package_id=PACKAGE_ID,
        start_frame=3,
        image=ImageFormat.CROP_ONLY,
        jpeg_quality=70,
        pacing=Pacing.REALTIME,
    )
    assert BINARY.decode(bytes(out["start"])) == start
    assert bytes(out["start"]) == BINARY.encode(start)
    chunk = BINARY.decode(bytes(out["chunk"]))
    assert isinstance(chunk, AudioChunk) and chunk.request_id == 6
    assert list(struct.unpack("<7h", chunk.payload)) == [0, 16384, -8192, 32767, -32767, 32767, -32767]
    assert bytes(out["chunk"]) == BINARY.encode(AudioChunk(request_id=6, payload=bytes(chunk.payload)))
    assert BINARY.decode(bytes(out["end"])) == SessionEnd(request_id=7)
    assert bytes(out["end"]) == BINARY.encode(SessionEnd(request_id=7))
    assert out["refused"] == "bad_field"
    assert errors == []


# --- a real session in the browser ------------------------------------------------------------------------


def run_session(page: Any, mode: str, seconds: float) -> dict[str, Any]:
    """A microphone session in ``mode`` ("jpeg" or "crop"): start, stream ``seconds``, stop, await its end."""
    page.check(f"input[name=mode][value={mode}]")
    page.check("input[name=source][value=mic]")
    page.click("#start")
    try:
        page.wait_for_function(
            "() => !document.getElementById('stop').disabled || window.lipsyncStats.ended", timeout=30_000
        )
    except Exception:
        print("STATS", page.evaluate("window.lipsyncStats"), page.inner_text("body")[:3000])
        raise
    page.wait_for_timeout(seconds * 1000)
    page.click("#stop")
    try:
        page.wait_for_function("() => window.lipsyncStats.ended", timeout=30_000)
    except Exception:
        print("STATS", page.evaluate("window.lipsyncStats"), page.inner_text("body")[:2000])
        raise
    stats: dict[str, Any] = page.evaluate("window.lipsyncStats")
    return stats


def check_session(stats: dict[str, Any], mode: str, fps: float) -> None:
    assert stats["errors"] == [], stats["errors"]
    assert stats["mode"] == mode
    assert stats["framesDrawn"] > 0
    frame_ms = 1000 / fps
    # every frame that arrived before its play time was drawn within one frame interval of it
    assert stats["avOffsetMsMaxAbs"] is not None and stats["avOffsetMsMaxAbs"] <= frame_ms, stats
    assert stats["sessionEnd"] is not None, "the server's session_end never came"
    assert stats["sessionEnd"]["framesSent"] == stats["framesReceived"]
    assert stats["framesDrawn"] + stats["framesSuperseded"] == stats["framesReceived"]
    assert stats["bytesPerFrame"] > 0


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_demo_streams_the_microphone_and_draws_frames_on_the_audio_clock(
    demo_server: LipsyncServer, chromium: str, speech_wav: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    errors = PageErrors()
    fps = demo_server.state.package_info(PACKAGE_ID).fps
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=launch_args(speech_wav))
        try:
            page = errors.watch(browser.new_page(viewport={"width": 1100, "height": 900}))
            page.goto(f"{demo_server.url}/demo?token={TOKEN}")
            page.wait_for_function("() => document.getElementById('avatar').options.length > 0")
            page.select_option("#avatar", PACKAGE_ID)
            full = run_session(page, "jpeg", 4.0)
            crop = run_session(page, "crop", 4.0)
            page.screenshot(path=tmp_path / "demo.png", full_page=True)
        finally:
            browser.close()
    print(json.dumps({"jpeg": full, "crop": crop}, indent=1))
    check_session(full, "jpeg", fps)
    check_session(crop, "crop", fps)
    assert crop["framesDownloadBytes"] > 0
    # the crop travels as a small JPEG: a fraction of the full frame's bytes
    assert crop["bytesPerFrame"] < full["bytesPerFrame"]
    assert errors == []
    assert (tmp_path / "demo.png").stat().st_size > 0
