"""The "original" per-frame path: every stage of the build pipeline, run again for every request.

This is what a server without packages does (the on-demand server of the published comparison), and what
``lipsync bench --compare`` measures the preloaded path against. Per request, in one worker thread:

``decode`` (frame ``i`` from the video file, :class:`~lipsync_tools.media.video.FrameReader`) ->
``detect`` (face + landmarks, MediaPipe in still-image mode: nothing carried between requests) ->
``crop`` (crop rectangle + model-size crop) -> ``masks`` (feathered blend mask) -> ``features`` (mel
window of the request's audio) -> ``queue`` (waiting for the worker) -> ``inference`` (batch of one) ->
``composite`` -> ``encode``; ``total`` is arrival until the reply was built.

It reuses the pipeline's stage functions (``detect_faces``, ``crop_rectangles``, ``crop_face``,
``to_crop_coordinates``, ``blend_mask``) and the engine's compositor; it re-implements none of them. The
stores and engine here have the shapes the server expects (``StoreLike``, ``ManagedEngine``), so
``lipsync serve --original VIDEO`` serves a raw video under a package id with the same endpoints and codecs.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..audio.mel import mel_from_pcm_window
from ..errors import InputNotFoundError, LipsyncError, ProtocolError, UsageError
from ..faces.base import FaceBackend, FaceOptions
from ..media.audio import load_audio
from ..media.video import FrameReader
from ..models.backends import InferenceBackend
from ..pipeline.crop import CropOptions, crop_face, crop_rectangles, to_crop_coordinates
from ..pipeline.detect import DetectOptions, detect_faces
from ..pipeline.masks import MaskOptions, blend_mask
from ..protocol import limits
from ..protocol.messages import (
    AudioFormat,
    ErrorCode,
    FrameReply,
    FrameRequest,
    ImageFormat,
)
from .capacity import Capacity
from .compositor import composite_crop, composite_frame, encode_frame_image
from .features import FeatureComputer, request_mel_window
from .pacing import is_silent
from .store import IdRegistry

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
"""Timing names of an original-path frame, in the order they appear in ``FrameReply.timings``."""

_MEL_BINS = 80


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

    @property
    def n_frames(self) -> int:
        return self.info.n_frames

    def replay_window(self, frame_index: int) -> np.ndarray:
        """The 3200-sample float32 PCM window of ``frame_index`` cut from the raw audio (zero-padded)."""
        if self.pcm is None:
            raise ProtocolError(
                ErrorCode.BAD_AUDIO,
                f"video {self.info.id!r} was served without --audio, so "
                "replay requests have no audio; send pcm16 or mel audio",
            )
        size = limits.PCM_WINDOW_SAMPLES
        # Wav2Lip's mapping: the window of frame i starts at mel frame int(i * 80 / fps), 200 samples each.
        start = int(frame_index * 80 / self.info.fps) * 200
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
        """Open the video ``path`` under ``package_id``. Raises ``ProtocolError(bad_field)`` for a bad or
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
            pcm = load_audio(self.audio, limits.SAMPLE_RATE) if self.audio is not None else None
        except BaseException:
            reader.close()
            raise
        done = time.perf_counter()
        info = VideoSourceInfo(
            id=package_id,
            path=path,
            n_frames=len(reader),
            fps=fps,
            width=int(first.shape[1]),
            height=int(first.shape[0]),
            load_seconds={"open": opened - started, "audio": done - opened, "total": done - started},
            ram_bytes=0 if pcm is None else int(pcm.nbytes),
            audio_path=self.audio,
        )
        try:
            self._insert(package_id, VideoSource(info=info, reader=reader, pcm=pcm))
        except ProtocolError:
            reader.close()
            raise
        return info

    def infos(self) -> list[VideoSourceInfo]:
        """Every loaded video's info, in load order."""
        return [s.info for s in list(self._items.values())]


def _reader_fps(reader: FrameReader) -> float:
    from ..media.video import probe_video

    return float(probe_video(reader.path).fps)


