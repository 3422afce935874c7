"""The clients of ``lipsync bench --soak`` and what they saw: :class:`SoakRun` runs them against one
server, :class:`Tally` counts every request's outcome (:mod:`lipsync_tools.bench.soak` describes the kinds
and the rules).

Every client is a coroutine of one event loop doing one thing at a time; every wait is bounded by the
request timeout; what a client holds is bounded (one connection, one session, at most 16 pipelined
requests; the unexpected errors listed and the latencies kept are capped).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ..errors import ProtocolError
from .probes import Probe, as_this_version, probes, raw_http

if TYPE_CHECKING:
    from .soak import SoakOptions

PACKAGE_ID = "avatar"
CATALOG_ID = "soak-catalog"
"""The package's second name, in the server's ``--catalog``: loaded by ``POST /v1/packages {"id"}`` or on
demand by a frame request."""
SAMPLE_RATE = 16000

ROSTER: tuple[str, ...] = (
    "session",
    "session",
    "http_frame",
    "stream_frame",
    "packages",
    "slow_reader",
    "vanishing",
    "malformed",
)
"""The 8 concurrent clients, by kind (:mod:`lipsync_tools.bench.soak` says what each does)."""
CLIENT_KINDS: tuple[str, ...] = tuple(dict.fromkeys(ROSTER))
OUTCOMES: tuple[str, ...] = ("ok", "expected_error", "unexpected_error", "timeout")

RSS_WINDOW = 5
"""One-second RSS samples whose median is the "after warm-up" and the "end" figure (one sample can catch
a package the ``packages`` client has just loaded)."""
MAX_LISTED = 100
"""Unexpected errors listed one by one (every one is counted)."""
LATENCY_RESERVOIR = 20_000
"""Frame-request latencies kept per transport for the percentiles (a uniform sample beyond that)."""
SLOW_READ_SECONDS = 0.2
SLOW_SESSION_SECONDS = 2.0
"""Speech of a slow reader's session: 60 frames, 12 s to read at one frame per ``SLOW_READ_SECONDS``."""
SLOW_RECEIVE_BUFFER = 4096
OVERLOADED = frozenset({"overloaded"})

Progress = Callable[[str], None]
T = TypeVar("T")


# --- what the clients saw ---------------------------------------------------------------------------------


