"""The "original" per-frame path: every stage of the build pipeline, run again for every request.

This is what a server without packages does (the on-demand server of the published comparison), and what
``lipsync bench --compare`` measures the preloaded path against. Per request, in one worker thread:

``decode`` (frame ``i`` from the video file, :class:`~lipsync_tools.media.video.FrameReader`) ->
``detect`` (face + landmarks, MediaPipe in still-image mode: nothing carried between requests) ->
``crop`` (crop rectangle + model-size crop) -> ``masks`` (feathered blend mask) -> ``features`` (mel
window of the request's audio) -> ``queue`` (waiting for the worker) -> ``inference`` (batch of one) ->
``composite`` -> ``encode``; ``total`` is arrival until the reply was built.

It reuses the pipeline's stage functions (``detect_faces``, ``crop_rectangles``, ``crop_face``,
``to_crop_coordinates``, ``blend_mask``) and, from the engine, its compositor, the request mel window and
its request, result and checks (:mod:`lipsync_tools.engine.requests`); it re-implements none of them. It
answers the engine's :class:`~lipsync_tools.engine.requests.EngineRequest`, and its store and engine have the
shapes the server expects (``StoreLike``, ``ManagedEngine``), so ``lipsync serve --original VIDEO`` serves a
raw video under a package id with the same endpoints and codecs (the wiring is
:func:`lipsync_tools.bench.original_server.original_components`: the server does not import this package).
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..audio.mel import MelOptions, mel_from_pcm_window, mel_window_starts
from ..engine.capacity import Capacity
from ..engine.compositor import composite_crop, composite_frame, encode_frame_image, silence_result
from ..engine.features import FeatureComputer, request_mel_window
from ..engine.requests import (
    PCM_WINDOW_SAMPLES,
    AudioKind,
    EngineRequest,
    EngineResult,
    ImageKind,
    Reason,
    check_frame_index,
    micros,
)
from ..engine.store import IdRegistry
from ..errors import InputNotFoundError, LipsyncError, RequestError, UsageError
from ..faces.base import FaceBackend, FaceOptions
from ..media.audio import load_audio
from ..media.video import FrameReader
from ..models.backends import InferenceBackend
from ..pipeline.crop import CropOptions, crop_face, crop_rectangles, to_crop_coordinates
from ..pipeline.detect import DetectOptions, detect_faces
from ..pipeline.masks import MaskOptions, blend_mask

ORIGINAL_STAGES: tuple[str, ...] = (
    "decode",
    "detect",
    "crop",
    "masks",
    "features",
    "queue",
    "inference",
    "composite",
    "encode",
    "total",
)
"""Timing names of an original-path frame, in the order they appear in ``EngineResult.timings``."""

_MEL = MelOptions()


@dataclass(frozen=True, kw_only=True)
class OriginalOptions:
    """How the original path finds and cuts the face; the defaults are the build pipeline's.

    ``face_backend``: a :mod:`lipsync_tools.faces` backend name, always run in still-image mode.
    ``detect_max_side``, ``padding``, ``feather``: as in :class:`~lipsync_tools.pipeline.build.BuildOptions`.
    ``jpeg_quality``: for replies that do not say. ``silence_dbfs``: as in ``EngineOptions``.
    """

    face_backend: str = "mediapipe"
    detect_max_side: int = 640
    padding: float = 0.1
    feather: float = 0.06
    jpeg_quality: int = 90
    silence_dbfs: float = -50.0

    def __post_init__(self) -> None:
        DetectOptions(max_side=self.detect_max_side)
        CropOptions(padding=self.padding)
        MaskOptions(feather=self.feather)
        if not 1 <= self.jpeg_quality <= 100:
            raise UsageError(f"jpeg_quality is {self.jpeg_quality}; expected 1..100")


@dataclass(frozen=True, kw_only=True)
class VideoSourceInfo:
    """A raw video served by the original path (the fields the server reads of a ``PackageInfo``).

    ``load_seconds`` keys: ``open`` (index the video's packets), ``audio`` (decode the optional audio
    file, for replay requests), ``total``. ``ram_bytes``: the audio held in RAM (frames are not preloaded).
    """

    id: str
    path: Path
    n_frames: int
    fps: float
    width: int
    height: int
    load_seconds: dict[str, float]
    ram_bytes: int
    audio_path: Path | None = None
    has_checkpoint: bool = False  # a raw video never embeds weights (the server's model loader asks)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (``GET /v1/packages``, the startup report)."""
        return {
            "id": self.id,
            "path": str(self.path),
            "n_frames": self.n_frames,
            "fps": self.fps,
            "width": self.width,
            "height": self.height,
            "original": True,
            "audio": None if self.audio_path is None else str(self.audio_path),
            "load_seconds": {k: round(v, 6) for k, v in self.load_seconds.items()},
            "ram_bytes": self.ram_bytes,
        }


