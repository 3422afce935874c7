"""Render a lip-synced mp4 from a package and a speech file, locally or through a running server.

Frames come out at the package's fps for the audio's duration (rounded up to whole frames). Output frame
``k`` shows avatar frame ``pingpong_index(k, N)`` driven by the mel window Wav2Lip's mapping gives frame
``k`` of the speech (``mel_window_starts``); the speech is muxed in as AAC by
:func:`lipsync_tools.media.writer.write_video`, which writes to a temporary file and renames it, so a failed
render never leaves a partial mp4.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from .audio.mel import MEL_WINDOW_FRAMES, MelOptions, mel_window, mel_window_starts, wav2lip_mel
from .engine.engine import STAGES, Engine, EngineOptions
from .engine.model_loader import AudioEncoderChoice, ModelInfo, PackageModelHints, RuntimeChoice, load_model
from .engine.pacing import pingpong_index
from .engine.requests import AudioKind, EngineRequest, EngineResult, ImageKind
from .engine.store import PackageStore
from .errors import LipsyncError, RequestError, UsageError
from .media.audio import load_audio
from .media.writer import write_video
from .package.writer import check_output_path
from .progress import NullProgress, Progress
from .protocol.messages import FrameRequest, ImageFormat, Pacing

RENDER_PACKAGE_ID = "avatar"
SAMPLE_RATE = MelOptions().sample_rate  # 16 kHz: the speech is read at the rate the mel takes


@dataclass(kw_only=True)
class RenderResult:
    """What :func:`render_video` wrote and what it cost.

    ``stage_ms``: median milliseconds per engine stage over all frames (server-side stages when rendered
    through a server). ``seconds``: ``audio`` (decode + mel), ``load`` (package and model), ``render``
    (frames rendered and encoded into the mp4), ``total``.
    """

    output: Path
    frames: int
    fps: float
    width: int
    height: int
    audio_seconds: float
    video_seconds: float
    server_url: str | None = None
    model: ModelInfo | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    stage_ms: dict[str, float] = field(default_factory=dict)

    @property
    def frames_per_second(self) -> float:
        """Rendering speed: output frames per second of rendering."""
        spent = self.seconds.get("render", 0.0)
        return self.frames / spent if spent > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        """JSON-ready values (``lipsync render --json``)."""
        return {
            "ok": True, "output": str(self.output), "frames": self.frames, "fps": self.fps,
            "width": self.width, "height": self.height, "audio_seconds": round(self.audio_seconds, 4),
            "video_seconds": round(self.video_seconds, 4), "server_url": self.server_url,
            "model": self.model.to_dict() if self.model is not None else None,
            "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
            "render_frames_per_second": round(self.frames_per_second, 3),
            "stage_ms": {k: round(v, 3) for k, v in self.stage_ms.items()},
        }


def render_video(
    package_path: str | Path,
    audio_path: str | Path,
    output: str | Path,
    *,
    model: str | None = None,
    checkpoint: Path | None = None,
    seed: int = 0,
    backend: str | None = None,
    cache_dir: Path | None = None,
    family: str | None = None,
    audio_encoder: str | Path | None = None,
    options: EngineOptions | None = None,
    runtime: RuntimeChoice | None = None,
    server_url: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
    on_model: Callable[[ModelInfo], None] | None = None,
) -> RenderResult:
    """Render ``output`` (mp4) from the package at ``package_path`` driven by the speech in ``audio_path``.

    Locally (``server_url`` None) the package and model are loaded here (model options as in
    :func:`~lipsync_tools.engine.model_loader.load_model`: the family is the package's unless ``family``
    says otherwise; ``audio_encoder`` a path or ``"random"`` for AVE families, else the package's) and
    frames are rendered with
    :meth:`Engine.process_batch_sync` in batches of ``options.max_batch``; ``runtime``: the model's device
    and precision (:class:`~lipsync_tools.engine.model_loader.RuntimeChoice`: int8 is calibrated on the
    package's own frames). ``on_model`` is called once the
    model is loaded (the CLI prints the random-weights warning from it).

    With ``server_url`` the server's model renders: ``package_path`` is a package id the server has
    loaded, or the path of a package (found among the server's packages by path, else loaded there for
    the render and unloaded after); ``options.max_batch`` requests at a time are pipelined over one
    WebSocket so the server can batch them.

    Raises :class:`~lipsync_tools.errors.OutputExistsError` (exists, no ``force``),
    :class:`~lipsync_tools.errors.InputNotFoundError`, :class:`~lipsync_tools.errors.NoAudioError`,
    :class:`UsageError` (audio shorter than one 0.2 s window, model options, model options given with a
    server, an unreachable server or unknown package), :class:`~lipsync_tools.errors.PackageFormatError`,
    model loading errors, the engine's :class:`~lipsync_tools.errors.RequestError` and the server's
    :class:`~lipsync_tools.errors.ProtocolError`.
    """
    started = time.perf_counter()
    options = options or EngineOptions()
    progress = progress or NullProgress()
    output = Path(output)
    check_output_path(output, force)
    local_options = (model, checkpoint, backend, family, audio_encoder, runtime)
    if server_url is not None and any(option is not None for option in local_options):
        raise UsageError(
            "--model, --checkpoint, --backend, --family, --audio-encoder, --precision and --device choose "
            "the local model; a server (--server) renders with its own model. Drop them, or drop --server"
        )
    pcm = load_audio(Path(audio_path), SAMPLE_RATE)
    mel = wav2lip_mel(pcm) if pcm.size else np.zeros((80, 0), np.float32)
    audio_seconds = pcm.size / SAMPLE_RATE
    audio_done = time.perf_counter()

    source: _FrameSource
    if server_url is None:
        source = _LocalSource(package_path, model, checkpoint, seed, backend, cache_dir, options, on_model,
                              family, audio_encoder, runtime)
    else:
        source = _ServerSource(server_url, package_path, options.max_batch, pcm)
    with source:
        loaded = time.perf_counter()
        fps = source.fps
        n_out = max(1, math.ceil(audio_seconds * fps - 1e-9))
        starts = mel_window_starts(n_out, fps, mel.shape[1])  # UsageError for audio under one window
        timings: dict[str, list[int]] = {stage: [] for stage in STAGES}

        def frames() -> Iterator[np.ndarray]:
            progress.start("Rendering frames", n_out)
            for first in range(0, n_out, options.max_batch):
                asks = [
                    _Ask(k, pingpong_index(k, source.n_frames), mel_window(mel, int(starts[k])))
                    for k in range(first, min(first + options.max_batch, n_out))
                ]
                rendered = source.render(asks, mel, starts)
                for pixels, stage_micros in rendered:
                    for stage, us in stage_micros.items():
                        timings.setdefault(stage, []).append(us)
                    yield pixels
                progress.advance(len(rendered))
            progress.finish()

        written = write_video(output, frames(), source.frame_rate, audio=pcm if pcm.size else None,
                              sample_rate=SAMPLE_RATE)
    finished = time.perf_counter()
    return RenderResult(
        output=output, frames=written, fps=fps, width=source.width, height=source.height,
        audio_seconds=audio_seconds, video_seconds=written / fps, server_url=server_url, model=source.model,
        seconds={"audio": audio_done - started, "load": loaded - audio_done, "render": finished - loaded,
                 "total": finished - started},
        stage_ms={stage: statistics.median(values) / 1000.0 for stage, values in timings.items() if values},
    )


@dataclass(frozen=True)
class _Ask:
    """One output frame to render: its number, the package frame shown, and its mel window."""

    number: int
    frame_index: int
    mel: np.ndarray


Rendered = tuple[np.ndarray, Mapping[str, int]]
"""One rendered frame: BGR pixels and its stage timings (microseconds)."""


RENDER_JPEG_QUALITY = 95
"""JPEG quality of the frames ``render --server`` asks a remote server for: high, because the frames are
encoded again into the mp4 (on loopback they travel as raw BGR, with no lossy step at all)."""


class _FrameSource:
    """Where frames come from: the local engine or a server. A context manager; fields set on enter."""

    package_id: str
    n_frames: int
    fps: float
    frame_rate: Fraction
    width: int
    height: int
    model: ModelInfo | None = None

    def __enter__(self) -> _FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def render(self, asks: list[_Ask], mel: np.ndarray, starts: np.ndarray) -> list[Rendered]:
        """The frames ``asks`` ask for, in order (``mel``/``starts``: the clip's spectrogram and windows)."""
        raise NotImplementedError


class _LocalSource(_FrameSource):
    """The package and the model loaded here; frames from :meth:`Engine.process_batch_sync`."""

    def __init__(self, package_path: str | Path, model: str | None, checkpoint: Path | None, seed: int,
                 backend: str | None, cache_dir: Path | None, options: EngineOptions,
                 on_model: Callable[[ModelInfo], None] | None, family: str | None = None,
                 audio_encoder: str | Path | None = None, runtime: RuntimeChoice | None = None) -> None:
        store = PackageStore()
        info = store.load(RENDER_PACKAGE_ID, Path(package_path))
        package = store.get(RENDER_PACKAGE_ID)
        loaded = load_model(
            model, checkpoint, seed, backend, cache_dir, family=family,
            audio_encoder=AudioEncoderChoice.parse(audio_encoder, seed),
            hints=PackageModelHints.for_weights(package.package, model, checkpoint, str(package_path)),
            warmup_batches=(),  # the first batch is real work either way
            runtime=runtime,
        )
        self.model = loaded.info
        if self.model.audio_mode != "mel" and loaded.audio_encoder is None:
            raise UsageError(
                f"{package_path} takes {self.model.audio_mode} audio features and there is no encoder to "
                "compute them from new speech: pass --audio-encoder audio_visual_encoder.pth (SyncTalk_2D's "
                "AVE encoder; HuBERT/WeNet features cannot be computed here)"
            )
        if on_model is not None:
            on_model(self.model)
        self.engine = Engine(store, loaded.backend, options, audio_encoder=loaded.audio_encoder)
        try:
            self.stream = self.engine.open_stream_sync(RENDER_PACKAGE_ID)  # refuses another family's package
        except RequestError as exc:
            raise UsageError(str(exc)) from None
        self.windows_added = 0  # output frames whose mel window the stream has
        self.package_id, self.n_frames, self.fps = RENDER_PACKAGE_ID, info.n_frames, info.fps
        self.width, self.height = info.width, info.height
        video = package.package.manifest.video
        self.frame_rate = Fraction(video.fps_num, video.fps_den) if video.fps_num > 0 and video.fps_den > 0 \
            else Fraction(info.fps).limit_denominator(1001 * 1000)

    def render(self, asks: list[_Ask], mel: np.ndarray, starts: np.ndarray) -> list[Rendered]:
        requests = [
            EngineRequest(package_id=self.package_id, frame_index=ask.frame_index, audio=AudioKind.MEL,
                          samples=ask.mel, image=ImageKind.RAW_BGR)
            for ask in asks
        ]
        stream = self.stream
        if stream is None:
            return [_raw_pixels(r) for r in self.engine.process_batch_sync(requests)]
        # Families whose audio window spans several frames (AVE) get every output frame's mel window.
        frames = [ask.number for ask in asks]
        if stream.total is None:
            stream.end(len(starts))
        # Each output frame's window is added once, look_ahead frames before the frame that needs it.
        last = min(frames[-1] + stream.look_ahead, len(starts) - 1)
        for k in range(self.windows_added, last + 1):
            start = int(starts[k])
            stream.add(k, np.ascontiguousarray(mel[:, start : start + MEL_WINDOW_FRAMES]))
        self.windows_added = max(self.windows_added, last + 1)
        results = self.engine.process_batch_sync(requests, stream=stream, stream_frames=frames)
        return [_raw_pixels(r) for r in results]


def _raw_pixels(result: EngineResult) -> Rendered:
    pixels = np.frombuffer(result.payload, np.uint8).reshape(result.height, result.width, 3)
    return pixels, result.timings


class _ServerSource(_FrameSource):
    """A running ``lipsync serve``: requests pipelined over one WebSocket so the server can batch them.

    ``package`` names a package the server has loaded (its id, or the path it was loaded from); failing
    that, a package file is loaded at run time (the server must be able to read the path) and unloaded at
    the end. Frames travel as raw BGR on loopback (no lossy step before the mp4) and as JPEG (quality
    :data:`RENDER_JPEG_QUALITY`, 95) to another host.

    A package whose audio window spans several frames (SyncTalk_2D's AVE: 16 rows around each frame) is
    rendered through an unpaced *session* instead: the server then computes every frame's features from the
    whole speech, as a live session does, rather than from one 200 ms window per request. Silent windows
    come back as the avatar's own frames, as in any session.
    """

    def __init__(self, url: str, package: str | Path, window: int, pcm: np.ndarray) -> None:
        from urllib.parse import urlsplit

        from .client import LipsyncClient

        self.client = LipsyncClient(url)
        self.window = window
        self.loaded_here: str | None = None
        host = (urlsplit(url if "://" in url else f"http://{url}").hostname or "").lower()
        local = host in ("localhost", "127.0.0.1", "::1")
        self.image_format = ImageFormat.RAW_BGR if local else ImageFormat.JPEG
        self.jpeg_quality = RENDER_JPEG_QUALITY  # used when image_format is JPEG (a server on another host)
        import httpx

        try:
            info = self._find(str(package))
        except httpx.TransportError as exc:
            self.client.close()
            raise UsageError(
                f"cannot reach a lipsync server at {url} ({exc}); start one with `lipsync serve PKG` or "
                "check --server"
            ) from exc
        except BaseException:
            self.client.close()
            raise
        self.package_id = str(info["id"])
        self.n_frames, self.fps = int(info["n_frames"]), float(info["fps"])
        self.width, self.height = int(info["width"]), int(info["height"])
        self.frame_rate = Fraction(self.fps).limit_denominator(1001 * 1000)
        self.session: Any = None
        self.session_frames: Iterator[Any] | None = None
        self.stream: Any = None
        if str(info.get("audio_mode", "mel")) != "mel":
            from .media.audio import pcm16_from_float

            self.session = self.client.session(
                self.package_id,
                image=self.image_format,
                jpeg_quality=self.jpeg_quality,
                pacing=Pacing.UNPACED,
            )
            self.session_frames = iter(self.session.play(pcm16_from_float(pcm)))
        else:
            self.stream = self.client.stream()

    def _find(self, package: str) -> dict[str, Any]:
        listed = self.client.packages()
        for info in listed:
            if info.get("id") == package:
                return info
        wanted = Path(package).expanduser().resolve()
        for info in listed:
            if Path(str(info.get("path", ""))).expanduser().resolve() == wanted:
                return info
        if not wanted.is_file():
            names = ", ".join(str(i.get("id")) for i in listed) or "none"
            raise UsageError(
                f"the server has no package {package!r} (loaded: {names}) and {wanted} is not a file; pass a "
                "loaded package id or a package path the server can read"
            )
        stem = "".join(c if c.isalnum() or c in "._-" else "-" for c in wanted.stem)[:48].lstrip("._-")
        package_id = f"{stem or 'avatar'}-render-{os.getpid()}"
        info = self.client.load_package(package_id, str(wanted))
        self.loaded_here = package_id
        return info

    def render(self, asks: list[_Ask], mel: np.ndarray, starts: np.ndarray) -> list[Rendered]:
        if self.session_frames is not None:
            replies = []
            for ask in asks:
                reply = next(self.session_frames, None)
                if reply is None:
                    raise UsageError(
                        f"the server's session ended after {ask.number} frames; {len(starts)} were expected"
                    )
                replies.append(reply)
            return [self._pixels(reply) for reply in replies]
        for ask in asks:
            self.stream.send(FrameRequest.from_mel(
                np.ascontiguousarray(ask.mel), request_id=ask.number, package_id=self.package_id,
                frame_index=ask.frame_index, image=self.image_format, jpeg_quality=self.jpeg_quality,
            ))
        by_id = {reply.request_id: reply for reply in (self.stream.recv_frame() for _ in asks)}
        return [self._pixels(by_id[ask.number]) for ask in asks]

    def _pixels(self, reply: Any) -> Rendered:
        if reply.image is ImageFormat.RAW_BGR:
            return reply.image_array(), reply.timings
        from .media.images import decode_image

        return decode_image(reply.payload), reply.timings

    def __exit__(self, *exc: object) -> None:
        try:
            if self.stream is not None:
                self.stream.close()
            if self.session is not None:
                self.session.close()
            if self.loaded_here is not None:
                with contextlib.suppress(LipsyncError, OSError):
                    self.client.unload_package(self.loaded_here)
        finally:
            self.client.close()