class Reservoir:
    """A uniform sample of at most ``size`` values of a stream (Vitter's algorithm R), and its count."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.values: list[float] = []
        self.count = 0
        self._rng = random.Random(seed)

    def add(self, value: float) -> None:
        self.count += 1
        if len(self.values) < self.size:
            self.values.append(value)
            return
        slot = self._rng.randrange(self.count)
        if slot < self.size:
            self.values[slot] = value

    def stats_ms(self) -> dict[str, Any]:
        """``count``, and ``p50``/``p99``/``max`` in ms (``None`` when empty)."""
        if not self.values:
            return {"count": self.count, "p50": None, "p99": None, "max": None}
        values = np.asarray(self.values, dtype=np.float64) * 1000
        return {
            "count": self.count,
            "p50": round(float(np.percentile(values, 50)), 2),
            "p99": round(float(np.percentile(values, 99)), 2),
            "max": round(float(values.max()), 2),
        }


@dataclass(eq=False)
class Tally:
    """Every outcome, by client kind and by error code; the unexpected ones listed; latencies; sessions."""

    t0: float
    seed: int = 0
    outcomes: dict[str, Counter[str]] = field(default_factory=dict)
    codes: dict[str, Counter[str]] = field(default_factory=dict)
    unexpected: list[dict[str, Any]] = field(default_factory=list)
    unexpected_total: int = 0
    sessions: Counter[str] = field(default_factory=Counter)
    latency: dict[str, Reservoir] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.outcomes = {kind: Counter() for kind in CLIENT_KINDS}
        self.latency = {
            t: Reservoir(LATENCY_RESERVOIR, self.seed + i) for i, t in enumerate(("http", "stream"))
        }

    def ok(self, kind: str) -> None:
        self.outcomes[kind]["ok"] += 1

    def error(self, kind: str, what: str, code: str, detail: str, *, expected: bool) -> None:
        self.codes.setdefault(code, Counter())["expected" if expected else "unexpected"] += 1
        if expected:
            self.outcomes[kind]["expected_error"] += 1
            return
        self.outcomes[kind]["unexpected_error"] += 1
        self.unexpected_total += 1
        if len(self.unexpected) < MAX_LISTED:
            self.unexpected.append(
                {
                    "at_seconds": round(time.monotonic() - self.t0, 2),
                    "client": kind,
                    "request": what,
                    "code": code,
                    "detail": " ".join(detail.split())[:300],
                }
            )

    def timeout(self, kind: str, what: str) -> None:
        self.outcomes[kind]["timeout"] += 1
        if len(self.unexpected) < MAX_LISTED:
            self.unexpected.append(
                {
                    "at_seconds": round(time.monotonic() - self.t0, 2),
                    "client": kind,
                    "request": what,
                    "code": "timeout",
                    "detail": "no answer in time",
                }
            )


def failure_code(exc: BaseException) -> str | None:
    """The code an exception of a request stands for (``None``: a timeout).

    An error reply: its code. A WebSocket closed: ``closed_<close code>`` (``connection_lost`` without a
    close frame). HTTP: ``http_<status>`` for a refused upgrade. The network: ``connection_refused``,
    ``connection_reset``.
    """
    import httpx
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return None
    if isinstance(exc, ProtocolError):
        return str(exc.code)
    if isinstance(exc, ConnectionClosed):
        received = exc.rcvd.code if exc.rcvd is not None else 1006  # 1006: no close frame came
        return f"closed_{received}" if received != 1006 else "connection_lost"
    if isinstance(exc, InvalidStatus):
        return f"http_{exc.response.status_code}"
    if isinstance(exc, InvalidHandshake):
        return "bad_handshake"
    if isinstance(exc, ConnectionRefusedError | httpx.ConnectError):
        return "connection_refused"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "connection_lost"
    if isinstance(exc, ConnectionError | httpx.TransportError):
        return "connection_reset"
    if isinstance(exc, OSError):
        return f"os_error_{exc.errno}"
    raise TypeError(f"not a request failure: {type(exc).__name__}")  # a bug of the benchmark: let it show


def _failures() -> tuple[type[BaseException], ...]:
    """The exception types a request may end with (everything else is a bug of the benchmark)."""
    import httpx
    from websockets.exceptions import ConnectionClosed, InvalidHandshake

    return (
        TimeoutError,
        ProtocolError,
        ConnectionClosed,
        InvalidHandshake,
        httpx.HTTPError,
        OSError,
        asyncio.IncompleteReadError,
    )


@dataclass(eq=False)
class _Rss:
    """The server's RSS, sampled once a second: what the report needs, in bounded memory."""

    start: int = 0
    peak: int = 0
    samples: int = 0
    after_warmup: list[int] = field(default_factory=list)
    recent: deque[int] = field(default_factory=lambda: deque(maxlen=RSS_WINDOW))
    per_minute: list[dict[str, Any]] = field(default_factory=list)
    end: int | None = None
    idle_end: int | None = None


