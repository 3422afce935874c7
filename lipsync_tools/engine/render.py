"""Render a lip-synced mp4 from a package and a speech file, locally or through a running server.

Frames come out at the package's fps for the audio's duration (rounded up to whole frames). Output frame
``k`` shows avatar frame ``pingpong_index(k, N)`` driven by the mel window Wav2Lip's mapping gives frame
``k`` of the speech (``mel_window_starts``); the speech is muxed in as AAC by
:func:`lipsync_tools.media.writer.write_video`, which writes to a temporary file and renames it, so a failed
render never leaves a partial mp4.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ..audio.mel import MEL_WINDOW_FRAMES, mel_window_starts, wav2lip_mel
from ..errors import UsageError
from ..media.audio import load_audio
from ..media.writer import write_video
from ..package.writer import check_output_path
from ..pipeline.progress import NullProgress, Progress
from ..protocol.limits import SAMPLE_RATE
from ..protocol.messages import FrameReply, FrameRequest, ImageFormat
from .engine import STAGES, Engine, EngineOptions
from .model_loader import ModelInfo, load_inference_backend
from .pacing import pingpong_index
from .store import PackageStore

RENDER_PACKAGE_ID = "avatar"


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
    options: EngineOptions | None = None,
    server_url: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
    on_model: Callable[[ModelInfo], None] | None = None,
) -> RenderResult:
    """Render ``output`` (mp4) from the package at ``package_path`` driven by the speech in ``audio_path``.

    Locally (``server_url`` None) the package and model are loaded here (model options as in
    :func:`~lipsync_tools.engine.model_loader.load_inference_backend`) and frames are rendered with
    :meth:`Engine.process_batch_sync` in batches of ``options.max_batch``. ``on_model`` is called once the
    model is loaded (the CLI prints the random-weights warning from it).

    Raises :class:`~lipsync_tools.errors.OutputExistsError` (exists, no ``force``),
    :class:`~lipsync_tools.errors.InputNotFoundError`, :class:`~lipsync_tools.errors.NoAudioError`,
    :class:`UsageError` (audio shorter than one 0.2 s window, model options, a server URL without the
    client), :class:`~lipsync_tools.errors.PackageFormatError` and model loading errors.
    """
    started = time.perf_counter()
    options = options or EngineOptions()
    progress = progress or NullProgress()
    output = Path(output)
    check_output_path(output, force)
    if server_url is not None:
        raise UsageError(
            f"rendering through a server ({server_url}) needs lipsync_tools.client, which this installation "
            "does not have yet; render locally (drop --server)"
        )
    audio_path = Path(audio_path)
    pcm = load_audio(audio_path, SAMPLE_RATE)
    mel = wav2lip_mel(pcm) if pcm.size else np.zeros((80, 0), np.float32)
    audio_done = time.perf_counter()

    store = PackageStore()
    info = store.load(RENDER_PACKAGE_ID, Path(package_path))
    package = store.get(RENDER_PACKAGE_ID)
    embedded = package.read_checkpoint() if checkpoint is None and model in (None, "wav2lip") else None
    runtime, model_info = load_inference_backend(
        model, checkpoint, seed, backend, embedded, cache_dir, package_label=str(package_path),
        warmup_batches=(),  # the first batch is real work either way
    )
    if on_model is not None:
        on_model(model_info)
    engine = Engine(store, runtime, options)
    loaded = time.perf_counter()

    fps = info.fps
    audio_seconds = pcm.size / SAMPLE_RATE
    n_out = max(1, math.ceil(audio_seconds * fps - 1e-9))
    starts = mel_window_starts(n_out, fps, mel.shape[1])  # UsageError for audio under one window
    timings: dict[str, list[int]] = {stage: [] for stage in STAGES}

    def frames() -> Iterator[np.ndarray]:
        progress.start("Rendering frames", n_out)
        for first in range(0, n_out, options.max_batch):
            requests = [
                FrameRequest.from_mel(
                    np.ascontiguousarray(mel[:, int(starts[k]) : int(starts[k]) + MEL_WINDOW_FRAMES]),
                    request_id=k, package_id=RENDER_PACKAGE_ID, frame_index=pingpong_index(k, info.n_frames),
                    image=ImageFormat.RAW_BGR,
                )
                for k in range(first, min(first + options.max_batch, n_out))
            ]
            replies = engine.process_batch_sync(requests)
            for reply in replies:
                _collect(timings, reply)
                yield reply.image_array()
            progress.advance(len(replies))
        progress.finish()

    rate = Fraction(fps).limit_denominator(1001 * 1000)
    manifest = package.package.manifest
    if manifest.video.fps_num > 0 and manifest.video.fps_den > 0:
        rate = Fraction(manifest.video.fps_num, manifest.video.fps_den)
    written = write_video(output, frames(), rate, audio=pcm if pcm.size else None, sample_rate=SAMPLE_RATE)
    finished = time.perf_counter()
    return RenderResult(
        output=output, frames=written, fps=fps, width=info.width, height=info.height,
        audio_seconds=audio_seconds, video_seconds=written / fps, model=model_info,
        seconds={"audio": audio_done - started, "load": loaded - audio_done, "render": finished - loaded,
                 "total": finished - started},
        stage_ms={stage: statistics.median(values) / 1000.0 for stage, values in timings.items() if values},
    )


def _collect(timings: dict[str, list[int]], reply: FrameReply) -> None:
    for stage, micros in reply.timings.items():
        timings.setdefault(stage, []).append(micros)