@dataclass(eq=False)
class VideoSource:
    """An opened video: its reader (not thread-safe: used by the engine's one worker) and optional audio."""

    info: VideoSourceInfo
    reader: FrameReader = field(repr=False)
    pcm: np.ndarray | None = field(default=None, repr=False)  # float32 16 kHz mono, for replay requests
    mel_starts: np.ndarray | None = field(default=None, repr=False)  # each frame's first mel frame in pcm

    @property
    def n_frames(self) -> int:
        return self.info.n_frames

    def replay_window(self, frame_index: int) -> np.ndarray:
        """The 3200-sample float32 PCM window of ``frame_index`` cut from the raw audio.

        Its window starts where a package's does (:func:`~lipsync_tools.audio.mel.mel_window_starts`: the
        frame's first mel frame, clamped so frames past the audio's end reuse its last 200 ms).
        """
        if self.pcm is None or self.mel_starts is None:
            raise RequestError(
                Reason.BAD_AUDIO,
                f"video {self.info.id!r} was served without --audio, so "
                "replay requests have no audio; send pcm16 or mel audio",
            )
        size = PCM_WINDOW_SAMPLES
        start = int(self.mel_starts[frame_index]) * _MEL.hop_length
        window = np.zeros(size, np.float32)
        chunk = self.pcm[start : start + size]
        window[: chunk.size] = chunk
        return window