class SoakRun:
    """The running soak: the server's address, the clients' shared tally, and the stop signal."""

    def __init__(
        self,
        options: SoakOptions,
        url: str,
        server: Any,
        bench_input: Any,
        speech: np.ndarray,
        package_name: str,
        say: Progress,
        ticker: Any,
    ) -> None:
        from ..client._common import ws_url

        self.options = options
        self.url = url
        self.ws_url = ws_url(url)
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.server = server
        self.input = bench_input
        self.speech = speech
        self.package_name = package_name
        self.say = say
        self.ticker = ticker
        self.timeout = options.request_timeout
        self.tally = Tally(t0=time.monotonic(), seed=options.seed)
        self.rss = _Rss()
        self.crashes: list[dict[str, Any]] = []
        self.stop = asyncio.Event()
        self.failures = _failures()
        self.started_at = time.monotonic()
        self.ended_at: float | None = None
        self.sessions_after: dict[str, Any] = {}  # GET /readyz's sessions once every client left
        self.metrics_after: dict[str, Any] = {}  # what _metrics reads of GET /metrics then

    @property
    def running(self) -> bool:
        return not self.stop.is_set()

    async def pause(self, seconds: float) -> bool:
        """Sleep ``seconds``, or less when the soak ends; True when it is still running."""
        with contextlib.suppress(TimeoutError):
            await within(seconds, self.stop.wait())
        return self.running

    # --- one request, judged ---------------------------------------------------------------------------

    async def attempt(
        self, kind: str, what: str, make: Callable[[], Awaitable[T]], expected: frozenset[str] = OVERLOADED
    ) -> T | None:
        """Await ``make()`` within the request timeout; on failure count it (expected when its code is in
        ``expected``) and return None. Success is counted by the caller, once it checked the answer."""
        try:
            return await within(self.timeout, make())
        except self.failures as exc:
            self.judge(kind, what, exc, expected)
            return None

    def judge(self, kind: str, what: str, exc: BaseException, expected: frozenset[str]) -> None:
        code = failure_code(exc)
        if code is None:
            self.tally.timeout(kind, what)
        else:
            self.tally.error(kind, what, code, str(exc), expected=code in expected)

    async def provoke(
        self, kind: str, what: str, make: Callable[[], Awaitable[Any]], codes: frozenset[str]
    ) -> None:
        """A request that must fail with one of ``codes``: that is an expected error; success, or any other
        failure, is unexpected."""
        try:
            await within(self.timeout, make())
        except self.failures as exc:
            self.judge(kind, what, exc, codes)
            return
        self.tally.error(
            kind, what, "no_error", f"expected {' or '.join(sorted(codes))}, got success", expected=False
        )

    # --- frames -----------------------------------------------------------------------------------------

    def frame_request(self, n: int, request_id: int) -> tuple[Any, frozenset[str], str]:
        """Request ``n`` of a frame client: mostly a real frame; every 10th a frame past the end, every
        10th (offset 5) an unknown package. Returns (request, the codes it provokes, its description)."""
        from ..protocol import FrameRequest, ImageFormat

        index = (n * 7) % self.input.n_frames
        package, provoked, what = PACKAGE_ID, frozenset[str](), "frame"
        if n % 10 == 0:
            index, provoked, what = (
                self.input.n_frames,
                frozenset({"frame_out_of_range"}),
                "frame past the end",
            )
        elif n % 10 == 5:
            package, provoked, what = "no-such-avatar", frozenset({"unknown_package"}), "unknown package"
        window = self.input.window(index % self.input.n_frames)
        request = FrameRequest.from_pcm(
            window,
            request_id=request_id,
            package_id=package,
            frame_index=index,
            image=ImageFormat.JPEG,
            jpeg_quality=85,
        )
        return request, provoked, what

    def check_frame(
        self,
        kind: str,
        what: str,
        reply: Any,
        index: int,
        decode: bool,
        width: int | None = None,
        height: int | None = None,
    ) -> bool:
        """Count ``reply`` ok if it is frame ``index`` at the package's size (and its JPEG decodes when
        ``decode``); else an unexpected ``wrong_reply``."""
        width = self.input.width if width is None else width
        height = self.input.height if height is None else height
        problem = ""
        if reply.frame_index != index:
            problem = f"frame {reply.frame_index} instead of {index}"
        elif (reply.width, reply.height) != (width, height):
            problem = f"{reply.width}x{reply.height} instead of {width}x{height}"
        elif decode and not _decodes(bytes(reply.payload), width, height):
            problem = "an image that does not decode to the package's size"
        if problem:
            self.tally.error(kind, what, "wrong_reply", problem, expected=False)
            return False
        self.tally.ok(kind)
        return True

    async def one_frame(
        self, kind: str, transport: str, send: Callable[[Any], Awaitable[Any]], n: int, label: str
    ) -> bool:
        """One frame request of a frame client, judged; False when the connection should be renewed."""
        request, provoked, what = self.frame_request(n, n & 0xFFFF_FFFF)
        what = f"{label} {what}"
        if provoked:
            await self.provoke(kind, what, lambda: send(request), provoked)
            return True
        t0 = time.perf_counter()
        try:
            reply = await within(self.timeout, send(request))
        except self.failures as exc:
            self.judge(kind, what, exc, OVERLOADED)
            return isinstance(exc, ProtocolError)  # an error reply leaves the connection usable
        self.tally.latency[transport].add(time.perf_counter() - t0)
        self.check_frame(kind, what, reply, request.frame_index, decode=n % 10 == 1)
        return True

    # --- sessions ---------------------------------------------------------------------------------------

    def speech_from(self, rng: random.Random, seconds: float) -> bytes:
        from .live import _looped

        samples = max(SAMPLE_RATE // 10, round(seconds * SAMPLE_RATE))
        offset = rng.randrange(self.speech.size)
        return bytes(_looped(self.speech, offset, samples).astype("<i2").tobytes())

    async def open_session(self, kind: str, client: Any, package_id: str, request_id: int) -> Any | None:
        from ..protocol import ImageFormat, Pacing

        return await self.attempt(
            kind,
            f"session_start on {package_id}",
            lambda: client.session(
                package_id, pacing=Pacing.REALTIME, image=ImageFormat.JPEG, request_id=request_id
            ),
        )

    async def run_session(
        self,
        kind: str,
        session: Any,
        pcm: bytes,
        *,
        what: str = "live session",
        expected: frozenset[str] = frozenset(),
        read: Callable[..., Awaitable[None]] | None = None,
    ) -> None:
        """Say ``pcm`` on an admitted ``session`` as a microphone does while reading its frames (``read``:
        :func:`.live._read`, or a slower reader), then judge it: ok when the server's ``session_end`` came and
        its counts add up; an error whose code is in ``expected`` is expected; anything else unexpected."""
        from .live import SessionRecord, _feed, _read

        record = SessionRecord(index=0, offset_samples=0, samples=len(pcm) // 2)
        assert session.started is not None  # begin() returned it
        record.fps = float(session.started.fps)
        record.max_lag_ms = int(session.started.max_lag_ms)
        chunk = self.options.chunk_ms / 1000
        t_start = time.monotonic() + 0.02
        self.tally.sessions["started"] += 1
        sender = asyncio.create_task(_feed(session, pcm, t_start, chunk, record))
        reader = read or _read
        limit = len(pcm) / (2 * SAMPLE_RATE) + self.timeout + 15
        try:
            await within(limit, reader(session, record))
        except _Abandoned:
            return
        except self.failures as exc:
            self.judge(kind, what, exc, expected)
            self._count_frames(record)
            return
        finally:
            if not sender.done():
                sender.cancel()
            with contextlib.suppress(BaseException):
                await sender
        summary = session.summary
        if summary is not None:
            record.sent, record.dropped = int(summary.frames_sent), int(summary.frames_dropped)
        self._count_frames(record)
        if summary is None:
            close = getattr(session.ws, "close_code", None)
            # 1006 is never sent: websockets reports it for a connection that ended without a close frame
            code = f"closed_{close}" if close not in (None, 1006) else "connection_lost"
            self.tally.error(
                kind,
                what,
                code,
                "the connection closed before the server's session_end",
                expected=code in expected,
            )
            return
        self.tally.sessions["completed"] += 1
        problem = ""
        sent, dropped = int(summary.frames_sent), int(summary.frames_dropped)
        if sent + dropped != record.frames_expected:
            problem = f"frames sent {sent} + dropped {dropped} != {record.frames_expected} of its audio"
        elif len(record.frames) != sent:
            problem = f"{len(record.frames)} frames received, the server says {sent} sent"
        elif record.timeline_errors:
            problem = f"{record.timeline_errors} frames out of the timeline"
        elif record.first_image is not None and not _decodes(
            record.first_image, self.input.width, self.input.height
        ):
            problem = "its first frame does not decode to the package's size"
        if problem:
            self.tally.error(kind, what, "session_counts", problem, expected=False)
        else:
            self.tally.ok(kind)

    def _count_frames(self, record: Any) -> None:
        """A session's frames: received here, and what the server's ``session_end`` says it dropped."""
        self.tally.sessions["frames_received"] += len(record.frames)
        if record.dropped is not None:
            self.tally.sessions["frames_dropped"] += record.dropped
            self.tally.sessions["frames_expected"] += record.frames_expected

    # --- the clients ------------------------------------------------------------------------------------

    async def session_client(self, slot: int) -> None:
        from ..client import AsyncLipsyncClient

        rng = random.Random(self.options.seed * 1000 + slot)
        async with AsyncLipsyncClient(self.url, timeout=self.timeout) as client:
            n = 0
            while self.running:
                n += 1
                session = await self.open_session("session", client, PACKAGE_ID, n)
                if session is None:
                    await self.pause(1.0)
                    continue
                try:
                    pcm = self.speech_from(rng, self.options.session_seconds * rng.uniform(0.5, 1.5))
                    await self.run_session("session", session, pcm)
                finally:
                    with contextlib.suppress(Exception):
                        await session.close()
                await self.pause(0.2)

    async def http_frame_client(self, slot: int) -> None:
        from ..client import AsyncLipsyncClient

        async with (
            AsyncLipsyncClient(self.url, "binary", timeout=self.timeout) as binary,
            AsyncLipsyncClient(self.url, "json", timeout=self.timeout) as text,
        ):
            n = 0
            while self.running:
                n += 1
                client = binary if n % 2 else text
                await self.one_frame(
                    "http_frame", "http", client.frame, n, f"POST /v1/frame ({client.codec.name})"
                )
                await self.pause(0.02)

    async def stream_frame_client(self, slot: int) -> None:
        from ..client import AsyncLipsyncClient

        async with AsyncLipsyncClient(self.url, timeout=self.timeout) as client:
            n = 0
            while self.running:
                stream = await self.attempt("stream_frame", "open /v1/stream", client.stream)
                if stream is None:
                    await self.pause(1.0)
                    continue
                try:
                    for _ in range(100):
                        n += 1
                        usable = await self.one_frame(
                            "stream_frame",
                            "stream",
                            partial(_frame_on_stream, stream, self.timeout),
                            n,
                            "/v1/stream",
                        )
                        if not usable or not await self.pause(0.02):
                            break
                finally:
                    with contextlib.suppress(Exception):
                        await stream.close()

    async def packages_client(self, slot: int) -> None:
        from ..client import AsyncLipsyncClient

        rng = random.Random(self.options.seed * 1000 + slot)
        kind = "packages"
        async with AsyncLipsyncClient(self.url, timeout=self.timeout) as client:
            cycle = 0
            while self.running:
                cycle += 1
                package_id = f"soak-{cycle % 10_000}"
                info = await self.attempt(
                    kind, "load by path", partial(client.load_package, package_id, self.package_name)
                )
                if info is not None:
                    self.tally.ok(kind)
                    await self.provoke(
                        kind,
                        "load an id already loaded",
                        partial(client.load_package, package_id, self.package_name),
                        frozenset({"conflict"}),
                    )
                    await self.frame_on(client, package_id, cycle)
                    unloaded = False
                    if cycle % 2 == 0 and self.running:
                        unloaded = await self.session_unloaded_under(client, package_id, rng, cycle)
                    if not unloaded:
                        await self.unload(client, package_id)
                    await self.provoke(
                        kind,
                        "unload an id not loaded",
                        partial(client.unload_package, package_id),
                        frozenset({"unknown_package"}),
                    )
                if not self.running:
                    break
                catalog = await self.attempt(
                    kind, "load the catalog id", lambda: self.load_catalog_id(client)
                )
                if catalog is not None:
                    self.tally.ok(kind)
                    await self.frame_on(client, CATALOG_ID, cycle)
                    await self.unload(client, CATALOG_ID)
                    await self.frame_on(client, CATALOG_ID, cycle + 1, what="frame loading the catalog id")
                    await self.unload(client, CATALOG_ID)
                await self.provoke(
                    kind,
                    "load a path outside --package-dir",
                    lambda: client.load_package("soak-outside", "../outside.sanders"),
                    frozenset({"forbidden"}),
                )
                await self.pause(0.5)

    async def load_catalog_id(self, client: Any) -> dict[str, Any]:
        from ..client._common import api_json

        r = await client._http.post("/v1/packages", json={"id": CATALOG_ID})
        info: dict[str, Any] = api_json(r.status_code, r.content)
        return info

    async def frame_on(self, client: Any, package_id: str, n: int, what: str = "frame") -> None:
        from dataclasses import replace

        request, _, _ = self.frame_request(n * 10 + 1, n & 0xFFFF)  # a real frame
        request = replace(request, package_id=package_id)
        reply = await self.attempt("packages", f"{what} of {package_id}", lambda: client.frame(request))
        if reply is not None:
            self.check_frame("packages", f"{what} of {package_id}", reply, request.frame_index, decode=True)

    async def unload(self, client: Any, package_id: str) -> bool:
        done = await self.attempt(
            "packages", f"unload {package_id}", lambda: _true(client.unload_package(package_id))
        )
        if done:
            self.tally.ok("packages")
        return bool(done)

    async def session_unloaded_under(self, client: Any, package_id: str, rng: random.Random, n: int) -> bool:
        """A live session on ``package_id`` that the package is unloaded under after 1 s: the session must end
        with ``unknown_package`` (or in full, if it was over). Returns whether the unload was done."""
        session = await self.open_session("packages", client, package_id, n)
        if session is None:
            return False
        try:
            pcm = self.speech_from(rng, 2.5)
            run = asyncio.create_task(
                self.run_session(
                    "packages",
                    session,
                    pcm,
                    what=f"live session on {package_id} as it is unloaded",
                    expected=frozenset({"unknown_package"}),
                )
            )
            await asyncio.sleep(1.0)
            unloaded = await self.unload(client, package_id)
            await run
            return unloaded
        finally:
            with contextlib.suppress(Exception):
                await session.close()

    async def slow_reader_client(self, slot: int) -> None:
        from ..client import AsyncLipsyncClient

        rng = random.Random(self.options.seed * 1000 + slot)
        stall = self.slow_client_seconds() + 2
        async with AsyncLipsyncClient(self.url, timeout=self.timeout) as client:
            n = 0
            while self.running:
                n += 1
                if n % 3 == 0:
                    await self.stalled_stream(stall, n)
                else:
                    await self.slow_session(client, rng, n, stall if n % 3 == 2 else None)
                await self.pause(0.5)

    def slow_client_seconds(self) -> float:
        from ..server.config import SessionLimits

        return float(SessionLimits().slow_client_seconds)

    async def slow_socket(self) -> Any:
        """A WebSocket on a 4 KiB receive buffer that takes one message at a time off it: what the server
        sends piles up on its side."""
        from websockets.asyncio.client import connect

        from ..client._common import WS_MAX_SIZE

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RECEIVE_BUFFER)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (self.host, self.port))
            return await connect(
                self.ws_url,
                sock=sock,
                max_queue=1,
                max_size=WS_MAX_SIZE,
                compression=None,
                open_timeout=self.timeout,
                # its close handshake waits behind every frame it did not read: give up on it soon
                close_timeout=1.0,
            )
        except BaseException:
            sock.close()
            raise

    async def slow_session(self, client: Any, rng: random.Random, n: int, stall: float | None) -> None:
        from ..client import AsyncSession
        from ..protocol import CODECS, ImageFormat, Pacing, SessionStart

        kind = "slow_reader"
        what = "session read slowly" if stall is None else f"session not read for {stall:g} s"
        ws = await self.attempt(kind, "open a slow socket", self.slow_socket)
        if ws is None:
            await self.pause(1.0)
            return
        session = AsyncSession(
            ws,
            CODECS["binary"],
            SessionStart(request_id=n, package_id=PACKAGE_ID, image=ImageFormat.JPEG, pacing=Pacing.REALTIME),
        )
        try:
            if await self.attempt(kind, "session_start", session.begin) is None:
                await self.pause(1.0)
                return

            async def read_slowly(session: Any, record: Any) -> None:
                read = 0
                while True:
                    pause = SLOW_READ_SECONDS if stall is None else (stall if read == 5 else None)
                    if pause is not None and not await self.pause(pause):
                        raise _Abandoned  # the soak is over: this reader's step is not counted
                    reply = await session.next_frame()
                    if reply is None:
                        return
                    read += 1
                    record.frames.append(reply.session_frame)

            await self.run_session(
                kind,
                session,
                self.speech_from(rng, SLOW_SESSION_SECONDS),
                what=what,
                read=read_slowly,
                expected=frozenset({"too_slow", "closed_1008", "connection_lost"}),
            )
        finally:
            with contextlib.suppress(Exception):
                await ws.close()

    async def stalled_stream(self, stall: float, n: int) -> None:
        """16 frame requests pipelined on a slow socket, their replies read only after ``stall`` s."""
        from ..client import AsyncFrameStream
        from ..protocol import CODECS

        kind = "slow_reader"
        ws = await self.attempt(kind, "open a slow socket", self.slow_socket)
        if ws is None:
            await self.pause(1.0)
            return
        stream = AsyncFrameStream(ws, CODECS["binary"])
        try:
            requests = [self.frame_request(n * 100 + k * 10 + 1, k + 1)[0] for k in range(16)]
            for request in requests:
                if (
                    await self.attempt(
                        kind, "pipelined frame_request", partial(_sent, stream, request)
                    )
                    is None
                ):
                    return
            if not await self.pause(stall):
                return
            # Up to 8 requests of a socket are processed at once: replies come as they are done, each with
            # its request's request_id (docs/protocol.md), not in order.
            waiting = {request.request_id: request.frame_index for request in requests}
            for _ in requests:
                reply = await self.attempt(kind, "reply read late", lambda: stream.recv_frame(self.timeout))
                if reply is None:
                    return
                index = waiting.pop(reply.request_id, None)
                if index is None:
                    self.tally.error(kind, "reply read late", "wrong_reply",
                                     f"a reply for request_id {reply.request_id}, not one of those waiting",
                                     expected=False)
                    return
                self.check_frame(kind, "reply read late", reply, index, decode=False)
        finally:
            with contextlib.suppress(Exception):
                await ws.close()

    async def vanishing_client(self, slot: int) -> None:
        from ..client import AsyncLipsyncClient

        rng = random.Random(self.options.seed * 1000 + slot)
        async with AsyncLipsyncClient(self.url, timeout=self.timeout) as client:
            n = 0
            while self.running:
                n += 1
                way = n % 4
                if way in (0, 1):
                    await self.vanish_from_session(client, rng, n, reset=way == 0)
                elif way == 2:
                    await self.vanish_from_stream(client, n)
                else:
                    await self.vanish_from_post(n)
                await self.pause(0.3)

    async def vanish_from_session(self, client: Any, rng: random.Random, n: int, *, reset: bool) -> None:
        from .live import SessionRecord, _feed, _read

        kind = "vanishing"
        session = await self.open_session(kind, client, PACKAGE_ID, n)
        if session is None:
            await self.pause(1.0)
            return
        pcm = self.speech_from(rng, rng.uniform(0.5, 1.5))
        record = SessionRecord(
            index=0, offset_samples=0, samples=len(pcm) // 2, fps=float(session.started.fps)
        )
        reader = asyncio.create_task(_read(session, record))
        try:
            chunk = self.options.chunk_ms / 1000
            await within(self.timeout, _feed(session, pcm, time.monotonic() + 0.02, chunk, record, end=False))
            await asyncio.sleep(0.1)
            if reader.done() and reader.exception() is not None:
                self.judge(kind, "session before vanishing", reader.exception() or Exception(), frozenset())
                return
        except self.failures as exc:
            self.judge(kind, "session before vanishing", exc, frozenset())
            return
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
            _vanish(session.ws, reset=reset)
            with contextlib.suppress(BaseException):
                await within(2.0, session.ws.wait_closed())
        self.tally.ok(kind)

    async def vanish_from_stream(self, client: Any, n: int) -> None:
        kind = "vanishing"
        stream = await self.attempt(kind, "open /v1/stream", client.stream)
        if stream is None:
            await self.pause(1.0)
            return
        try:
            for k in range(4):
                request = self.frame_request(n * 10 + k * 10 + 1, k + 1)[0]
                if (
                    await self.attempt(
                        kind,
                        "frame_request before vanishing",
                        partial(_sent, stream, request),
                        frozenset(),
                    )
                    is None
                ):
                    return
        finally:
            _vanish(stream.ws, reset=True)
            with contextlib.suppress(BaseException):
                await within(2.0, stream.ws.wait_closed())
        self.tally.ok(kind)

    async def vanish_from_post(self, n: int) -> None:
        from ..protocol import BinaryCodec

        kind = "vanishing"
        request = self.frame_request(n * 10 + 1, n & 0xFFFF)[0]
        body = BinaryCodec().encode(request)
        raw = raw_http("POST", "/v1/frame", body, "application/x-lipsync")
        cut = len(raw) - len(body) // 2

        async def post_half() -> None:
            _, writer = await asyncio.open_connection(self.host, self.port)
            writer.write(raw[:cut])
            await writer.drain()
            await asyncio.sleep(0.05)
            _reset(writer.transport)

        if await self.attempt(kind, "POST /v1/frame cut half-way", lambda: _true(post_half()), frozenset()):
            self.tally.ok(kind)

    async def malformed_client(self, slot: int) -> None:
        from websockets.asyncio.client import connect

        rng = random.Random(self.options.seed * 1000 + slot)
        kind = "malformed"
        ws: Any = None
        try:
            while self.running:
                for probe in probes(rng, self.input.n_frames):
                    if not await self.pause(self.options.probe_interval):
                        return
                    if probe.transport == "http":
                        await self.http_probe(probe)
                        continue
                    if ws is None:
                        ws = await self.attempt(
                            kind,
                            "open /v1/stream",
                            lambda: connect(self.ws_url, compression=None, open_timeout=self.timeout),
                        )
                        if ws is None:
                            continue
                    if not await self.ws_probe(ws, probe):
                        with contextlib.suppress(Exception):
                            await ws.close()
                        ws = None
        finally:
            if ws is not None:
                with contextlib.suppress(Exception):
                    await ws.close()

    async def ws_probe(self, ws: Any, probe: Probe) -> bool:
        """Send ``probe`` and judge the answer; False when the socket is closed (or must be dropped)."""
        from websockets.exceptions import ConnectionClosed

        from ..client._common import decode_wire
        from ..protocol import ErrorReply

        kind, what = "malformed", f"/v1/stream: {probe.name}"
        try:
            await ws.send(probe.data)
            answer = decode_wire(as_this_version(await within(self.timeout, ws.recv())))
        except self.failures as exc:
            self.judge(kind, what, exc, frozenset())
            return False
        if not isinstance(answer, ErrorReply):
            self.tally.error(kind, what, "no_error", f"answered {answer.TYPE.wire_name}", expected=False)
            return False
        code = str(answer.code)
        if code != probe.code:
            self.tally.error(kind, what, code, f"expected {probe.code}: {answer.message}", expected=False)
            return False
        if not probe.closes:
            self.tally.error(kind, what, code, answer.message, expected=True)
            return True
        try:  # a closing code: the server must close the socket now
            await within(self.timeout, ws.recv())
        except ConnectionClosed:
            self.tally.error(kind, what, code, answer.message, expected=True)
            return False
        except self.failures as exc:
            self.judge(kind, f"{what} (then the close)", exc, frozenset())
            return False
        self.tally.error(kind, what, "not_closed", f"{code} but the socket stayed open", expected=False)
        return False

    async def http_probe(self, probe: Probe) -> None:
        kind, what = "malformed", f"HTTP: {probe.name}"
        request = probe.data.encode("utf-8") if isinstance(probe.data, str) else probe.data
        answer = await self.attempt(kind, what, lambda: self.raw_exchange(request), frozenset())
        if answer is None:
            return
        status, code, message = answer
        if status == probe.status and (probe.code is None or code == probe.code):
            self.tally.error(kind, what, code or f"http_{status}", message, expected=True)
        else:
            got = code or f"http_{status}"
            self.tally.error(
                kind,
                what,
                got,
                f"expected {probe.status} {probe.code}, got {status}: {message}",
                expected=False,
            )

    async def raw_exchange(self, request: bytes) -> tuple[int, str | None, str]:
        """One raw HTTP request and its answer: (status, the error_reply's code or None, its message)."""
        from ..client._common import decode_wire
        from ..protocol import ErrorReply

        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in lines[1:] if line)
            }
            length = min(int(headers.get("content-length", "0") or 0), 1 << 16)
            body = await reader.readexactly(length) if length else b""
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        content_type = headers.get("content-type", "")
        try:
            data: bytes | str = body if "x-lipsync" in content_type else body.decode("utf-8")
            reply = decode_wire(data)
        except (ProtocolError, UnicodeDecodeError):
            return status, None, body[:200].decode("utf-8", "replace")
        if isinstance(reply, ErrorReply):
            return status, str(reply.code), reply.message
        return status, None, f"a {reply.TYPE.wire_name}"

    # --- the watcher ------------------------------------------------------------------------------------

    async def watch(self, deadline: float) -> None:
        """Once a second: is the server alive, its RSS; the progress; at ``deadline`` the soak stops."""
        import psutil

        process = psutil.Process(self.server.pid)
        t0, tick, warmup = self.started_at, 0, self.options.warmup
        while True:
            tick += 1
            await asyncio.sleep(max(0.0, t0 + tick - time.monotonic()))
            now = time.monotonic() - t0
            if self.server.process.poll() is not None:
                self.crash(now)
                return
            try:
                rss = int(process.memory_info().rss)
            except psutil.Error:
                continue
            r = self.rss
            r.samples += 1
            r.peak = max(r.peak, rss)
            if now >= warmup and len(r.after_warmup) < RSS_WINDOW:
                r.after_warmup.append(rss)
            r.recent.append(rss)
            if now >= 60 * (len(r.per_minute) + 1):
                r.per_minute.append(
                    {"minute": len(r.per_minute) + 1, "at_seconds": round(now, 1), "rss_mb": to_mb(rss)}
                )
                t = self.tally
                self.say(
                    f"soak: {now:.0f} s, {sum(sum(c.values()) for c in t.outcomes.values())} requests, "
                    f"{t.unexpected_total} unexpected, server RSS {to_mb(rss):.0f} MB"
                )
            if self.ticker is not None:
                self.ticker.advance(1)
            if time.monotonic() >= deadline:
                r.end = int(np.median(list(r.recent)))
                self.ended_at = time.monotonic()
                self.stop.set()
                return

    def crash(self, at: float) -> None:
        code = self.server.process.returncode
        self.crashes.append(
            {"at_seconds": round(at, 2), "exit_code": code, "stderr_tail": self.stderr_tail()}
        )
        self.say(f"soak: the server exited with code {code} after {at:.0f} s: a crash; stopping")
        self.ended_at = time.monotonic()
        self.stop.set()

    def stderr_tail(self) -> str:
        launch = self.server.launch
        path = launch.log_dir / f"{launch.name}-{launch.kind}.err"
        with contextlib.suppress(OSError):
            return path.read_text(errors="replace")[-2000:]
        return ""


