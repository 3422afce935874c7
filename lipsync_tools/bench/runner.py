"""``lipsync bench --compare``: the three serving modes, measured side by side in one run.

:func:`run_compare` does, in order (every loop bounded in count and in time):

1. **input**: the given video (a package is built from it), the given package (its source video is looked
   for beside it), or, with neither, a sample talking head made locally (:mod:`.sample`);
2. **servers**: one ``lipsync serve`` process per mode (``--original VIDEO`` for original and binary,
   ``PKG`` for preloaded), started one after the other so their startup timings do not overlap, all
   with the same model (``--model random --seed N``, same backend);
3. **latency**: one client per mode, warm-up frames discarded, then frames interleaved A B C A B C ... so
   machine drift hits every mode alike; every request carries the same real PCM16 speech window; every
   reply is decoded and checked (right frame, right size), so no mode can win by skipping work;
4. **scaling**: 1, 2, 4, 8 ... concurrent clients per mode (threads, one WebSocket each);
5. **memory**: each server's RSS sampled throughout (psutil on the child pids), peak reported;
6. **model backends**: torch eager, torch channels_last and ONNX Runtime at batch 1 and batched, in this
   process after the servers stopped;
7. **precision**: the package's own model (random weights of its family, the servers' seed) on ONNX Runtime
   in fp32 and int8 (and fp16 on a GPU) side by side, through the engine's own loader, so int8 is calibrated
   and checked against fp32 on the package's held-out frames exactly as a server does (issue 12);
8. **cold start**: a server started with ``--catalog`` and nothing loaded; the first frame of the package
   (loaded on demand: open, decode, model load) against the next one, and the server's RSS growth for the
   package against its decoded frame bytes;
9. **model families**: the network time of every registered family (Wav2Lip, SyncTalk_2D-328/160,
   Ultralight-160) side by side, ONNX Runtime and torch, random weights, batch 1 and batched.

Every server runs ``--precision``/``--device`` as asked (``CompareOptions.precision``/``device``); each mode's
``runtime`` says what its server actually ran. The headline evaluates the issue's goals this run can measure
(:func:`goals`). The result is one JSON-ready dict, documented (and checked) by
``lipsync_tools/bench/schemas/compare.schema.json``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputNotFoundError, LipsyncError, UsageError
from ..protocol.messages import FrameReply, FrameRequest, ImageFormat
from .machine import machine_facts
from .modes import (
    DEFAULT_MODES,
    MODES,
    ModeSpec,
    ServerLaunch,
    ServerProcess,
    check_runtime,
    parse_modes,
    runtime_of,
)
from .report import COMPARE_SCHEMA_VERSION as SCHEMA_VERSION
from .report import goal

PACKAGE_ID = "avatar"

COMPONENTS: tuple[tuple[str, str], ...] = (
    ("decode", "decode"),
    ("face detection", "detect"),
    ("face cropping", "crop"),
    ("audio extraction", "features"),
    ("mouth masking", "masks"),
    ("data preparation", "queue"),
    ("model inference", "inference"),
    ("compositing", "composite"),
    ("encoding", "encode"),
)
"""The published comparison's components and the ``FrameReply.timings`` stage each one reads.

