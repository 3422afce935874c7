"""``lipsync bench --live``: live sessions at the speed of speech, then one long session for drift.

:func:`run_live` does, in order (every wait bounded):

1. **input**: as ``--compare`` (:func:`.runner.prepare_input`): the given video (a package is built from it),
   the given package, or the local sample talking head. The package's own 16 kHz speech is what every session
   says, looped to the length it needs;
2. **server**: one ``lipsync serve PKG --port 0 --json`` process, with the model options of ``--compare``
   (``--model random --seed N``, the backend, the shared ONNX cache), so the clients' work never shares the
   server's GIL; its capacity (``GET /v1/models``) is read once it is ready, and again at the end;
3. **warm-up**: one short session, discarded (the server's first session pays for lazy set-up);
4. **points**: for each session count N (1, 2, 4, 8), N sessions are opened one after the other, each on its
   own WebSocket (``AsyncLipsyncClient.session``, REALTIME pacing, JPEG frames). A refusal (``overloaded``) is
   counted with its message. The admitted sessions then start together, each at another place in the speech;
5. **drift**: one session of ``drift_seconds`` (10 min in the full run): after it, ``frames_sent +
   frames_dropped`` must equal the frame count of its audio, and its lag at the end is compared with its lag
   at the start.

Each session emulates a microphone: chunk ``n`` (``chunk_ms`` of audio, ``[n, n + 1) * chunk_ms``) is sent
when it has been captured, at ``t_start + (n + 1) * chunk_ms``, every send time computed from ``t_start``
(no drift accumulates). ``audio_started`` is when chunk 0 was sent. After the audio, ``session_end``; the
session reads its frames as they come until the server's ``session_end`` (``frames_sent``,
``frames_dropped``).

**Lag** of a delivered frame: its arrival (``time.monotonic()`` as the reply is decoded) minus when its
audio plays on the client's clock, ``audio_started + audio_offset / 16000`` (docs/protocol.md, *Sessions*).
The server promises a bound per session (``SessionStarted.max_lag_ms``: the model's audio look-ahead, one
model call, compositing and encoding, one frame interval) and drops frames that would be later; a frame over
the bound is counted (``over_bound``), not refused: the bound is a goal this benchmark reports against.

Every session runs as tasks of one asyncio event loop in this process (a sender and a reader per session).
On a small machine that process shares the CPU with the server: ``send_late_ms_max`` says how late the
busiest sender was, so a starved client shows in the result instead of passing as server lag, and
``start_late_ms`` how late chunk 0 was (both clocks start with it: every lag of the session is short by that).

A session **held** its rate on time (``held``) when it ended without error, delivered at least
``target_fps`` frames per second of its audio (25, the issue's rate) and no delivered frame was later than the
server's bound. ``runtime`` says which precision and device the server ran (an int8 model its quality gate
refused runs fp32), and ``goals`` evaluates the issue's two live goals when the run is the one that measures
them (:func:`goals`): two Wav2Lip sessions with int8, one SyncTalk_2D-328 session.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LipsyncError, ProtocolError, UsageError
from .machine import machine_facts
from .modes import ServerLaunch, ServerProcess, check_runtime, runtime_of
from .report import LIVE_SCHEMA_VERSION, goal

KIND = "live"
PACKAGE_ID = "avatar"
SAMPLE_RATE = 16000
LIVE_MODELS: tuple[str, ...] = ("random", "identity")
START_SLACK_SECONDS = 0.05
"""Sessions start this long after their tasks are made (and their PCM encoded), so chunk 0 goes out on time.
Chunk 0 starts both clocks (``audio_started`` here, the server's ``t0``): sent late while the later chunks
keep their times, it shifts both by its delay and every later frame's lag looks shorter by as much. (A 600 s
session whose 19 MB of PCM was encoded after its start read a median lag of 176 ms, below what its audio's
look-ahead allows.)"""

Progress = Callable[[str], None]


LIVE_IMAGES = ("jpeg", "crop_jpeg")
"""Image formats ``bench --live`` sessions may ask for."""

TARGET_FPS = 25.0
"""The rate a live session must hold, every frame on time (issue 12's live goals)."""


@dataclass(frozen=True, kw_only=True)
class LiveOptions:
    """What ``lipsync bench --live`` measures and how long it takes.

    ``input``: a video or ``.sanders`` package (``None``: the sample talking head; ``hd``: 1280x720).
    ``family``/``audio_encoder``/``seed``/``backend``: as :class:`~.runner.CompareOptions` (the package's
    family, the server's ``--model random --seed N`` and inference runtime).
    ``model``: ``random`` (random weights of the family: the real network's speed, NOT lip-sync) or
    ``identity`` (no network: the serving machinery alone).
    ``sessions``: the session counts measured, one point each; ``session_seconds``: the speech each session
    of a point sends (its length in real time). ``drift_seconds``: the long session (0: none).
    ``image``: what the sessions ask for: ``jpeg`` (full frames) or ``crop_jpeg`` (the mouth crop as a JPEG
    and its rectangle, composited by the client: the bytes per frame and the server's encode time show the
    difference). ``chunk_ms``: the microphone's chunk (20 ms, a WebRTC frame). ``warmup_seconds``: one
    session of that length before the points, discarded (the server's first session pays for lazy set-up;
    0: none).
    ``min_session_fps``/``max_sessions``: passed to ``lipsync serve`` (``None``: the server's defaults,
    20 frames/s and 32 sessions). ``settle_seconds``: pause between points, after the server reports no
    session running. ``work_dir``: where the sample, package and server log go (``None``: a temporary
    folder, removed afterwards). ``precision``/``device``: the server's ``--precision``/``--device`` (the
    document's ``runtime`` says what ran). ``target_fps``: the rate a session must deliver, every frame on
    time, to count as held (the issue's 25 frames/s).
    """

    input: Path | None = None
    sessions: tuple[int, ...] = (1, 2, 4, 8)
    session_seconds: float = 10.0
    drift_seconds: float = 600.0
    chunk_ms: float = 20.0
    warmup_seconds: float = 2.0
    seed: int = 0
    backend: str | None = None
    family: str | None = None
    audio_encoder: str | None = None
    model: str = "random"
    min_session_fps: float | None = None
    max_sessions: int | None = None
    hd: bool = False
    image: str = "jpeg"
    settle_seconds: float = 1.0
    server_start_seconds: float = 180.0
    work_dir: Path | None = None
    precision: str = "fp32"
    device: str = "cpu"
    target_fps: float = TARGET_FPS

    def __post_init__(self) -> None:
        counts = ",".join(map(str, self.sessions)) or "(none)"
        if not self.sessions or any(type(n) is not int or not 1 <= n <= 64 for n in self.sessions):
            raise UsageError(f"--sessions {counts}: expected session counts in 1..64, e.g. 1,2,4,8")
        if len(set(self.sessions)) != len(self.sessions):
            raise UsageError(f"--sessions {counts}: each count once, e.g. 1,2,4,8")
        if not 0.5 <= self.session_seconds <= 3600:
            raise UsageError(f"--session-seconds is {self.session_seconds:g}; expected 0.5..3600")
        if not (self.drift_seconds == 0 or 1 <= self.drift_seconds <= 24 * 3600):
            raise UsageError(
                f"--drift-seconds is {self.drift_seconds:g}; expected 1..86400, or 0 to skip the drift run"
            )
        if not 5 <= self.chunk_ms <= 200:
            raise UsageError(f"chunk_ms is {self.chunk_ms:g}; expected 5..200 ms")
        if self.image not in LIVE_IMAGES:
            raise UsageError(f"--image {self.image!r}: expected {' or '.join(LIVE_IMAGES)}")
        if self.backend not in (None, "torch", "onnx"):
            raise UsageError(f"backend {self.backend!r}: expected torch or onnx")
        if self.model not in LIVE_MODELS:
            raise UsageError(f"--model {self.model!r}: expected {' or '.join(LIVE_MODELS)}")
        if self.min_session_fps is not None and not 0 < self.min_session_fps <= 240:
            raise UsageError(f"--min-session-fps is {self.min_session_fps:g}; expected (0, 240] frames/s")
        if self.max_sessions is not None and not 1 <= self.max_sessions <= 10_000:
            raise UsageError(f"--max-sessions is {self.max_sessions}; expected 1..10000")
        if not (self.warmup_seconds == 0 or 0.5 <= self.warmup_seconds <= 60):
            raise UsageError(f"warmup_seconds is {self.warmup_seconds:g}; expected 0.5..60, or 0 for none")
        if not 0 <= self.settle_seconds <= 60:
            raise UsageError(f"settle_seconds is {self.settle_seconds:g}; expected 0..60")
        if not 0 < self.target_fps <= 240:
            raise UsageError(f"target_fps is {self.target_fps:g}; expected (0, 240] frames/s")
        if (self.precision, self.device) != ("fp32", "cpu"):
            check_runtime(self.precision, self.device, self.backend)

    @classmethod
    def quick(cls, **overrides: Any) -> LiveOptions:
        """``--quick``: sessions 1, 2, 4, 8 of 5 s each and a 60 s drift run (about 2 minutes in all)."""
        values: dict[str, Any] = {"session_seconds": 5.0, "drift_seconds": 60.0, "settle_seconds": 0.5}
        values.update(overrides)
        return cls(**values)


@dataclass(frozen=True, kw_only=True)
class LiveLaunch(ServerLaunch):
    """A package server for the live benchmark: ``model`` instead of ``random``, and ``serve_options``
    (``--min-session-fps``, ``--max-sessions``) before the package."""

    model: str = "random"
    serve_options: tuple[str, ...] = ()

    def command(self) -> list[str]:
        cmd = super().command()
        cmd[cmd.index("--model") + 1] = self.model
        return [*cmd[:-1], *self.serve_options, cmd[-1]]


@dataclass(eq=False)
class SessionRecord:
    """What one admitted session saw. ``lags_ms[i]`` belongs to ``frames[i]`` (its ``session_frame``)."""

    index: int
    offset_samples: int
    samples: int
    fps: float = 0.0
    max_lag_ms: int = 0
    frames: list[int] = field(default_factory=list)
    lags_ms: list[float] = field(default_factory=list)
    silent: int = 0
    timeline_errors: int = 0
    send_late_max: float = 0.0  # seconds the latest chunk went out after it was captured
    start_late: float = 0.0  # seconds chunk 0 went out after it was captured (biases every lag by as much)
    sent: int | None = None
    dropped: int | None = None
    error: str | None = None
    first_image: bytes | None = field(default=None, repr=False)
    model_bytes: list[int] = field(default_factory=list)  # payload bytes of each frame the model made
    encode_us: list[int] = field(default_factory=list)  # the server's encode time of each such frame

    @property
    def frames_expected(self) -> int:
        """The session's frame count: ``ceil(samples * fps / 16000)``, as ``lipsync render`` counts."""
        if self.samples == 0 or self.fps <= 0:
            return 0
        return math.ceil(self.samples / SAMPLE_RATE * self.fps - 1e-9)


@dataclass(eq=False)
class PointRecord:
    """One session count: the admitted sessions' records, and the refusals."""

    sessions: int
    records: list[SessionRecord]
    refused: int
    refusal: str | None


def input_options_of(options: Any) -> Any:
    """The :class:`~.runner.CompareOptions` that make ``options``' input (a ``--live`` or ``--soak`` options
    object: ``input``, ``seed``, ``backend``, ``family``, ``audio_encoder``, ``hd``) with
    :func:`~.runner.prepare_input`."""
    from .runner import CompareOptions

    return CompareOptions(
        input=options.input,
        seed=options.seed,
        backend=options.backend,
        family=options.family,
        audio_encoder=options.audio_encoder,
        hd=options.hd,
    )


def speech_of(bench_input: Any, who: str) -> np.ndarray:
    """The package's 16 kHz PCM16 speech, what live sessions say; UsageError when it has under 0.5 s of
    audio or only silence (``who`` names the benchmark in the message)."""
    speech = np.asarray(bench_input.pcm, dtype=np.int16)
    if speech.size < SAMPLE_RATE // 2 or not np.any(speech):
        raise UsageError(
            f"{bench_input.package} has {speech.size / SAMPLE_RATE:.2f} s of audio"
            f"{'' if np.any(speech) else ', all silent'}; {who} needs speech: give a video "
            "with a speech track (or nothing, for the sample talking head)"
        )
    return speech


def start_package_server(
    bench_input: Any,
    work: Path,
    say: Progress,
    *,
    name: str,
    model: str,
    seed: int,
    backend: str | None,
    serve_options: tuple[str, ...] = (),
    runtime_loading: bool = False,
    timeout: float = 180.0,
    precision: str = "fp32",
    device: str = "cpu",
) -> ServerProcess:
    """One ``lipsync serve PKG --port 0 --json`` process serving ``bench_input``'s package as ``avatar``
    (``--model model``, ``--max-batch 8``, ``--precision``/``--device`` when not fp32/cpu, logs and the ONNX
    cache under ``work``); the caller stops it."""
    launch = LiveLaunch(
        name=name,
        kind="package",
        package_id=PACKAGE_ID,
        path=bench_input.package,
        seed=seed,
        backend=backend,
        family=bench_input.family,
        max_batch=8,
        log_dir=work / "logs",
        onnx_cache=work / "onnx",
        model=model,
        serve_options=serve_options,
        runtime_loading=runtime_loading,
        precision=precision,
        device=device,
    )
    say(f"server: starting lipsync serve {bench_input.package.name} (--model {model}, {precision} on "
        f"{device})")
    server = ServerProcess.start(launch, timeout=timeout)
    ran = runtime_of(server.ready)
    if ran["precision"] != precision:
        say(f"server: asked for {precision}, it runs {ran['precision']} (the quality gate: see the notes)")
    return server


def run_live(options: LiveOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Run the live benchmark (see the module docstring) and return its result document
    (``lipsync_tools/bench/schemas/live.schema.json``).

    Raises :class:`~lipsync_tools.errors.LipsyncError` subclasses for a bad input, a server that does not
    start, or a session whose frames are not images of the package's size.
    """
    from .runner import _rss_monitor, document_head, prepare_input, timed_progress, work_folder

    started = time.perf_counter()
    say = timed_progress(progress)
    facts = machine_facts()
    with ExitStack() as stack:
        work = work_folder(stack, options.work_dir, "lipsync-bench-live-")
        bench_input = prepare_input(input_options_of(options), work, say)
        speech = speech_of(bench_input, "the live benchmark")
        serve_options: list[str] = []
        if options.min_session_fps is not None:
            serve_options += ["--min-session-fps", f"{options.min_session_fps:g}"]
        if options.max_sessions is not None:
            serve_options += ["--max-sessions", str(options.max_sessions)]
        server = start_package_server(
            bench_input, work, say, name="live", model=options.model, seed=options.seed,
            backend=options.backend, serve_options=tuple(serve_options), timeout=options.server_start_seconds,
            precision=options.precision, device=options.device,
        )
        stack.callback(server.stop)
        model = {k: v for k, v in server.ready.get("model", {}).items() if k != "models"}
        if model.get("is_random"):
            say("model: RANDOM weights: the real network's speed; they move pixels, they do not lip-sync")
        monitor = stack.enter_context(_rss_monitor({"live": server.pid}))
        measured = asyncio.run(_measure(options, server.url, speech, say))
        peak_rss = monitor.peaks().get("live", 0)
    target = options.target_fps
    points = [_point_summary(p, target) for p in measured["points"]]
    long_session = measured["drift"]
    drift = None if long_session is None else _drift_summary(long_session, options.drift_seconds, target)
    runtime = runtime_of(server.ready)
    records = [r for p in [*measured["points"], measured["drift"]] if p is not None for r in p.records]
    if options.image == "crop_jpeg":
        _check_images(records, bench_input.crop_size, bench_input.crop_size)
    else:
        _check_images(records, bench_input.width, bench_input.height)
    notes = _notes(points, drift, model, facts) + _runtime_notes(options.precision, runtime)
    result: dict[str, Any] = {
        **document_head(
            LIVE_SCHEMA_VERSION, KIND, facts, bench_input, options, speech.size / SAMPLE_RATE, model
        ),
        "server": {
            "options": measured["options"],
            "capacity": measured["capacity"],
            "capacity_after": measured["capacity_after"],
            "sessions_after": measured["sessions_after"],
            "ready_rss_mb": round(int(server.ready.get("rss_bytes", 0)) / 1e6, 1),
            "peak_rss_mb": round(peak_rss / 1e6, 1),
        },
        "points": points,
        "runtime": runtime,
        "drift": drift,
        "notes": notes,
    }
    result["goals"] = goals(result)
    result["duration_seconds"] = round(time.perf_counter() - started, 2)
    return result


# --- the sessions -----------------------------------------------------------------------------------------


async def _measure(options: LiveOptions, url: str, speech: np.ndarray, say: Progress) -> dict[str, Any]:
    """Every point, then the drift session, in one event loop; the server's capacity before and after."""
    import httpx

    from ..client.aio import AsyncLipsyncClient

    chunk = options.chunk_ms / 1000
    async with AsyncLipsyncClient(url) as client, httpx.AsyncClient(base_url=url, timeout=30.0) as http:
        capacity = await _capacity(http)
        readyz = await _readyz(http)
        if options.warmup_seconds > 0:
            say(f"warm-up: one session of {options.warmup_seconds:g} s (not counted)")
            await run_point(client, 1, options.warmup_seconds, speech, chunk, options.image)
        points: list[PointRecord] = []
        for n in options.sessions:
            await _wait_idle(http, options.settle_seconds)
            say(f"live: {n} session(s) of {options.session_seconds:g} s of speech, in real time")
            point = await run_point(client, n, options.session_seconds, speech, chunk, options.image)
            points.append(point)
            say(
                f"live: {n} session(s): {len(point.records)} admitted, {point.refused} refused; "
                f"{sum(len(r.frames) for r in point.records)} frames delivered"
            )
        drift: PointRecord | None = None
        if options.drift_seconds > 0:
            await _wait_idle(http, options.settle_seconds)
            say(f"drift: one session of {options.drift_seconds:g} s of speech, in real time")
            drift = await run_point(client, 1, options.drift_seconds, speech, chunk, options.image)
            if not drift.records:
                raise LipsyncError(f"the server refused the drift session on its own: {drift.refusal}")
        await _wait_idle(http, 0.0)
        capacity_after = await _capacity(http)
        sessions_after = (await _readyz(http)).get("sessions", {})
    sessions = readyz.get("sessions", {})
    server_options = {
        "model": options.model,
        "backend": options.backend,
        "max_batch": 8,
        "min_session_fps": sessions.get("min_session_fps", options.min_session_fps),
        "max_sessions": sessions.get("max_sessions", options.max_sessions),
    }
    return {
        "points": points,
        "drift": drift,
        "capacity": capacity,
        "capacity_after": capacity_after,
        "sessions_after": sessions_after,
        "options": server_options,
    }


async def run_point(
    client: Any, n: int, seconds: float, speech: np.ndarray, chunk: float, image: str = "jpeg"
) -> PointRecord:
    """Open ``n`` sessions one after the other (counting refusals), then run the admitted ones together,
    each saying ``seconds`` of ``speech`` from its own offset as a microphone would (``chunk`` s at a time).

    ``client`` is an :class:`~lipsync_tools.client.aio.AsyncLipsyncClient`. Raises ProtocolError for a
    refusal other than ``overloaded``.
    """
    from ..protocol import ErrorCode, ImageFormat, Pacing

    samples = round(seconds * SAMPLE_RATE)
    opened: list[tuple[Any, SessionRecord, bytes]] = []
    refused, refusal = 0, None
    try:
        for i in range(n):
            offset = i * speech.size // n
            try:
                session = await client.session(
                    PACKAGE_ID, pacing=Pacing.REALTIME, image=ImageFormat[image.upper()],
                    request_id=i + 1
                )
            except ProtocolError as exc:
                if exc.code != ErrorCode.OVERLOADED:
                    raise
                refused += 1
                refusal = refusal or f"{exc.code}: {exc}"
                continue
            record = SessionRecord(index=i, offset_samples=offset, samples=samples)
            assert session.started is not None  # begin() returned it
            record.fps = float(session.started.fps)
            record.max_lag_ms = int(session.started.max_lag_ms)
            opened.append((session, record, _looped(speech, offset, samples).astype("<i2").tobytes()))
        t_start = time.monotonic() + START_SLACK_SECONDS
        await asyncio.gather(*(_drive(s, data, t_start, chunk, r) for s, r, data in opened))
    finally:
        for session, _, _ in opened:
            with contextlib.suppress(Exception):
                await session.close()
    return PointRecord(sessions=n, records=[r for _, r, _ in opened], refused=refused, refusal=refusal)


def _looped(speech: np.ndarray, offset: int, samples: int) -> np.ndarray:
    """``samples`` of ``speech`` from ``offset``, wrapping around to its start as often as needed."""
    rolled = np.roll(speech, -offset)
    return np.tile(rolled, -(-samples // rolled.size))[:samples]


async def _drive(session: Any, pcm: bytes, t_start: float, chunk: float, record: SessionRecord) -> None:
    """Send ``pcm`` (PCM16 LE) as a microphone would while reading every frame; fills ``record``."""
    from websockets.exceptions import ConnectionClosed

    sender = asyncio.create_task(_feed(session, pcm, t_start, chunk, record))
    try:
        await _read(session, record)
        with contextlib.suppress(ConnectionClosed):
            await sender
    except ProtocolError as exc:  # the server closed the session with an error reply (too_slow, ...)
        record.error = f"{exc.code}: {exc}"
    except TimeoutError:
        record.error = f"no message for {session.timeout:g} s"
    finally:
        if not sender.done():
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
    summary = session.summary
    if summary is not None:
        record.sent, record.dropped = int(summary.frames_sent), int(summary.frames_dropped)
    elif record.error is None:
        record.error = "the connection closed before the server's session_end"


async def _feed(
    session: Any, pcm: bytes, t_start: float, chunk: float, record: SessionRecord, *, end: bool = True
) -> None:
    """Chunk ``n`` of ``pcm`` (PCM16 LE, captured from ``t_start`` on) goes out once captured: at
    ``t_start + (its last sample + 1) / 16000``; then ``session_end`` (unless ``end`` is false: a client that
    will vanish)."""
    from websockets.exceptions import ConnectionClosed

    data = memoryview(pcm)
    samples = len(data) // 2
    per_chunk = max(1, round(chunk * SAMPLE_RATE))
    with contextlib.suppress(ConnectionClosed):
        for first in range(0, samples, per_chunk):
            last = min(samples, first + per_chunk)
            due = t_start + last / SAMPLE_RATE  # from t_start every time: no drift accumulates
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            late = time.monotonic() - due
            if first == 0:
                record.start_late = late
            record.send_late_max = max(record.send_late_max, late)
            await session.send_audio(data[2 * first : 2 * last], chunk_seconds=chunk)
        if end:
            await session.end()


async def _read(session: Any, record: SessionRecord) -> None:
    """Every frame until the server's ``session_end``: lag, timeline, silence; the first image kept."""
    from ..audio.streaming import frame_audio_offset

    previous = -1
    while (reply := await session.next_frame()) is not None:
        arrival = time.monotonic()
        play = session.play_time(reply)
        k = reply.session_frame
        if play is None or k is None:
            record.timeline_errors += 1
            continue
        if k <= previous or reply.audio_offset != frame_audio_offset(k, record.fps):
            record.timeline_errors += 1
        previous = max(previous, k)
        record.frames.append(k)
        record.lags_ms.append((arrival - play) * 1000)
        record.silent += bool(reply.silence)
        if not reply.silence:
            record.model_bytes.append(len(reply.payload))
            if "encode" in reply.timings:
                record.encode_us.append(int(reply.timings["encode"]))
        if record.first_image is None and not reply.silence:
            record.first_image = bytes(reply.payload)


def _check_images(records: list[SessionRecord], width: int, height: int) -> None:
    """Each session's first frame must decode to the package's size: the proof frames were made."""
    import cv2

    for record in records:
        if record.first_image is None:
            continue
        image = cv2.imdecode(np.frombuffer(record.first_image, np.uint8), cv2.IMREAD_COLOR)
        if image is None or image.shape != (height, width, 3):
            shape = "undecodable" if image is None else f"{image.shape[1]}x{image.shape[0]}"
            raise LipsyncError(
                f"session {record.index}'s first frame is {shape}, expected a {width}x{height} JPEG; the "
                "benchmark refuses numbers from a server that does not render"
            )


async def _capacity(http: Any) -> dict[str, Any]:
    """The first model's ``capacity`` from ``GET /v1/models`` (``{}`` when the server does not say)."""
    r = await http.get("/v1/models")
    if r.status_code != 200:
        return {}
    models = r.json().get("models") or [{}]
    capacity: dict[str, Any] = models[0].get("capacity", {})
    return capacity


async def _readyz(http: Any) -> dict[str, Any]:
    r = await http.get("/readyz")
    is_json = r.headers.get("content-type", "").startswith("application/json")
    body: dict[str, Any] = r.json() if is_json else {}
    return body


async def _wait_idle(http: Any, settle: float, timeout: float = 20.0) -> None:
    """Wait (at most ``timeout`` s) until the server runs no session, then ``settle`` s more: a session the
    client saw end is released by the server a moment later, and must not count against the next point."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (await _readyz(http)).get("sessions", {}).get("sessions", 0) == 0:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(settle)


# --- summaries --------------------------------------------------------------------------------------------


def lag_stats(lags_ms: list[float] | np.ndarray) -> dict[str, float | None]:
    """Median, p90, p99 and max of ``lags_ms`` (milliseconds), rounded; all ``None`` when empty."""
    values = np.asarray(lags_ms, dtype=np.float64)
    if values.size == 0:
        return {"median": None, "p90": None, "p99": None, "max": None}
    return {
        "median": round(float(np.median(values)), 2),
        "p90": round(float(np.percentile(values, 90)), 2),
        "p99": round(float(np.percentile(values, 99)), 2),
        "max": round(float(values.max()), 2),
    }


def _session_summary(record: SessionRecord, target_fps: float = TARGET_FPS) -> dict[str, Any]:
    seconds = record.samples / SAMPLE_RATE
    delivered = len(record.frames) / seconds if seconds > 0 else 0.0
    over = int(sum(lag > record.max_lag_ms for lag in record.lags_ms))
    return {
        "session": record.index,
        "offset_seconds": round(record.offset_samples / SAMPLE_RATE, 3),
        "audio_seconds": round(seconds, 3),
        "fps": round(record.fps, 3),
        "frames_expected": record.frames_expected,
        "frames_received": len(record.frames),
        "frames_sent": record.sent,
        "frames_dropped": record.dropped,
        "silent_frames": record.silent,
        "bytes_per_frame": round(float(np.mean(record.model_bytes)), 1) if record.model_bytes else None,
        "encode_ms": round(float(np.median(record.encode_us)) / 1000, 3) if record.encode_us else None,
        "timeline_errors": record.timeline_errors,
        "delivered_fps": round(delivered, 3),
        "lag_ms": lag_stats(record.lags_ms),
        "over_bound": over,
        "max_lag_ms": record.max_lag_ms,
        "send_late_ms_max": round(record.send_late_max * 1000, 2),
        "start_late_ms": round(record.start_late * 1000, 2),
        "error": record.error,
        "held": held(record.error, delivered, over, record.timeline_errors, target_fps),
    }


def held(error: str | None, delivered_fps: float, over_bound: int, timeline_errors: int,
         target_fps: float = TARGET_FPS) -> bool:
    """Whether a session held ``target_fps`` on time: no error, at least ``target_fps`` frames delivered per
    second of its audio, no frame later than the server's bound, a clean timeline.

    A package above the target rate (the 29.97 fps sample) may drop a few frames and still deliver 25 per
    second; a 25 fps package may drop none. (``frames_expected = ceil(seconds * fps)``, so a session that lost
    nothing delivers at least its package's rate.)
    """
    return error is None and delivered_fps >= target_fps - 1e-9 and over_bound == 0 and timeline_errors == 0


def _point_summary(point: PointRecord, target_fps: float = TARGET_FPS) -> dict[str, Any]:
    per_session = [_session_summary(r, target_fps) for r in point.records]
    lags = [lag for r in point.records for lag in r.lags_ms]
    bounds = [r.max_lag_ms for r in point.records]
    over = sum(s["over_bound"] for s in per_session)
    return {
        "sessions": point.sessions,
        "admitted": len(point.records),
        "refused": point.refused,
        "refusal": point.refusal,
        "per_session": per_session,
        "frames_expected": sum(s["frames_expected"] for s in per_session),
        "frames_received": sum(s["frames_received"] for s in per_session),
        "frames_dropped": sum(s["frames_dropped"] or 0 for s in per_session),
        "delivered_fps": (
            round(float(np.median([s["delivered_fps"] for s in per_session])), 3) if per_session else None
        ),
        "lag_ms": lag_stats(lags),
        "over_bound": over,
        "max_lag_ms": max(bounds) if bounds else None,
        "goal_met": over == 0 and all(s["error"] is None for s in per_session),
        "errors": sum(s["error"] is not None for s in per_session),
        "held": sum(s["held"] for s in per_session),
        # every session asked for was admitted and held the rate on time
        "all_held": point.refused == 0 and len(per_session) == point.sessions
        and all(s["held"] for s in per_session),
    }


def _drift_summary(point: PointRecord, seconds: float, target_fps: float = TARGET_FPS) -> dict[str, Any]:
    """The long session: counts against its audio's frame count, and its lag at the start and the end."""
    [record] = point.records
    session = _session_summary(record, target_fps)
    expected = record.frames_expected
    order = np.argsort(record.frames, kind="stable")
    lags = np.asarray(record.lags_ms, dtype=np.float64)[order]
    tenth = max(1, lags.size // 10) if lags.size else 0
    first, last = lag_stats(lags[:tenth]), lag_stats(lags[lags.size - tenth :] if tenth else lags[:0])
    last_frame = max(record.frames) if record.frames else None
    sent, dropped = record.sent, record.dropped
    return {
        **session,
        "seconds": seconds,
        "last_frame": last_frame,
        # sent + dropped against the audio's frame count: no frame lost or invented over the whole session
        "drift_frames": None if sent is None or dropped is None else sent + dropped - expected,
        # the timeline reached the audio's end: 0 when the last frame was delivered (negative by the frames
        # dropped at the very end)
        "timeline_drift_frames": None if last_frame is None else last_frame + 1 - expected,
        "lag_ms_first_10pct": first,
        "lag_ms_last_10pct": last,
        "lag_drift_ms": (
            None
            if first["median"] is None or last["median"] is None
            else round(last["median"] - first["median"], 2)
        ),
    }


LIVE_GOALS: dict[str, tuple[str, float, str]] = {
    "wav2lip_int8_two_sessions": ("two live Wav2Lip sessions held at 25 fps on time with int8 (on 2 cores)",
                                  2.0, ">="),
    "synctalk2d_328_one_session": ("one live SyncTalk_2D-328 session held at 25 fps on time (on 2 cores)",
                                   1.0, ">="),
}
"""The issue's live goals (issue 12): key -> (the goal in words, sessions that must hold, comparison)."""


def goals(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The issue's two live goals, each evaluated when this run is one that measures it, else null with the
    reason (``$defs/goal`` of the schema; ``measured``: the sessions of the point that held ``target_fps``
    on time).

    * ``wav2lip_int8_two_sessions``: a Wav2Lip package, int8 running (not refused by the gate), 2 sessions:
      ``lipsync bench --live --precision int8 --sessions 2``;
    * ``synctalk2d_328_one_session``: a SyncTalk_2D-328 package, 1 session, any precision:
      ``lipsync bench --live --family synctalk2d-328 --audio-encoder random --sessions 1``.

    The goals are stated for 2 cores; ``source`` names the cores this run had.
    """
    family, runtime = result["input"]["family"], result["runtime"]
    points = {p["sessions"]: p for p in result["points"]}
    cores = result["machine"].get("cores_logical")
    model = result["settings"].get("model", "random")
    target = result["settings"].get("target_fps", TARGET_FPS)

    def evaluate(key: str, sessions: int, wanted_family: str, precision: str | None) -> dict[str, Any]:
        if family != wanted_family:
            return goal(key, reason=f"the package is {family}; needs a {wanted_family} one",
                        limits=LIVE_GOALS)
        if model != "random":
            return goal(key, reason=f"--model {model} runs no network; needs --model random",
                        limits=LIVE_GOALS)
        if precision is not None and runtime["precision"] != precision:
            quality = runtime.get("quality")
            if runtime["precision_requested"] == precision and quality is not None:
                why = (f"the quality gate refused {precision} (PSNR {quality.get('psnr_db')} dB < "
                       f"{quality.get('threshold_db')} dB): {runtime['precision']} ran")
            else:
                why = f"{runtime['precision']} ran; needs --precision {precision}"
            return goal(key, reason=why, limits=LIVE_GOALS)
        if sessions not in points:
            return goal(key, reason=f"needs a point of {sessions} session(s): --sessions ...,{sessions}",
                        limits=LIVE_GOALS)
        point = points[sessions]
        entry = goal(
            key, float(point["held"]),
            source=f"{point['held']} of {sessions} session(s) held {target:g} fps on time ({family}, "
            f"{runtime['precision']} on {runtime['device']}, {cores} logical cores)",
            limits=LIVE_GOALS,
        )
        entry["met"] = bool(point["all_held"])
        return entry

    return {
        "wav2lip_int8_two_sessions": evaluate("wav2lip_int8_two_sessions", 2, "wav2lip", "int8"),
        "synctalk2d_328_one_session": evaluate("synctalk2d_328_one_session", 1, "synctalk2d-328", None),
    }


def _runtime_notes(asked: str, runtime: dict[str, Any]) -> list[str]:
    """A note when the server ran another precision than asked (the int8 quality gate)."""
    if runtime["precision"] == asked:
        return []
    quality = runtime.get("quality") or {}
    return [
        f"asked for {asked}, the server ran {runtime['precision']}"
        + (f": int8 PSNR {quality.get('psnr_db')} dB on {quality.get('frames')} held-out frames is below the "
           f"{quality.get('threshold_db')} dB gate" if quality else "")
    ]


def _notes(
    points: list[dict[str, Any]], drift: dict[str, Any] | None, model: dict[str, Any], facts: dict[str, Any]
) -> list[str]:
    notes = []
    if model.get("is_random"):
        notes.append("random weights: the speed of the real network; they move pixels, they do not lip-sync")
    notes.append(
        f"the clients run in this process on the same machine as the server ({facts['cores_logical']} "
        "logical cores): their CPU time is part of the figures"
    )
    for point in points:
        if point["over_bound"]:
            frames = point["frames_received"]
            worst = point["lag_ms"]["max"]
            notes.append(
                f"{point['sessions']} session(s): {point['over_bound']} of {frames} delivered frames arrived "
                f"later than the server's bound of {point['max_lag_ms']} ms (worst {worst:.0f} ms, "
                f"{worst - point['max_lag_ms']:.0f} ms over)"
            )
        if point["errors"]:
            first = next(s["error"] for s in point["per_session"] if s["error"])
            notes.append(f"{point['sessions']} session(s): {point['errors']} session(s) failed: {first}")
    if drift is not None and drift["error"]:
        notes.append(f"drift session failed: {drift['error']}")
    return notes


__all__ = [
    "LIVE_GOALS",
    "LIVE_MODELS",
    "TARGET_FPS",
    "LiveLaunch",
    "LiveOptions",
    "PointRecord",
    "SessionRecord",
    "goals",
    "held",
    "lag_stats",
    "run_live",
    "run_point",
]