class VideoStore(IdRegistry[VideoSource]):
    """Raw videos by id, for the original path. Loading indexes the file; it decodes no frame.

    ``audio``: an audio (or video) file whose 16 kHz track replay requests are cut from; ``None``: replay
    requests are refused with ``bad_audio``.
    """

    def __init__(self, *, audio: Path | None = None) -> None:
        super().__init__()
        self.audio = audio

    def load(self, package_id: str, path: str | Path) -> VideoSourceInfo:
        """Open the video ``path`` under ``package_id``. Raises ``RequestError(bad_request)`` for a bad or
        taken id and the media errors of :class:`FrameReader` / ``load_audio`` for a bad file."""
        self._check_new_id(package_id)
        path = Path(path)
        if not path.is_file():
            raise InputNotFoundError(f"video {path} does not exist; check the --original path")
        started = time.perf_counter()
        reader = FrameReader(path)
        try:
            first = reader.read(0)
            fps = _reader_fps(reader)
            opened = time.perf_counter()
            pcm = load_audio(self.audio, _MEL.sample_rate) if self.audio is not None else None
            n_frames = len(reader)
            starts = None
            if pcm is not None:  # as wav2lip_mel counts frames: a centred STFT has 1 + samples // hop
                starts = mel_window_starts(n_frames, fps, 1 + pcm.size // _MEL.hop_length)
        except BaseException:
            reader.close()
            raise
        done = time.perf_counter()
        info = VideoSourceInfo(
            id=package_id,
            path=path,
            n_frames=n_frames,
            fps=fps,
            width=int(first.shape[1]),
            height=int(first.shape[0]),
            load_seconds={"open": opened - started, "audio": done - opened, "total": done - started},
            ram_bytes=0 if pcm is None else int(pcm.nbytes),
            audio_path=self.audio,
        )
        try:
            self._insert(package_id, VideoSource(info=info, reader=reader, pcm=pcm, mel_starts=starts))
        except RequestError:
            reader.close()
            raise
        return info

    def infos(self) -> list[VideoSourceInfo]:
        """Every loaded video's info, in load order."""
        return [s.info for s in list(self._items.values())]


def _reader_fps(reader: FrameReader) -> float:
    from ..media.video import probe_video

    return float(probe_video(reader.path).fps)


@dataclass(frozen=True)
class OriginalModel:
    """What a live session asks of the model serving it: a key and how fast it runs."""

    key: str
    capacity: Capacity


class OriginalEngine:
    """Renders frames of the videos in ``store`` with every stage per request (see the module docstring).

    One worker at a time (the face graph and the video readers are not thread-safe, and the original
    server has no batching): concurrent requests wait, and that wait is their ``queue`` time. The face
    backend is created in :meth:`start` (or on the first :meth:`render_sync`) and closed in :meth:`stop`.
    """

    def __init__(
        self,
        store: VideoStore,
        backend: InferenceBackend,
        options: OriginalOptions | None = None,
        observer: Any = None,
        *,
        audio_encoder: object | None = None,
    ) -> None:
        self.store = store
        self.backend = backend
        self.options = options or OriginalOptions()
        self.observer = observer
        family = backend.family
        # Every family's own crop rule, per request (SyncTalk_2D: its box, 328 px, INTER_CUBIC).
        self.crop_options = CropOptions(
            size=int(backend.crop_size),
            padding=self.options.padding,
            box_rule=family.box_rule,
            interpolation="cubic" if family.box_rule == "synctalk2d" else "area",
        )
        # AVE families: a request's own 200 ms gives its own row; the other rows are zeros (one-shot).
        self.features = FeatureComputer(family, backend.audio_mode, audio_encoder)
        self.detect_options = DetectOptions(max_side=self.options.detect_max_side)
        self.mask_options = MaskOptions(feather=self.options.feather)
        self._faces: FaceBackend | None = None
        self._lock = threading.Lock()
        # Live sessions ask every engine how fast it is: here a "model call" is one whole request.
        self.model = OriginalModel(key="original", capacity=Capacity())
        self.post_seconds = 0.0

    # --- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the face backend and warm the mel path, off the event loop."""
        await asyncio.to_thread(self.warm_up)

    def warm_up(self) -> None:
        """Build the face graph and run the PCM feature path once (its first call imports librosa)."""
        with self._lock:
            self._face_backend()
        mel_from_pcm_window(np.zeros(PCM_WINDOW_SAMPLES, np.float32))

    async def stop(self) -> None:
        """Release the face backend and close the videos' readers."""
        with self._lock:
            if self._faces is not None:
                self._faces.close()
                self._faces = None
            for info in self.store.infos():
                self.store.get(info.id).reader.close()

    def _face_backend(self) -> FaceBackend:
        if self._faces is None:
            from ..faces import create_backend

            # Still-image mode: a request carries no memory of earlier ones, as on a server without packages.
            self._faces = create_backend(
                self.options.face_backend, FaceOptions(max_faces=1, video_mode=False)
            )
        return self._faces

    # --- entry points ----------------------------------------------------------------------------------

    async def open_stream(self, package_id: str) -> None:
        """The original path keeps no state between requests: every request is a one-shot window."""
        return None

    async def model_for(self, package_id: str) -> OriginalModel:
        """The one "model" of this path (for session admission): every stage of a request, timed."""
        self.store.get(package_id)  # unknown_package
        return self.model

    def expected_latency(self, model: object) -> float:
        """One whole request at the speed measured so far (0.0 before the first)."""
        return self.model.capacity.batch_seconds(1)

    async def process(
        self,
        request: EngineRequest,
        *,
        skip_silence: bool = False,
        stream: object | None = None,
        stream_frame: int = 0,
        deadline: float | None = None,
    ) -> EngineResult:
        """Render the frame ``request`` asks for; every stage runs for this request, in a worker thread.

        Raises :class:`RequestError` (``unknown_package``, ``frame_out_of_range``, ``bad_audio``, and
        ``internal`` when no face is found on the frame).
        """
        arrived = time.perf_counter()
        self._validate(request)
        if skip_silence and request.is_silent(self.options.silence_dbfs):
            return await self.original_frame(
                request.package_id, request.frame_index, request.image, request.jpeg_quality
            )
        result = await asyncio.to_thread(self.render_sync, request, arrived)
        self._observe(result)
        return result

    async def original_frame(
        self,
        package_id: str,
        frame_index: int,
        image_format: ImageKind = ImageKind.JPEG,
        jpeg_quality: int | None = None,
    ) -> EngineResult:
        """Frame ``frame_index`` decoded from the video and encoded, no model (``result.silence`` true)."""
        arrived = time.perf_counter()
        source = self.store.get(package_id)
        self._check_frame(source, frame_index)
        quality = jpeg_quality if jpeg_quality is not None else self.options.jpeg_quality
        result = await asyncio.to_thread(
            self._silent_result, source, frame_index, image_format, quality, arrived
        )
        self._observe(result)
        return result

    def render_sync(self, request: EngineRequest, arrived: float | None = None) -> EngineResult:
        """:meth:`process` in the calling thread (waits for the worker lock); ``arrived`` defaults to now."""
        arrived = time.perf_counter() if arrived is None else arrived
        source = self._validate(request)
        with self._lock:
            started = time.perf_counter()
            reply = self._render(request, source, arrived)
            self.model.capacity.observe(1, time.perf_counter() - started)
            return reply

    # --- checks ------------------------------------------------------------------------------------------

    def _validate(self, request: EngineRequest) -> VideoSource:
        """The request's video, after the frame check (the request checked its audio itself)."""
        source = self.store.get(request.package_id)
        self._check_frame(source, request.frame_index)
        return source

    @staticmethod
    def _check_frame(source: VideoSource, frame_index: int) -> None:
        check_frame_index("video", source.info.id, source.n_frames, frame_index)

    def _observe(self, reply: EngineResult) -> None:
        if self.observer is not None:
            self.observer.observe_batch(1)
            for stage, micros in reply.timings.items():
                self.observer.observe_stage(stage, micros / 1e6)

    # --- the work (caller holds self._lock) ------------------------------------------------------------

    def _network_audio(self, request: EngineRequest, mel: np.ndarray) -> np.ndarray:
        """The network's audio input from this request's mel window (AVE: its own row, others zero)."""
        mode = self.features.mode
        if mode.name == "mel":
            return mel.reshape(mode.network_shape).astype(np.float32, copy=False)
        mel_request = EngineRequest(
            package_id=request.package_id, frame_index=request.frame_index, audio=AudioKind.MEL,
            samples=np.ascontiguousarray(mel, dtype=np.float32),
        )
        return self.features.network_audio(mel_request, None, None, 0)  # type: ignore[arg-type]

    def _features(self, request: EngineRequest, source: VideoSource) -> np.ndarray:
        return request_mel_window(
            request, lambda: mel_from_pcm_window(source.replay_window(request.frame_index))
        )

    def _render(self, request: EngineRequest, source: VideoSource, arrived: float) -> EngineResult:
        timings: dict[str, int] = {}
        started = time.perf_counter()
        index = request.frame_index
        size = self.crop_options.size

        t0 = time.perf_counter()
        frame = source.reader.read(index)
        t1 = time.perf_counter()
        faces = detect_faces(self._face_backend(), frame, self.detect_options)
        if not faces:
            raise RequestError(
                Reason.INTERNAL,
                f"no face found on frame {index} of {source.info.id!r}; "
                "the original path detects faces per frame and cannot render without one",
            )
        landmarks = faces[0].landmarks
        t2 = time.perf_counter()
        frame_size = (int(frame.shape[1]), int(frame.shape[0]))
        scheme = self._face_backend().scheme
        rect_array = crop_rectangles(landmarks[None], frame_size, self.crop_options, scheme)[0]
        crop = crop_face(frame, rect_array, size, self.crop_options.interpolation)
        t3 = time.perf_counter()
        mask = blend_mask(to_crop_coordinates(landmarks, rect_array, size), scheme, size, self.mask_options)
        t4 = time.perf_counter()
        try:
            audio = self._network_audio(request, self._features(request, source))
        except LipsyncError as exc:
            if isinstance(exc, RequestError):
                raise
            raise RequestError(Reason.BAD_AUDIO, str(exc)) from None
        t5 = time.perf_counter()
        generated = self.backend.infer(crop[None], audio[None])[0]
        t6 = time.perf_counter()
        rect = (int(rect_array[0]), int(rect_array[1]), int(rect_array[2]), int(rect_array[3]))
        reply_rect: tuple[int, int, int, int] | None = None
        if request.image.is_crop:
            image = composite_crop(crop, generated, mask)
            reply_rect = rect
        else:
            image = composite_frame(frame, generated, mask, rect)
        t7 = time.perf_counter()
        payload = encode_frame_image(image, request.image, request.jpeg_quality)
        t8 = time.perf_counter()
        timings.update(
            decode=micros(t1 - t0),
            detect=micros(t2 - t1),
            crop=micros(t3 - t2),
            masks=micros(t4 - t3),
            features=micros(t5 - t4),
            queue=micros(started - arrived),
            inference=micros(t6 - t5),
            composite=micros(t7 - t6),
            encode=micros(t8 - t7),
            total=micros(t8 - arrived),
        )
        return EngineResult(
            frame_index=index,
            image=request.image,
            width=int(image.shape[1]),
            height=int(image.shape[0]),
            timings={stage: timings[stage] for stage in ORIGINAL_STAGES},
            rect=reply_rect,
            payload=payload,
        )

    def _silent_result(
        self, source: VideoSource, index: int, image_format: ImageKind, quality: int, arrived: float
    ) -> EngineResult:
        with self._lock:
            t0 = time.perf_counter()
            frame = source.reader.read(index)
            t1 = time.perf_counter()
        return silence_result(index, image_format, frame, quality, arrived=arrived,
                              timings={"decode": micros(t1 - t0)})