``data preparation`` is the request's hand-off inside the server (validation, queueing, batch assembly:
the ``queue`` stage); building the network's input tensor happens inside ``inference`` in every mode (it
is timed on its own in the model-backend section). ``transport`` (client round trip minus the server's
``total``: protocol encode/decode, base64, WebSocket, loopback) is added by the report.
"""

Progress = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class CompareOptions:
    """What ``lipsync bench --compare`` measures and how long it may take.

    ``input``: a video or ``.sanders`` package (``None``: make the sample talking head; ``hd`` makes it
    1280x720). ``family``: the model family a package is built for (``None``: the given package's, else
    Wav2Lip). ``audio_encoder``: AVE families' encoder, a checkpoint path or ``None``/``"random"`` (random
    weights from ``seed``); the package is built with it and the original servers load it, so every mode
    hears the same features.
    ``frames``: measured frames per mode in the latency phase, after ``warmup`` discarded ones.
    ``clients``: concurrency levels; ``scaling_frames``: frames per mode and level, split among its
    clients (at least ``min_frames_per_client`` each). ``seed``/``backend``: the servers' model
    (``--model random``; ``None`` = the library's default backend). ``model_batch``/``model_repeats``: the
    model-backend section, after ``model_warmup`` discarded calls (oneDNN needs several).
    ``phase_seconds``: time cap of each phase per mode (a phase stops early, with fewer frames, rather
    than run on). ``settle_ms``: pause between requests, outside the timing: ONNX Runtime's (and
    OpenMP's) worker threads spin-wait for a while after a call, and on a small machine the spinning
    threads of the server that just answered take CPU from the next one (measured on 2 cores: the next
    server's inference 77 ms instead of 44 ms with no pause, 47 ms after 50 ms). ``work_dir``: where the
    sample, package and server logs go (``None``: a temporary folder, removed afterwards).
    ``precision``/``device``: what every server runs (``lipsync serve --precision --device``; int8 is refused
    by a server's quality gate when it departs from fp32, and that server runs fp32: see each mode's
    ``runtime``); the model-alone sections run on ``device`` too, and the precision section adds fp16 when it
    is a GPU.
    """

    input: Path | None = None
    frames: int = 100
    warmup: int = 5
    clients: tuple[int, ...] = (1, 2, 4, 8)
    scaling_frames: int = 48
    min_frames_per_client: int = 3
    modes: tuple[str, ...] = DEFAULT_MODES
    seed: int = 0
    backend: str | None = None
    family: str | None = None
    audio_encoder: str | None = None
    jpeg_quality: int = 90
    model_batch: int = 8
    model_repeats: int = 20
    model_warmup: int = 6
    hd: bool = False
    phase_seconds: float = 300.0
    settle_ms: float = 50.0
    server_start_seconds: float = 180.0
    work_dir: Path | None = None
    precision: str = "fp32"
    device: str = "cpu"

    def __post_init__(self) -> None:
        parse_modes(self.modes)
        if not 1 <= self.frames <= 100_000:
            raise UsageError(f"--frames is {self.frames}; expected 1..100000")
        if not 0 <= self.warmup <= 1000:
            raise UsageError(f"warm-up is {self.warmup} frames; expected 0..1000")
        if not self.clients or any(not 1 <= c <= 64 for c in self.clients):
            raise UsageError(f"--clients {','.join(map(str, self.clients))}: expected counts in 1..64")
        if not 1 <= self.model_batch <= 64 or self.model_repeats < 1:
            raise UsageError("model batch must be 1..64 and repeats >= 1")
        if self.backend not in (None, "torch", "onnx"):
            raise UsageError(f"backend {self.backend!r}: expected torch or onnx")
        if not 1 <= self.jpeg_quality <= 100:
            raise UsageError(f"jpeg_quality is {self.jpeg_quality}; expected 1..100")
        if not 0 <= self.settle_ms <= 5000:
            raise UsageError(f"settle_ms is {self.settle_ms}; expected 0..5000")
        if (self.precision, self.device) != ("fp32", "cpu"):
            check_runtime(self.precision, self.device, self.backend)

    @classmethod
    def quick(cls, **overrides: Any) -> CompareOptions:
        """The ``--quick`` settings: a couple of minutes at most on a 2-core laptop."""
        values: dict[str, Any] = {
            "frames": 12,
            "warmup": 2,
            "scaling_frames": 8,
            "min_frames_per_client": 1,
            "model_batch": 4,
            "model_repeats": 3,
            "phase_seconds": 30.0,
        }
        values.update(overrides)
        return cls(**values)


@dataclass(frozen=True, kw_only=True)
class BenchInput:
    """The media every mode serves: the raw video (``None`` when a package's source cannot be found), the
    package built from it, the frame size and count, and the package's 16 kHz PCM16 speech."""

    video: Path | None
    package: Path
    width: int
    height: int
    n_frames: int
    fps: float
    crop_size: int
    pcm: np.ndarray = field(repr=False)
    crops: np.ndarray = field(repr=False)  # (N, S, S, 3) uint8, for the model-backend section
    family: str = "wav2lip"
    audio_mode: str = "mel"

    def describe(self, sample: bool) -> dict[str, Any]:
        """The result document's ``input`` section (``sample``: made locally, no input was given)."""
        return {
            "video": None if self.video is None else str(self.video),
            "package": str(self.package),
            "width": self.width,
            "height": self.height,
            "n_frames": self.n_frames,
            "fps": round(self.fps, 3),
            "sample": sample,
            "family": self.family,
        }

    def window(self, frame_index: int) -> np.ndarray:
        """The int16 PCM window (3200 samples) of ``frame_index``: Wav2Lip's mel start times 200 samples."""
        from ..protocol.limits import PCM_WINDOW_SAMPLES

        start = int(frame_index * 80 / self.fps) * 200
        window = np.zeros(PCM_WINDOW_SAMPLES, np.int16)
        chunk = self.pcm[start : start + PCM_WINDOW_SAMPLES]
        window[: chunk.size] = chunk
        return window


@dataclass
class _Sample:
    seconds: float
    timings: dict[str, int]


def settings_of(options: Any) -> dict[str, Any]:
    """A benchmark's options dataclass as JSON: tuples as lists, paths as strings."""
    return {
        k: (list(v) if isinstance(v, tuple) else (str(v) if isinstance(v, Path) else v))
        for k, v in asdict(options).items()
    }


def document_head(
    schema_version: int,
    kind: str,
    facts: dict[str, Any],
    bench_input: BenchInput,
    options: Any,
    speech_seconds: float,
    model: dict[str, Any],
) -> dict[str, Any]:
    """The sections every ``--live``/``--soak`` document starts with: schema, kind, the machine and its load
    after the run, the input, the settings and the model."""
    return {
        "schema_version": schema_version,
        "kind": kind,
        "machine": facts,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "input": {
            **bench_input.describe(sample=options.input is None),
            "speech_seconds": round(speech_seconds, 3),
        },
        "settings": settings_of(options),
        "model": model,
    }


def timed_progress(progress: Progress | None) -> Progress:
    """``progress`` with the seconds since now in front of each message (a no-op without one)."""
    started = time.perf_counter()

    def say(message: str) -> None:
        if progress is not None:
            progress(f"{time.perf_counter() - started:6.1f} s  {message}")

    return say


def work_folder(stack: ExitStack, work_dir: Path | None, prefix: str) -> Path:
    """``work_dir`` (created if missing), or a temporary folder ``stack`` removes at its end."""
    if work_dir is not None:
        work_dir.mkdir(parents=True, exist_ok=True)
        return work_dir
    work = Path(tempfile.mkdtemp(prefix=prefix))
    stack.callback(shutil.rmtree, work, True)
    return work


def run_compare(options: CompareOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Run the whole comparison (see the module docstring) and return the result document.

    Raises :class:`~lipsync_tools.errors.LipsyncError` subclasses for a bad input, a server that does not
    start, or a reply that fails its check.
    """
    started = time.perf_counter()
    say = timed_progress(progress)
    facts = machine_facts()
    with ExitStack() as stack:
        work = work_folder(stack, options.work_dir, "lipsync-bench-")
        bench_input = prepare_input(options, work, say)
        modes = list(options.modes)
        notes: list[str] = []
        if bench_input.video is None:
            dropped = [m for m in modes if MODES[m].server == "original"]
            modes = [m for m in modes if MODES[m].server != "original"]
            notes.append(
                f"modes {', '.join(dropped)} skipped: the package's source video was not found beside "
                "it; pass the VIDEO instead"
            )
            if not modes:
                raise InputNotFoundError(
                    f"{bench_input.package}: its source video is not beside it, and every "
                    "requested mode needs it; pass the VIDEO instead"
                )
        servers = start_servers(options, bench_input, modes, work, say)
        for server in servers.values():
            stack.callback(server.stop)
        monitor = stack.enter_context(_rss_monitor({k: s.pid for k, s in servers.items()}))
        say(f"latency: {options.frames} frames per mode after {options.warmup} warm-up, interleaved")
        latency = latency_phase(options, bench_input, modes, servers)
        scaling: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
        for level, clients in enumerate(options.clients):
            say(f"scaling: {clients} concurrent client(s) per mode")
            order = modes[level % len(modes) :] + modes[: level % len(modes)]  # rotate who goes first
            for mode in order:
                time.sleep(4 * options.settle_ms / 1000)  # the previous server's threads go idle
                scaling[mode].append(scaling_point(options, bench_input, MODES[mode], servers[mode], clients))
        peaks = monitor.peaks()
        for server in servers.values():
            server.stop()
        say("model backends: torch eager, torch channels_last, ONNX Runtime")
        backends = model_backends(options, bench_input, work)
        say("precision: fp32 and int8 side by side on the package (calibrated and checked on its frames)")
        precision = precision_section(options, bench_input, work, say)
        say("cold start: the first frame of a package loaded on demand (--catalog)")
        cold = cold_start(options, bench_input, work)
        say("model families: every family's network, ONNX Runtime and torch")
        families = family_networks(options, work)
    notes += runtime_notes(options, {m: runtime_of(servers[m].ready) for m in modes})
    # The model line reports a package server's model when there is one: it runs the precision asked (the
    # original servers run int8 as fp32, see start_servers).
    shown = next((servers[m] for m in modes if MODES[m].server == "package"), servers[modes[0]])
    result = {
        "schema_version": SCHEMA_VERSION,
        "machine": facts,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "input": bench_input.describe(sample=options.input is None),
        "settings": settings_of(replace(options, modes=tuple(modes))),
        "model": shown.ready.get("model", {}),
        "components": [label for label, _ in COMPONENTS] + ["transport"],
        "modes": {m: summarize_mode(MODES[m], latency[m], servers[m], peaks) for m in modes},
        "scaling": scaling,
        "backends": backends,
        "families": families,
        "precision": precision,
        "cold_start": cold,
        "notes": notes,
    }
    result["headline"] = headline(result)
    result["duration_seconds"] = round(time.perf_counter() - started, 2)
    return result


# --- input ------------------------------------------------------------------------------------------------


def prepare_input(options: CompareOptions, work: Path, say: Progress) -> BenchInput:
    """The video and package every mode uses (building or making what is missing), opened once."""
    from ..models.audio_features import AudioEncoderChoice
    from ..models.families import get_family
    from ..package.reader import open_package
    from ..package.spec import FILE_SUFFIX
    from ..pipeline.build import BuildOptions, build_package

    source = options.input
    video: Path | None
    if source is not None and not source.is_file():
        raise InputNotFoundError(
            f"{source} does not exist; give a video, a {FILE_SUFFIX} package, or nothing "
            "(a sample talking head is made)"
        )
    if source is not None and source.suffix == FILE_SUFFIX:
        package_path = source
        manifest_video = open_package(source, mmap=True).manifest.source_video.name
        candidate = source.parent / manifest_video
        video = candidate if candidate.is_file() else None
    else:
        if source is None:
            from .sample import make_sample_video

            video = work / ("sample-720p.mp4" if options.hd else "sample.mp4")
            if not video.is_file():
                say(
                    f"input: making the sample talking head ({'1280x720' if options.hd else '176x144'}) "
                    f"in {work}"
                )
                from .sample import make_sample_video

                make_sample_video(video, hd=options.hd)
        else:
            video = source
        family = get_family(options.family)
        package_path = work / f"{video.stem}-{family.name}{FILE_SUFFIX}"
        if not package_path.is_file():
            say(f"input: building a {family.name} package from {video.name}")
            ave = family.audio_mode(None).name == "ave"
            chosen = options.audio_encoder or "random"
            encoder = AudioEncoderChoice.parse(chosen, options.seed) if ave else None
            build_options = BuildOptions(family=family.name)
            build_package(video, package_path, options=build_options, audio_encoder=encoder)
    package = open_package(package_path, mmap=False)
    if options.family is not None and package.family != options.family:
        raise UsageError(
            f"{package_path} is a {package.family} package but --family {options.family} was given; "
            "drop --family or pass the video instead"
        )
    m = package.manifest
    return BenchInput(
        video=video,
        package=package_path,
        width=m.video.width,
        height=m.video.height,
        n_frames=package.n_frames,
        fps=float(m.video.fps),
        crop_size=package.crop_size,
        pcm=np.asarray(package.pcm, dtype=np.int16),
        crops=np.asarray(package.crops),
        family=package.family,
        audio_mode=package.audio_mode,
    )


# --- servers ----------------------------------------------------------------------------------------------


def start_servers(
    options: CompareOptions, bench_input: BenchInput, modes: list[str], work: Path, say: Progress
) -> dict[str, ServerProcess]:
    """One server process per mode (so no mode shares a decoder, cache or queue with another), started
    one at a time so their startup timings do not overlap; stops what started if one fails."""
    servers: dict[str, ServerProcess] = {}
    try:
        for mode in modes:
            kind = MODES[mode].server
            path = bench_input.video if kind == "original" else bench_input.package
            assert path is not None  # original modes were dropped when there is no video
            precision = options.precision
            if kind == "original" and precision == "int8":
                # int8 calibrates on a package's own frames, and an original server has none: it runs fp32
                # (runtime_notes says so).
                precision = "fp32"
            say(f"server: starting the {mode} server ({path.name}, {precision} on {options.device})")
            launch = ServerLaunch(
                name=mode,
                kind=kind,
                package_id=PACKAGE_ID,
                path=path,
                seed=options.seed,
                backend=options.backend,
                family=bench_input.family,
                audio_encoder=options.audio_encoder or "random" if bench_input.audio_mode == "ave" else None,
                max_batch=8,
                log_dir=work / "logs",
                onnx_cache=work / "onnx",
                precision=precision,
                device=options.device,
            )
            servers[mode] = ServerProcess.start(launch, timeout=options.server_start_seconds)
    except BaseException:
        for server in servers.values():
            server.stop()
        raise
    return servers


class _RssMonitor:
    """Samples the RSS of each server process (and its children) every ``interval`` s in a thread."""

    def __init__(self, pids: dict[str, int], interval: float = 0.1) -> None:
        import psutil

        self._processes = {kind: psutil.Process(pid) for kind, pid in pids.items()}
        self._peaks = dict.fromkeys(pids, 0)
        self._stop = threading.Event()
        self._interval = interval
        self._thread = threading.Thread(target=self._run, name="lipsync-bench-rss", daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            for kind, process in self._processes.items():
                try:
                    rss = process.memory_info().rss + sum(
                        c.memory_info().rss for c in process.children(recursive=True)
                    )
                except psutil.Error:
                    continue
                self._peaks[kind] = max(self._peaks[kind], rss)
            self._stop.wait(self._interval)

    def peaks(self) -> dict[str, int]:
        """Peak RSS in bytes per server so far."""
        return dict(self._peaks)


@contextmanager
def _rss_monitor(pids: dict[str, int]) -> Iterator[_RssMonitor]:
    monitor = _RssMonitor(pids)
    monitor._thread.start()
    try:
        yield monitor
    finally:
        monitor._stop.set()
        monitor._thread.join(timeout=5)


# --- checks -----------------------------------------------------------------------------------------------


def check_reply(
    reply: FrameReply, spec: ModeSpec, frame_index: int, bench_input: BenchInput, *, decode: bool = True
) -> None:
    """Raise LipsyncError unless ``reply`` is the frame asked for, at the right size, with a real image.

    ``decode``: also decode the JPEG and compare its pixel size (the proof that an image was made).
    """
    import cv2

    problem = ""
    if reply.frame_index != frame_index:
        problem = f"frame {reply.frame_index} instead of {frame_index}"
    elif reply.silence:
        problem = "a silence frame (the model did not run)"
    elif "inference" not in reply.timings:
        problem = "no inference timing"
    elif spec.image is ImageFormat.CROP_ONLY:
        s = bench_input.crop_size
        if (reply.width, reply.height) != (s, s) or len(reply.payload) != s * s * 3 or reply.rect is None:
            problem = f"a {reply.width}x{reply.height} crop of {len(reply.payload)} bytes, expected {s}x{s}"
    elif (reply.width, reply.height) != (bench_input.width, bench_input.height):
        problem = f"{reply.width}x{reply.height}, expected {bench_input.width}x{bench_input.height}"
    elif decode:
        image = cv2.imdecode(np.frombuffer(reply.payload, np.uint8), cv2.IMREAD_COLOR)
        if image is None or image.shape != (bench_input.height, bench_input.width, 3):
            shape = "undecodable" if image is None else f"{image.shape[1]}x{image.shape[0]}"
            problem = f"an image that decodes to {shape}"
    if problem:
        raise LipsyncError(
            f"mode {spec.name}: the reply for frame {frame_index} is {problem}; the benchmark "
            "refuses numbers from a mode that does not do the work"
        )


def _request(
    spec: ModeSpec, bench_input: BenchInput, frame_index: int, request_id: int, jpeg_quality: int
) -> FrameRequest:
    window = bench_input.window(frame_index)
    if spec.audio == "mel":
        from ..audio.mel import mel_from_pcm_window

        mel = mel_from_pcm_window(window.astype(np.float32) / np.float32(32768.0))
        return FrameRequest.from_mel(
            mel,
            request_id=request_id,
            package_id=PACKAGE_ID,
            frame_index=frame_index,
            image=spec.image,
            jpeg_quality=jpeg_quality,
        )
    return FrameRequest.from_pcm(
        window,
        request_id=request_id,
        package_id=PACKAGE_ID,
        frame_index=frame_index,
        image=spec.image,
        jpeg_quality=jpeg_quality,
    )


# --- phases -----------------------------------------------------------------------------------------------


def latency_phase(
    options: CompareOptions,
    bench_input: BenchInput,
    modes: list[str],
    servers: dict[str, ServerProcess],
) -> dict[str, list[_Sample]]:
    """One client per mode, frames interleaved across modes; warm-up discarded; every reply checked."""
    from ..client import LipsyncClient

    samples: dict[str, list[_Sample]] = {m: [] for m in modes}
    with ExitStack() as stack:
        streams = {}
        for mode in modes:
            spec = MODES[mode]
            client = stack.enter_context(LipsyncClient(servers[mode].url, protocol=spec.protocol))
            streams[mode] = stack.enter_context(client.stream())
        deadline = time.monotonic() + options.phase_seconds * len(modes)
        for k in range(options.warmup + options.frames):
            if k >= options.warmup and time.monotonic() > deadline:
                break
            index = k % bench_input.n_frames
            for mode in modes:  # A B C A B C: drift hits every mode alike
                spec = MODES[mode]
                request = _request(spec, bench_input, index, k + 1, options.jpeg_quality)
                t0 = time.perf_counter()
                reply = streams[mode].frame(request)
                elapsed = time.perf_counter() - t0
                check_reply(reply, spec, index, bench_input)
                if k >= options.warmup:
                    samples[mode].append(_Sample(elapsed, dict(reply.timings)))
                time.sleep(options.settle_ms / 1000)  # let the server that answered go idle
    return samples


def scaling_point(
    options: CompareOptions, bench_input: BenchInput, spec: ModeSpec, server: ServerProcess, clients: int
) -> dict[str, Any]:
    """``clients`` concurrent clients (one thread and WebSocket each) on one mode; FPS and latency."""
    from ..client import LipsyncClient

    per_client = max(options.min_frames_per_client, -(-options.scaling_frames // clients))
    barrier = threading.Barrier(clients + 1)
    deadline = time.monotonic() + options.phase_seconds
    done: list[tuple[int, float, list[float]]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client_loop(number: int) -> None:
        latencies: list[float] = []
        try:
            with LipsyncClient(server.url, protocol=spec.protocol) as client, client.stream() as stream:
                first = number * bench_input.n_frames // clients  # clients walk different frames
                warm = _request(spec, bench_input, first, 1, options.jpeg_quality)
                check_reply(stream.frame(warm), spec, first, bench_input)
                barrier.wait(timeout=120)
                start = time.perf_counter()
                for k in range(per_client):
                    if time.monotonic() > deadline:
                        break
                    index = (first + 1 + k) % bench_input.n_frames
                    request = _request(spec, bench_input, index, k + 2, options.jpeg_quality)
                    t0 = time.perf_counter()
                    reply = stream.frame(request)
                    latencies.append(time.perf_counter() - t0)
                    # Headers of every reply are checked; pixels of the last one (decoding all of them
                    # would take CPU from the servers on a small machine).
                    check_reply(reply, spec, index, bench_input, decode=k == per_client - 1)
                end = time.perf_counter()
            with lock:
                done.append((len(latencies), end - start, latencies))
        except BaseException as exc:
            with lock:
                errors.append(exc)
            barrier.abort()

    threads = [
        threading.Thread(target=client_loop, args=(i,), name=f"bench-client-{i}", daemon=True)
        for i in range(clients)
    ]
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):  # a failed client: reported below
        barrier.wait(timeout=120)
    started = time.perf_counter()
    for thread in threads:
        thread.join(timeout=options.phase_seconds + 60)
    wall = time.perf_counter() - started
    real_errors = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
    if real_errors or errors or len(done) != clients:
        cause = (real_errors or errors or [TimeoutError("a client did not finish")])[0]
        raise LipsyncError(
            f"mode {spec.name} with {clients} clients failed: {type(cause).__name__}: {cause}"
        ) from cause
    frames = sum(n for n, _, _ in done)
    latencies = [x for _, _, lat in done for x in lat]
    return {
        "clients": clients,
        "frames": frames,
        "total_fps": round(frames / wall, 3) if wall > 0 else 0.0,
        "per_client_fps": round(float(np.mean([n / s for n, s, _ in done if s > 0])), 3),
        "latency_median_ms": round(float(np.median(latencies)) * 1000, 3) if latencies else None,
        "latency_p90_ms": round(float(np.percentile(latencies, 90)) * 1000, 3) if latencies else None,
    }


def model_backends(options: CompareOptions, bench_input: BenchInput, work: Path) -> list[dict[str, Any]]:
    """ms per frame of the model alone: torch eager, torch channels_last, ONNX Runtime; batch 1 and N.

    Real crops and the matching mel windows of the input; warm-up calls discarded. Also times the
    network-input build (``network_input_nhwc``: masking, scaling, stacking) per frame as ``prepare_ms``.
    """
    from ..audio.mel import mel_from_pcm_window
    from ..errors import BackendUnavailableError
    from ..models import BackendOptions, create_backend, network_input_nhwc, random_wav2lip

    batch = options.model_batch
    n = bench_input.crops.shape[0]
    crops = np.ascontiguousarray(bench_input.crops[np.arange(batch) % n])
    if crops.shape[1] != 96:  # another family's package: this section times Wav2Lip on its crops at 96 px
        import cv2

        crops = np.stack([cv2.resize(c, (96, 96), interpolation=cv2.INTER_AREA) for c in crops])
    mels = np.stack(
        [mel_from_pcm_window(bench_input.window(i % n).astype(np.float32) / 32768.0) for i in range(batch)]
    )[:, None].astype(np.float32)
    variants = (
        ("torch eager", "torch", False),
        ("torch channels_last", "torch", True),
        ("onnxruntime", "onnx", True),
    )
    rows: list[dict[str, Any]] = []
    for label, name, channels_last in variants:
        try:
            backend = create_backend(
                name,
                random_wav2lip(options.seed),
                BackendOptions(
                    channels_last=channels_last, onnx_cache_dir=work / "onnx", device=options.device
                ),
            )
        except BackendUnavailableError as exc:
            rows.append(
                {
                    "backend": label,
                    "batch": 1,
                    "ms_per_frame_median": None,
                    "ms_per_frame_p90": None,
                    "prepare_ms": None,
                    "note": str(exc),
                }
            )
            continue
        for size in sorted({1, batch}):
            c, m = crops[:size], mels[:size]
            # oneDNN (torch) builds its kernels over the first few calls: measured up to 5 calls of 10x
            # the steady time at batch 1, so warm-up is several calls (model_warmup), not one.
            for _ in range(options.model_warmup if size == 1 else max(1, options.model_warmup // 3)):
                backend.infer(c, m)
            repeats = max(3, options.model_repeats // size)
            times = []
            deadline = time.monotonic() + options.phase_seconds
            for _ in range(repeats):
                t0 = time.perf_counter()
                backend.infer(c, m)
                times.append((time.perf_counter() - t0) / size)
                if time.monotonic() > deadline:
                    break
            t0 = time.perf_counter()
            for _ in range(10):
                network_input_nhwc(c)
            prepare = (time.perf_counter() - t0) / (10 * size)
            rows.append(
                {
                    "backend": label,
                    "batch": size,
                    "ms_per_frame_median": round(float(np.median(times)) * 1000, 3),
                    "ms_per_frame_p90": round(float(np.percentile(times, 90)) * 1000, 3),
                    "prepare_ms": round(prepare * 1000, 4),
                    "note": "",
                }
            )
    return rows


PRECISION_CACHE = "onnx-precision"
"""The precision section's own ONNX cache folder under the work folder, emptied before it runs: its int8
build is a first build (the servers' shared cache may already hold the int8 file)."""


def precision_section(
    options: CompareOptions, bench_input: BenchInput, work: Path, say: Progress | None = None
) -> dict[str, Any]:
    """fp32 against int8 (and fp16 when ``options.device`` is a GPU) on the bench's package, in this process.

    The model is the servers' (random weights of the package's family, ``options.seed``) on ONNX Runtime,
    loaded by the engine's own :func:`~lipsync_tools.engine.model_loader.load_model`: int8 is calibrated on
    the package's frames and its :class:`~lipsync_tools.engine.precision.QualityCheck` (PSNR against fp32 on
    held-out frames, the 30 dB gate) is the one a server applies. The gate is overridden here
    (``force_precision``) so int8's speed is measured even when a server would refuse it; ``quality.passed``
    says whether it would. Times: ``fp32_load_s`` (export included), ``int8_build_s`` (calibration and
    quantization with nothing cached, both sessions and the check), ``int8_cached_load_s`` (the same with the
    int8 file cached: a server's restart). ms per frame at batch 1 and ``model_batch`` on the package's own
    crops and audio, the precisions' calls interleaved so load from elsewhere hits them alike; ``over_fp32``:
    median against fp32's at the same batch. A precision that cannot be built gets a row with a note
    instead of failing the run.
    """
    from ..engine.model_loader import PackageModelHints, RuntimeChoice, load_model
    from ..engine.precision import compare_outputs, package_samples, split_frames
    from ..models.devices import parse_device
    from ..package.reader import open_package

    package = open_package(bench_input.package, mmap=False)
    hints = PackageModelHints.from_package(package, with_checkpoint=False)
    cache = work / PRECISION_CACHE
    shutil.rmtree(cache, ignore_errors=True)
    batch = options.model_batch
    notes: list[str] = []

    def load(precision: str) -> tuple[Any, float]:
        runtime = RuntimeChoice(precision=precision, device=options.device, force_precision=True)
        t0 = time.perf_counter()
        loaded = load_model("random", seed=options.seed, backend="onnx", cache_dir=cache, hints=hints,
                            warmup_batches=(), runtime=runtime)
        return loaded, time.perf_counter() - t0

    fp32, fp32_seconds = load("fp32")
    family, mode, encoder = fp32.backend.family, fp32.backend.audio_mode, fp32.audio_encoder
    models: dict[str, Any] = {"fp32": fp32.backend}
    failed: dict[str, str] = {}
    psnr: dict[str, float | None] = {"fp32": None}
    quality: dict[str, Any] | None = None
    build_seconds = cached_seconds = None
    # A precision that cannot be built (a missing runtime, a quantizer's error) becomes a row with a note: the
    # run's other figures stand. Any exception, since ONNX Runtime's tools raise plain ones.
    try:
        if say is not None:
            say(f"precision: calibrating and quantizing int8 on {bench_input.package.name} (nothing cached)")
        int8, build_seconds = load("int8")
        del int8
        int8, cached_seconds = load("int8")  # the int8 file is cached now: what a server's restart pays
        models["int8"], quality = int8.backend, int8.info.quality
        psnr["int8"] = None if quality is None else quality.get("psnr_db")
        if quality is not None and not quality.get("passed", False):
            notes.append(
                f"int8 is below the {quality.get('threshold_db', 30):g} dB gate on this package: a server "
                "asked for int8 runs fp32 (measured here with the gate overridden)"
            )
    except Exception as exc:
        failed["int8"] = f"{type(exc).__name__}: {exc}"
        notes.append(f"int8 could not be built: {failed['int8']}")
    if parse_device(options.device).is_cuda:
        try:
            fp16, _ = load("fp16")
            models["fp16"] = fp16.backend
            _, held_frames = split_frames(package.n_frames)
            held = package_samples(package, family, mode, encoder, held_frames)
            check = compare_outputs(fp32.backend, fp16.backend, held)
            psnr["fp16"] = check.to_dict()["psnr_db"]
        except Exception as exc:
            failed["fp16"] = f"{type(exc).__name__}: {exc}"
            notes.append(f"fp16 could not be built: {failed['fp16']}")
    frames = [i % package.n_frames for i in range(batch)]
    samples = package_samples(package, family, mode, encoder, frames)
    times: dict[tuple[str, int], list[float]] = {}
    sizes = sorted({1, batch})
    for size in sizes:
        crops, audio = samples.crops[:size], samples.audio[:size]
        for model in models.values():
            for _ in range(options.model_warmup if size == 1 else max(1, options.model_warmup // 3)):
                model.infer(crops, audio)
        deadline = time.monotonic() + options.phase_seconds
        for _ in range(max(3, options.model_repeats // size)):
            for name, model in models.items():  # interleaved: fp32 int8 fp32 int8 ...
                t0 = time.perf_counter()
                model.infer(crops, audio)
                times.setdefault((name, size), []).append((time.perf_counter() - t0) / size)
            if time.monotonic() > deadline:
                break
    rows: list[dict[str, Any]] = []
    for size in sizes:
        reference = times.get(("fp32", size))
        for name in ("fp32", "int8", "fp16"):
            if name not in models and name not in failed:
                continue
            measured = times.get((name, size))
            median = None if not measured else float(np.median(measured)) * 1000
            p90 = None if not measured else float(np.percentile(measured, 90)) * 1000
            note = failed.get(name, "")
            if name == "int8" and quality is not None and not quality.get("passed", False):
                note = "below the quality gate: a server runs fp32"
            rows.append({
                "precision": name,
                "batch": size,
                "ms_per_frame_median": None if median is None else round(median, 3),
                "ms_per_frame_p90": None if p90 is None else round(p90, 3),
                "over_fp32": None if median is None or not reference
                else round(median / (float(np.median(reference)) * 1000), 3),
                "psnr_db_vs_fp32": psnr.get(name),
                "note": note,
            })
    return {
        "device": options.device,
        "backend": "onnx",
        "family": family.name,
        "batch": batch,
        "fp32_load_s": round(fp32_seconds, 3),
        "int8_build_s": None if build_seconds is None else round(build_seconds, 3),
        "int8_cached_load_s": None if cached_seconds is None else round(cached_seconds, 3),
        "quality": quality,
        "rows": rows,
        "notes": notes,
    }


def cold_start(options: CompareOptions, bench_input: BenchInput, work: Path) -> dict[str, Any]:
    """First-frame latency of a package that is not loaded (``--catalog`` loads it on demand, with its
    model), the next frames', and RSS: what the first load added (package and model), and what a second
    package sharing that model added, against its decoded frames (``N x H x W x 3``)."""
    import json

    import psutil

    from ..client import LipsyncClient

    catalog = work / "cold-catalog.json"
    path = str(bench_input.package.resolve())
    second = f"{PACKAGE_ID}-2"  # the same file under another id: a package whose model is already loaded
    catalog.write_text(json.dumps({"packages": {PACKAGE_ID: {"path": path}, second: {"path": path}}}))
    launch = ServerLaunch(
        name="cold", kind="package", package_id=PACKAGE_ID, path=bench_input.package, seed=options.seed,
        backend=options.backend, max_batch=8, log_dir=work / "logs", onnx_cache=work / "onnx",
        catalog=catalog, precision=options.precision, device=options.device,
    )
    server = ServerProcess.start(launch, options.server_start_seconds)
    try:
        process = psutil.Process(server.pid)
        before = process.memory_info().rss
        spec = MODES["preloaded"]
        with LipsyncClient(server.url) as client:
            t0 = time.perf_counter()
            reply = client.frame(_request(spec, bench_input, 0, 1, options.jpeg_quality))
            check_reply(reply, spec, 0, bench_input)
            first = time.perf_counter() - t0
            warm: list[float] = []
            for k in range(1, 4):
                t0 = time.perf_counter()
                reply = client.frame(_request(spec, bench_input, k, k + 1, options.jpeg_quality))
                warm.append(time.perf_counter() - t0)
                check_reply(reply, spec, k, bench_input)
            after = process.memory_info().rss
            request = _request(spec, bench_input, 0, 9, options.jpeg_quality)
            request = replace(request, package_id=second)
            client.frame(request)
            after_second = process.memory_info().rss
    finally:
        server.stop()
    decoded = bench_input.n_frames * bench_input.width * bench_input.height * 3
    grown = max(0, after_second - after)
    return {
        "first_frame_ms": round(first * 1000, 2),
        "warm_frame_ms": round(float(np.median(warm)) * 1000, 2),
        "rss_before_mb": round(before / 1e6, 1),
        "rss_after_mb": round(after / 1e6, 1),
        "first_load_rss_mb": round(max(0, after - before) / 1e6, 1),
        "package_rss_mb": round(grown / 1e6, 1),
        "decoded_frames_mb": round(decoded / 1e6, 1),
        "rss_over_decoded": round(grown / decoded, 3) if decoded else None,
    }


def family_networks(options: CompareOptions, work: Path) -> list[dict[str, Any]]:
    """ms per frame of every registered family's network alone, side by side: ONNX Runtime and torch
    (channels_last), batch 1 and ``model_batch``; random weights (speed is real, output is not lip-sync),
    random crops at the family's crop size, random audio of its default shape. Input building and pasting
    the prediction back into the crop are included (``infer``)."""
    from ..errors import BackendUnavailableError
    from ..models import BackendOptions, create_backend
    from ..models.families import MODEL_FAMILIES, family_names, random_network

    rng = np.random.default_rng(options.seed)
    rows: list[dict[str, Any]] = []
    for name in family_names():
        family = MODEL_FAMILIES[name]
        mode = family.audio_mode(None)
        s = family.crop_size
        crops = rng.integers(0, 256, (options.model_batch, s, s, 3), dtype=np.uint8)
        audio = rng.standard_normal((options.model_batch, *mode.network_shape)).astype(np.float32)
        for runtime in ("onnx", "torch"):
            network = random_network(family, mode.name, options.seed).module
            try:
                runtime_options = BackendOptions(onnx_cache_dir=work / "onnx", device=options.device)
                backend = create_backend(runtime, network, runtime_options, family)
            except BackendUnavailableError as exc:
                rows.append({"family": name, "audio_mode": mode.name, "backend": runtime, "batch": 1,
                             "ms_per_frame_median": None, "ms_per_frame_p90": None, "note": str(exc)})
                continue
            for size in sorted({1, options.model_batch}):
                c, a = crops[:size], audio[:size]
                for _ in range(options.model_warmup if size == 1 else max(1, options.model_warmup // 3)):
                    backend.infer(c, a)
                times = []
                deadline = time.monotonic() + options.phase_seconds
                for _ in range(max(3, options.model_repeats // size)):
                    t0 = time.perf_counter()
                    backend.infer(c, a)
                    times.append((time.perf_counter() - t0) / size)
                    if time.monotonic() > deadline:
                        break
                rows.append({
                    "family": name,
                    "audio_mode": mode.name,
                    "backend": runtime,
                    "batch": size,
                    "ms_per_frame_median": round(float(np.median(times)) * 1000, 3),
                    "ms_per_frame_p90": round(float(np.percentile(times, 90)) * 1000, 3),
                    "note": "",
                })
    return rows


# --- summaries --------------------------------------------------------------------------------------------


def _stats(values_ms: list[float]) -> dict[str, float | None]:
    if not values_ms:
        return {"median_ms": None, "p90_ms": None}
    return {
        "median_ms": round(float(np.median(values_ms)), 4),
        "p90_ms": round(float(np.percentile(values_ms, 90)), 4),
    }


def summarize_mode(
    spec: ModeSpec, samples: list[_Sample], server: ServerProcess, peaks: dict[str, int]
) -> dict[str, Any]:
    """Per-component median/p90, totals, FPS, non-model time, startup and memory of one mode."""
    stages: dict[str, dict[str, float | None]] = {}
    for label, stage in COMPONENTS:
        values = [s.timings.get(stage, 0) / 1000 for s in samples]
        stages[label] = _stats(values)
    e2e = [s.seconds * 1000 for s in samples]
    server_total = [s.timings.get("total", 0) / 1000 for s in samples]
    stages["transport"] = _stats([e - t for e, t in zip(e2e, server_total, strict=True)])
    inference = [s.timings.get("inference", 0) / 1000 for s in samples]
    seconds = server.ready.get("seconds", {})
    return {
        "description": spec.description,
        "server": spec.server,
        "protocol": spec.protocol,
        "image": spec.image.wire_name,
        "frames": len(samples),
        "stages": stages,
        "server_total": _stats(server_total),
        "end_to_end": _stats(e2e),
        "fps": round(len(e2e) / (sum(e2e) / 1000), 3) if e2e else 0.0,
        "non_model": _stats([e - i for e, i in zip(e2e, inference, strict=True)]),
        "startup": {
            "process_to_ready_s": round(server.process_seconds, 3),
            "model_load_s": float(seconds.get("model_load", 0.0)),
            "frame_preload_s": float(seconds.get("frame_preload", 0.0)),
            # the server's "feature_mapping": mapping and checking the package's hot arrays (crops, masks,
            # mel, ...), not computing audio features (schema 3 renamed it from audio_features_s)
            "feature_mapping_s": float(seconds.get("feature_mapping", 0.0)),
            "package_open_s": float(seconds.get("package_open", 0.0)),
            "warmup_s": float(seconds.get("warmup", 0.0)),
            "server_total_s": float(seconds.get("total", 0.0)),
        },
        "memory": {
            "ready_rss_mb": round(int(server.ready.get("rss_bytes", 0)) / 1e6, 1),
            "peak_rss_mb": round(peaks.get(spec.name, 0) / 1e6, 1),
        },
        "runtime": runtime_of(server.ready),
    }


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's two numbers, and each mode's speed relative to ``original``."""
    modes = result["modes"]

    def median(mode: str, key: str) -> float | None:
        value = modes.get(mode, {}).get(key, {}).get("median_ms")
        return None if value is None else float(value)

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    orig_e2e, orig_nm = median("original", "end_to_end"), median("original", "non_model")
    pre_e2e, pre_nm = median("preloaded", "end_to_end"), median("preloaded", "non_model")
    pre_model = modes.get("preloaded", {}).get("stages", {}).get("model inference", {}).get("median_ms")
    over = ratio(pre_e2e, pre_model)
    speedups = {
        m: {
            "end_to_end": ratio(orig_e2e, median(m, "end_to_end")),
            "non_model": ratio(orig_nm, median(m, "non_model")),
        }
        for m in modes
    }
    return {
        "non_model_ratio_original_over_preloaded": ratio(orig_nm, pre_nm),
        "preloaded_end_to_end_over_model": over,
        "preloaded_overhead_pct": None if over is None else round((over - 1) * 100, 2),
        "speedup_vs_original": speedups,
        "goal_non_model_ratio": 20.0,
        "goal_overhead_pct": 2.0,
        "goals": goals(result),
    }


def runtime_notes(options: CompareOptions, runtimes: dict[str, dict[str, Any]]) -> list[str]:
    """Notes where a server ran another precision than ``options.precision`` (the quality gate refused int8,
    or an original server, which has no package to calibrate int8 on)."""
    notes = []
    originals = [m for m in runtimes if MODES[m].server == "original"]
    if options.precision == "int8" and originals:
        notes.append(
            f"{', '.join(originals)}: int8 calibrates on a package's own frames and an original server has "
            "none, so these servers ran fp32"
        )
    for mode, runtime in runtimes.items():
        if mode in originals or runtime["precision"] == options.precision:
            continue
        quality = runtime["quality"] or {}
        why = (
            f"the quality gate refused int8 (PSNR {quality.get('psnr_db')} dB on {quality.get('frames')} "
            f"held-out frames, below {quality.get('threshold_db')} dB)"
            if quality and not quality.get("passed", True) else f"it reported {runtime['precision']}"
        )
        notes.append(f"{mode}: asked for {options.precision}, its server ran {runtime['precision']}: {why}")
    return notes


GOAL_LIMITS: dict[str, tuple[str, float, str]] = {
    "crop_only_over_model": (
        "preloaded, crop-only replies: end-to-end <= 1.02 x model time", 1.02, "<="),
    "hd_jpeg_over_model": ("preloaded, full-frame 720p JPEG: end-to-end <= 1.08 x model time", 1.08, "<="),
    "four_clients_over_ceiling": (
        "total fps with 4 clients >= 0.9 x the model's own batched ceiling", 0.9, ">="),
    "int8_over_fp32": ("int8 model time <= 0.65 x fp32 at the same batch size", 0.65, "<="),
    "int8_psnr_db": ("int8 PSNR against fp32 >= 30 dB on the bench's package", 30.0, ">="),
}
"""The issue's goals ``--compare`` evaluates (issue 12): key -> (the goal in words, limit, comparison)."""


def _goal(key: str, measured: float | None = None, **details: Any) -> dict[str, Any]:
    return goal(key, measured, limits=GOAL_LIMITS, **details)



def goals(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The issue's goals this ``--compare`` result can evaluate, each measured against its limit or null with
    the reason (:data:`GOAL_LIMITS`).

    "Model time" is a mode's own ``model inference`` stage median (the server's ``inference`` timing), so a
    ratio compares the mode's end-to-end with the model calls it waited for. The batched ceiling is
    ``1000 / batched ms per frame``: the preloaded server's measured capacity (its ready event), the best
    frames/s of the batch sizes up to its ``max_batch``; else the precision section's row of the precision
    that server ran, at the model batch. ``source`` says which.
    """
    modes, inp = result["modes"], result["input"]

    def over_model(mode: str) -> tuple[float | None, str]:
        m = modes[mode]
        e2e, model = m["end_to_end"]["median_ms"], m["stages"]["model inference"]["median_ms"]
        if e2e is None or not model:
            return None, f"{mode}: no frames measured"
        ran = m.get("runtime", {}).get("precision", "fp32")
        return round(e2e / model, 4), (
            f"{mode}: end-to-end median {e2e:.2f} ms / its inference median {model:.2f} ms ({ran}, "
            f"{inp['width']}x{inp['height']})"
        )

    out: dict[str, dict[str, Any]] = {}
    if "preloaded-crop" in modes:
        value, source = over_model("preloaded-crop")
        out["crop_only_over_model"] = _goal("crop_only_over_model", value, source=source)
    else:
        out["crop_only_over_model"] = _goal(
            "crop_only_over_model", reason="needs the preloaded-crop mode: --modes ...,preloaded-crop")
    if (inp["width"], inp["height"]) != (1280, 720):
        out["hd_jpeg_over_model"] = _goal(
            "hd_jpeg_over_model",
            reason=f"the input is {inp['width']}x{inp['height']}; needs 1280x720: --hd (the sample at "
            "720p) or a 720p video")
    elif "preloaded" not in modes:
        out["hd_jpeg_over_model"] = _goal("hd_jpeg_over_model", reason="needs the preloaded mode")
    else:
        value, source = over_model("preloaded")
        out["hd_jpeg_over_model"] = _goal("hd_jpeg_over_model", value, source=source)
    out["four_clients_over_ceiling"] = _four_clients_goal(result)
    out.update(_int8_goals(result.get("precision")))
    return out


def _four_clients_goal(result: dict[str, Any]) -> dict[str, Any]:
    key = "four_clients_over_ceiling"
    points = {p["clients"]: p for p in result["scaling"].get("preloaded", [])}
    if "preloaded" not in result["modes"]:
        return _goal(key, reason="needs the preloaded mode")
    if 4 not in points:
        return _goal(key, reason="needs 4 concurrent clients: --clients ...,4")
    runtime = result["modes"]["preloaded"].get("runtime", {})
    by_batch = {int(b): float(f) for b, f in runtime.get("frames_per_second", {}).items() if f}
    if by_batch:
        # The ceiling is the best rate any batch size the engine may use reaches: on a CPU the curve is flat
        # and noisy, and its largest batch is not always its fastest.
        largest = runtime.get("max_batch") or max(by_batch)
        usable = {b: f for b, f in by_batch.items() if b <= largest} or by_batch
        batch = max(usable, key=lambda b: usable[b])
        ceiling = usable[batch]
        shown = ", ".join(f"{b}: {f:.1f}" for b, f in sorted(usable.items()))
        where = (f"the preloaded server's measured capacity, best of its batch sizes up to {largest} "
                 f"(frames/s by batch {shown})")
    else:
        section = result.get("precision") or {}
        ran = runtime.get("precision", "fp32")
        row = next((r for r in section.get("rows", []) if r["precision"] == ran
                    and r["batch"] == section.get("batch") and r["ms_per_frame_median"]), None)
        if row is None:
            return _goal(key, reason="the preloaded server reported no capacity and the precision section "
                         f"has no batched {ran} time")
        ceiling = 1000.0 / float(row["ms_per_frame_median"])
        where = (f"the precision section's {ran} at batch {row['batch']}: "
                 f"{row['ms_per_frame_median']:.2f} ms per frame ({ceiling:.1f} frames/s)")
    fps = float(points[4]["total_fps"])
    return _goal(key, round(fps / ceiling, 4), source=f"{fps:.1f} frames/s with 4 clients / {where}")


def _int8_goals(section: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    if not section:
        return {k: _goal(k, reason="no precision section") for k in ("int8_over_fp32", "int8_psnr_db")}
    rows = {(r["precision"], r["batch"]): r for r in section["rows"]}
    ratios = {b: r["over_fp32"] for (p, b), r in rows.items() if p == "int8" and r["over_fp32"] is not None}
    failed = next(
        (r["note"] for (p, _), r in rows.items() if p == "int8" and r["ms_per_frame_median"] is None), None
    )
    if ratios:
        worst = max(ratios, key=lambda b: ratios[b])
        shown = ", ".join(f"batch {b}: {v:.3f}" for b, v in sorted(ratios.items()))
        speed = _goal("int8_over_fp32", float(ratios[worst]),
                      source=f"precision section: int8 / fp32 median ms per frame at the same batch, the "
                      f"worst of {shown} ({section['family']}, onnx on {section['device']})")
    else:
        speed = _goal("int8_over_fp32", reason=f"int8 was not measured: {failed or 'no int8 row'}")
    quality = section.get("quality")
    if quality is None:
        psnr = _goal("int8_psnr_db", reason=f"int8 was not checked: {failed or 'no quality check'}")
    elif quality.get("psnr_db") is None:  # identical outputs: infinite PSNR
        psnr = _goal("int8_psnr_db", float("inf"), source="int8 output equals fp32's on the held-out frames")
        psnr["measured"] = None
    else:
        psnr = _goal("int8_psnr_db", float(quality["psnr_db"]),
                     source=f"the engine's quality check on {quality['frames']} held-out frames of the "
                     "package")
    return {"int8_over_fp32": speed, "int8_psnr_db": psnr}