def _us(seconds: float) -> int:
    return max(0, min(limits.MAX_U32, round(seconds * 1e6)))


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
        mel_from_pcm_window(np.zeros(limits.PCM_WINDOW_SAMPLES, np.float32))

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
        request: FrameRequest,
        *,
        skip_silence: bool = False,
        stream: object | None = None,
        stream_frame: int = 0,
        deadline: float | None = None,
    ) -> FrameReply:
        """Render the frame ``request`` asks for; every stage runs for this request, in a worker thread.

        Raises :class:`ProtocolError` (``unknown_package``, ``frame_out_of_range``, ``bad_audio``, and
        ``internal`` when no face is found on the frame).
        """
        arrived = time.perf_counter()
        self._validate(request)
        if (
            skip_silence
            and request.audio is AudioFormat.PCM16
            and is_silent(request.pcm_window(), self.options.silence_dbfs)
        ):
            return await self.original_frame(
                request.package_id,
                request.frame_index,
                request.image,
                request.jpeg_quality,
                request_id=request.request_id,
            )
        reply = await asyncio.to_thread(self.render_sync, request, arrived)
        self._observe(reply)
        return reply

    async def original_frame(
        self,
        package_id: str,
        frame_index: int,
        image_format: ImageFormat = ImageFormat.JPEG,
        jpeg_quality: int | None = None,
        *,
        request_id: int = 0,
    ) -> FrameReply:
        """Frame ``frame_index`` decoded from the video and encoded, no model (``reply.silence`` true)."""
        arrived = time.perf_counter()
        source = self.store.get(package_id)
        self._check_frame(source, frame_index)
        quality = jpeg_quality if jpeg_quality is not None else self.options.jpeg_quality
        reply = await asyncio.to_thread(
            self._silent_reply, source, frame_index, image_format, quality, request_id, arrived
        )
        self._observe(reply)
        return reply

    def render_sync(self, request: FrameRequest, arrived: float | None = None) -> FrameReply:
        """:meth:`process` in the calling thread (waits for the worker lock); ``arrived`` defaults to now."""
        arrived = time.perf_counter() if arrived is None else arrived
        source = self._validate(request)
        with self._lock:
            started = time.perf_counter()
            reply = self._render(request, source, arrived)
            self.model.capacity.observe(1, time.perf_counter() - started)
            return reply

    # --- checks ------------------------------------------------------------------------------------------

    def _validate(self, request: FrameRequest) -> VideoSource:
        source = self.store.get(request.package_id)
        self._check_frame(source, request.frame_index)
        expected = {AudioFormat.PCM16: limits.PCM_WINDOW_BYTES, AudioFormat.MEL: limits.MEL_WINDOW_BYTES}.get(
            request.audio, 0
        )
        if len(request.payload) != expected:
            raise ProtocolError(
                ErrorCode.BAD_AUDIO,
                f"{request.audio.wire_name} audio must be {expected} bytes, got {len(request.payload)}",
            )
        return source

    @staticmethod
    def _check_frame(source: VideoSource, frame_index: int) -> None:
        if not 0 <= frame_index < source.n_frames:
            raise ProtocolError(
                ErrorCode.FRAME_OUT_OF_RANGE,
                f"frame {frame_index} is out of range: video "
                f"{source.info.id!r} has frames 0..{source.n_frames - 1}",
            )

    def _observe(self, reply: FrameReply) -> None:
        if self.observer is not None:
            self.observer.observe_batch(1)
            for stage, micros in reply.timings.items():
                self.observer.observe_stage(stage, micros / 1e6)

    # --- the work (caller holds self._lock) ------------------------------------------------------------

    def _network_audio(self, request: FrameRequest, mel: np.ndarray) -> np.ndarray:
        """The network's audio input from this request's mel window (AVE: its own row, others zero)."""
        mode = self.features.mode
        if mode.name == "mel":
            return mel.reshape(mode.network_shape).astype(np.float32, copy=False)
        mel_request = FrameRequest.from_mel(
            np.ascontiguousarray(mel, dtype=np.float32), request_id=request.request_id,
            package_id=request.package_id, frame_index=request.frame_index,
        )
        return self.features.network_audio(mel_request, None, None, 0)  # type: ignore[arg-type]

    def _features(self, request: FrameRequest, source: VideoSource) -> np.ndarray:
        return request_mel_window(
            request, lambda: mel_from_pcm_window(source.replay_window(request.frame_index))
        )

    def _render(self, request: FrameRequest, source: VideoSource, arrived: float) -> FrameReply:
        timings: dict[str, int] = {}
        started = time.perf_counter()
        index = request.frame_index
        size = self.crop_options.size

        t0 = time.perf_counter()
        frame = source.reader.read(index)
        t1 = time.perf_counter()
        faces = detect_faces(self._face_backend(), frame, self.detect_options)
        if not faces:
            raise ProtocolError(
                ErrorCode.INTERNAL,
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
            if isinstance(exc, ProtocolError):
                raise
            raise ProtocolError(ErrorCode.BAD_AUDIO, str(exc)) from None
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
            decode=_us(t1 - t0),
            detect=_us(t2 - t1),
            crop=_us(t3 - t2),
            masks=_us(t4 - t3),
            features=_us(t5 - t4),
            queue=_us(started - arrived),
            inference=_us(t6 - t5),
            composite=_us(t7 - t6),
            encode=_us(t8 - t7),
            total=_us(t8 - arrived),
        )
        return FrameReply(
            request_id=request.request_id,
            frame_index=index,
            image=request.image,
            width=int(image.shape[1]),
            height=int(image.shape[0]),
            timings={stage: timings[stage] for stage in ORIGINAL_STAGES},
            rect=reply_rect,
            payload=payload,
        )

    def _silent_reply(
        self,
        source: VideoSource,
        index: int,
        image_format: ImageFormat,
        quality: int,
        request_id: int,
        arrived: float,
    ) -> FrameReply:
        with self._lock:
            t0 = time.perf_counter()
            frame = source.reader.read(index)
            t1 = time.perf_counter()
        if image_format.is_crop:
            return FrameReply(
                request_id=request_id,
                frame_index=index,
                image=image_format,
                width=0,
                height=0,
                timings={"decode": _us(t1 - t0), "encode": 0, "total": _us(t1 - arrived)},
                silence=True,
            )
        payload = encode_frame_image(frame, image_format, quality)
        t2 = time.perf_counter()
        return FrameReply(
            request_id=request_id,
            frame_index=index,
            image=image_format,
            width=int(frame.shape[1]),
            height=int(frame.shape[0]),
            timings={"decode": _us(t1 - t0), "encode": _us(t2 - t1), "total": _us(t2 - arrived)},
            silence=True,
            payload=payload,
        )