async def within(seconds: float, awaitable: Awaitable[T]) -> T:
    """``await awaitable``, or ``TimeoutError`` after ``seconds``. Not ``asyncio.wait_for``: on Python 3.11
    that one returns the result, and drops a cancellation, when both come in one loop iteration (CPython
    gh-86296; it hangs the server's sessions, docs/benchmarks.md, *What the soak found*)."""
    async with asyncio.timeout(seconds):
        return await awaitable


class _Abandoned(Exception):
    """The soak ended while a client was waiting on purpose (a slow reader): its step is not counted."""


async def _sent(socket: Any, message: Any) -> bool:
    await socket.send(message)
    return True


async def _frame_on_stream(stream: Any, timeout: float, request: Any) -> Any:
    return await stream.frame(request, timeout)


def _true(awaitable: Awaitable[Any]) -> Awaitable[bool]:
    async def run() -> bool:
        await awaitable
        return True

    return run()


def _reset(transport: Any) -> None:
    """Drop the connection with a TCP reset (``SO_LINGER`` 0), no goodbye of any protocol."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _vanish(ws: Any, *, reset: bool) -> None:
    """Leave a WebSocket without a close frame: a TCP reset, or a plain close of the socket (FIN)."""
    transport = ws.transport
    if reset:
        _reset(transport)
    else:
        transport.close()


def _decodes(data: bytes, width: int, height: int) -> bool:
    import cv2

    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return image is not None and image.shape == (height, width, 3)


def to_mb(n: int | float) -> float:
    return round(n / 1e6, 1)


__all__ = [
    "CATALOG_ID",
    "CLIENT_KINDS",
    "OUTCOMES",
    "ROSTER",
    "Reservoir",
    "SoakRun",
    "Tally",
    "failure_code",
]
