"""Compose the build stages into one package: ``video.mp4`` -> ``video.sanders``.

Two streaming passes over the video keep memory flat however long it is: pass 1 decodes and finds faces,
their appearance signatures and the shot cuts (keeping only boxes, landmarks and signatures), then the
segment analysis picks the stretch of one face to keep, and tracking, smoothing and crop rectangles run on
those small arrays; pass 2 decodes again to cut crops, draw masks and encode the kept frames straight into
the package file.
"""

from __future__ import annotations

import hashlib
import queue
import resource
import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..audio.mel import wav2lip_mel
from ..errors import InputNotFoundError, NoAudioError, UsageError
from ..faces import create_backend
from ..faces.base import FaceObservation, FaceOptions
from ..faces.signature import SIGNATURE_SIZE, face_signature
from ..media.audio import load_audio
from ..media.images import encode_image
from ..media.video import VideoInfo, iter_frames, probe_video
from ..models.audio_features import AudioEncoderChoice
from ..models.families import get_family
from ..models.family import ModelFamily
from ..package.inspect import footage_summary
from ..package.manifest import (
    CropMeta,
    FacesMeta,
    FootageMeta,
    FramesMeta,
    Manifest,
    ModelMeta,
    SegmentMeta,
    SourceFile,
    ToolMeta,
    VideoMeta,
    longest_run,
)
from ..package.spec import AUDIO_SAMPLE_RATE, FILE_SUFFIX, FRAME_CODECS, MAX_SEGMENTS, MEL_WINDOW
from ..package.writer import PackageWriter, check_output_path
from ..progress import NullProgress, Progress
from .crop import CropOptions, crop_face, crop_jitter, crop_rectangles, to_crop_coordinates
from .cuts import CutDetector
from .detect import DetectOptions, detect_in_copy, detection_copy
from .features import audio_features, audio_meta
from .masks import MaskOptions, blend_mask, model_input_mask
from .segments import (
    Segment,
    SegmentOptions,
    SegmentPolicy,
    choose_segment,
    find_segments,
    parse_range,
    resolve_range,
)
from .smooth import SmoothOptions, smooth_series
from .track import MissingPolicy, TrackOptions, fill_track

STAGES = ("decode", "detect", "segments", "track", "smooth", "crop", "masks", "encode", "audio", "write")


@dataclass(frozen=True, kw_only=True)
class BuildOptions:
    """Everything that shapes a package. All of it is recorded in the manifest's ``build_options``.

    ``family`` (a registered model family) fixes the box rule, the crop size and the audio feature;
    ``crop_size`` ``None`` takes the family's (Wav2Lip 96, SyncTalk_2D-328 328, the 160 families 168); only
    Wav2Lip accepts another size. ``audio_mode`` ``None`` takes the family's default (SyncTalk_2D: ``ave``).
    """

    family: str = "wav2lip"
    audio_mode: str | None = None
    face_backend: str = "mediapipe"
    weights_dir: Path | None = None
    max_faces: int = 4
    min_confidence: float = 0.5
    crop_size: int | None = None
    padding: float = 0.1
    smooth_window: int = 5
    missing_face: MissingPolicy = "interpolate"
    feather: float = 0.06
    frame_codec: str = "jpeg"
    frame_quality: int = 95
    detect_max_side: int = 640
    start: str | None = None  # --start: seconds ("2.5") or a frame ("50 f"); None = the first frame
    end: str | None = None  # --end: the same; None = the last frame
    segment: SegmentPolicy = "longest"
    max_gap: float = 0.5  # seconds
    min_segment: float = 2.0  # seconds

    def __post_init__(self) -> None:
        check_frame_storage(self.frame_codec, self.frame_quality)
        parse_range(self.start, self.end)
        self.segment_options()
        # Construct the stage options now so a bad value fails before any work.
        family = self.model_family()
        family.audio_mode(self.audio_mode)
        if self.crop_size is not None and family.inner_margin and self.crop_size != family.crop_size:
            raise UsageError(
                f"the {family.name} family's network takes {family.crop_size}-pixel crops; "
                f"--crop-size {self.crop_size} cannot be used with it (leave --crop-size out)"
            )
        self.stage_options()
        DetectOptions(max_side=self.detect_max_side)

    def model_family(self) -> ModelFamily:
        return get_family(self.family)

    @property
    def effective_crop_size(self) -> int:
        return self.crop_size if self.crop_size is not None else self.model_family().crop_size

    def stage_options(self) -> tuple[CropOptions, SmoothOptions, TrackOptions, MaskOptions]:
        family = self.model_family()
        return (
            CropOptions(
                size=self.effective_crop_size,
                padding=self.padding,
                box_rule=family.box_rule,
                interpolation="cubic" if family.box_rule == "synctalk2d" else "area",
            ),
            SmoothOptions(window=self.smooth_window),
            TrackOptions(missing=self.missing_face),
            MaskOptions(feather=self.feather),
        )

    def segment_options(self) -> SegmentOptions:
        return SegmentOptions(
            max_gap_seconds=self.max_gap, min_segment_seconds=self.min_segment, policy=self.segment
        )

    def recorded(self) -> dict[str, Any]:
        """The options as JSON-ready values, minus machine-specific paths."""
        values = asdict(self)
        values["weights_dir"] = None if self.weights_dir is None else "set"
        values["crop_size"] = self.effective_crop_size
        values["audio_mode"] = self.model_family().audio_mode(self.audio_mode).name
        return values


def check_frame_storage(codec: str, quality: int) -> None:
    """Raise :class:`UsageError` unless ``codec`` is a stored-frame codec and ``quality`` suits it (JPEG
    quality 1..100, PNG compression level 0..9). Builds and imports store frames the same way."""
    if codec not in FRAME_CODECS:
        raise UsageError(f"frame codec is {codec!r}; expected one of {', '.join(FRAME_CODECS)}")
    if codec == "jpeg" and not 1 <= quality <= 100:
        raise UsageError(f"JPEG quality is {quality}; expected 1..100")
    if codec == "png" and not 0 <= quality <= 9:
        raise UsageError(f"PNG compression level is {quality}; expected 0..9")


@dataclass
class BuildResult:
    """What a build produced and what it cost."""

    video: Path
    output: Path
    manifest: Manifest
    stage_seconds: dict[str, float] = field(default_factory=dict)
    total_seconds: float = 0.0
    peak_rss_mb: float = 0.0

    @property
    def frames_per_second(self) -> float:
        """Source frames analysed per second of build time (all of them were decoded and searched for
        faces; only the kept segment's were cropped and stored)."""
        footage = self.manifest.footage
        frames = footage.range_end - footage.range_start if footage else self.manifest.video.frame_count
        return frames / self.total_seconds if self.total_seconds else 0.0

    def summary(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "video": str(self.video),
            "output": str(self.output),
            "ok": True,
            "frames": m.video.frame_count,
            "fps": m.video.fps,
            "width": m.video.width,
            "height": m.video.height,
            **footage_summary(m),
            "face_backend": m.faces.backend,
            "family": m.model.family if m.model is not None else "wav2lip",
            "audio_mode": m.model.audio_mode if m.model is not None else "mel",
            "audio_features": m.model.features if m.model is not None else "none",
            "crop_size": m.crop.size,
            "audio_seconds": round(m.audio.samples / m.audio.sample_rate, 3),
            "package_bytes": self.output.stat().st_size,
            "stage_seconds": {k: round(v, 4) for k, v in self.stage_seconds.items()},
            "total_seconds": round(self.total_seconds, 4),
            "build_frames_per_second": round(self.frames_per_second, 2),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "warnings": m.warnings(),
        }


class _Timer:
    """Busy seconds per stage. Decoding and audio run in background threads, overlapping the other
    stages, so the stage seconds add up to more than the wall-clock total."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] += seconds

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - start)

    def timed_frames(self, path: Path) -> Generator[np.ndarray, None, None]:
        """``iter_frames`` decoded a few frames ahead in a thread, its time charged to the decode stage."""

        def produce() -> Iterator[np.ndarray]:
            frames = iter_frames(path)
            while True:
                start = time.perf_counter()
                frame = next(frames, None)
                self.add("decode", time.perf_counter() - start)
                if frame is None:
                    return
                yield frame

        return prefetch(produce(), depth=8)


_DONE = object()


def prefetch(items: Iterator[np.ndarray], depth: int) -> Generator[np.ndarray, None, None]:
    """Run ``items`` in a daemon thread, at most ``depth`` ahead of the consumer; re-raise its errors.

    Decoding (PyAV/FFmpeg) and the consumer's native calls (MediaPipe, OpenCV) release the GIL, so on two
    cores the decode of frame i+1 overlaps the work on frame i.
    """
    buffer: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def run() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        buffer.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put(_DONE)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            buffer.put(exc)

    thread = threading.Thread(target=run, name="lipsync-decode", daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join(timeout=5)


class _Background:
    """Run one function in a thread; ``result()`` waits and re-raises its error."""

    def __init__(self, fn: Callable[[], np.ndarray]) -> None:
        self._value: np.ndarray | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), name="lipsync-audio", daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], np.ndarray]) -> None:
        try:
            self._value = fn()
        except BaseException as exc:
            self._error = exc

    def result(self) -> np.ndarray:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


def default_output(video: Path) -> Path:
    return video.with_suffix(FILE_SUFFIX)


def file_sha256(path: Path) -> SourceFile:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return SourceFile(name=path.name, sha256=h.hexdigest(), size_bytes=path.stat().st_size)


def build_package(
    video: str | Path,
    output: str | Path | None = None,
    *,
    audio: str | Path | None = None,
    options: BuildOptions | None = None,
    checkpoint: str | Path | None = None,
    audio_encoder: AudioEncoderChoice | None = None,
    force: bool = False,
    debug: bool = False,
    progress: Progress | None = None,
) -> BuildResult:
    """Build one sanders package from ``video`` (and ``audio``, else the video's own audio track).

    ``checkpoint`` is a model checkpoint file to embed (a per-avatar model or fine-tune); servers use it
    unless told otherwise. It is stored as given: check it first (the CLI loads it against the family's
    architecture). ``audio_encoder``: for families that take AVE features, the encoder whose per-frame rows
    are stored in ``audio/features`` (its checkpoint is embedded; random weights record their seed); without
    one the package keeps only the mel and servers compute the rows.

    Raises a :class:`~lipsync_tools.errors.LipsyncError` subclass for every bad input (missing file, not a
    video, corrupt video, no frames, no audio, no face, existing output, unwritable folder); nothing is
    ever left at ``output`` unless the build succeeded.
    """
    options = options or BuildOptions()
    progress = progress or NullProgress()
    crop_opts, smooth_opts, track_opts, mask_opts = options.stage_options()
    video = Path(video)
    output = Path(output) if output is not None else default_output(video)
    audio_path = Path(audio) if audio is not None else None
    started = time.perf_counter()
    timer = _Timer()

    # Everything that can be refused cheaply is refused before the slow passes.
    check_output_path(output, force)
    info = probe_video(video)
    family = options.model_family()
    audio_mode = family.audio_mode(options.audio_mode)
    if audio_encoder is not None and audio_mode.name != "ave":
        raise UsageError(
            f"--audio-encoder gives AVE features, but the {family.name} family with audio mode "
            f"{audio_mode.name!r} does not take them; leave --audio-encoder out"
        )
    encoder = audio_encoder.load() if audio_encoder is not None else None  # a bad encoder fails now
    checkpoint_path = Path(checkpoint) if checkpoint is not None else None
    if checkpoint_path is not None and not checkpoint_path.is_file():
        raise InputNotFoundError(f"checkpoint {checkpoint_path} does not exist; check the --checkpoint path")
    if audio_path is not None and not audio_path.is_file():
        raise InputNotFoundError(f"audio file {audio_path} does not exist; check the --audio path")
    if audio_path is None and not info.has_audio:
        raise NoAudioError(
            f"{video} has no audio track; pass --audio FILE with the speech to use (any rate, any channels)"
        )

    def load_audio_and_warm_up() -> np.ndarray:
        start = time.perf_counter()
        pcm = load_audio(audio_path or video, AUDIO_SAMPLE_RATE)
        wav2lip_mel(np.zeros(4000, np.float32))  # first call imports librosa: do it while faces are found
        timer.add("audio", time.perf_counter() - start)
        return pcm

    audio_job = _Background(load_audio_and_warm_up)
    detect_opts = DetectOptions(max_side=options.detect_max_side)
    segment_opts = options.segment_options()
    first, last = resolve_range(*parse_range(options.start, options.end), info.fps)
    if info.frame_count:  # refuse a range outside the video before the slow pass; checked again after it
        _check_range(first, last, info.frame_count, info.fps, options)

    per_frame: list[list[FaceObservation]] = []
    signatures: list[np.ndarray] = []
    cut_detector = CutDetector(info.fps)
    source_frames = 0  # decoded so far; all of them unless --end stopped the decode early
    expected = (last or info.frame_count or 0) - first
    decoded = timer.timed_frames(video)  # not started until iterated

    backend = create_backend(
        options.face_backend,
        FaceOptions(
            max_faces=options.max_faces,
            min_confidence=options.min_confidence,
            video_mode=True,
            weights_dir=options.weights_dir,
            debug=debug,
        ),
    )
    try:
        progress.start("Finding faces", expected if expected > 0 else None)
        for index, frame in enumerate(decoded):
            source_frames = index + 1
            if index < first:
                continue  # before --start: decoded (the only way to reach the range exactly), not analysed
            if last is not None and index >= last:
                source_frames = max(index + 1, info.frame_count)  # the rest is not decoded
                break
            with timer("detect"):
                copy, scale = detection_copy(frame, detect_opts)
                faces = detect_in_copy(backend, copy, scale)
            with timer("segments"):  # on the detector's copy: one resize serves all three
                cut_detector.add(copy)
                signatures.append(
                    np.stack([face_signature(copy, face.box * np.float32(scale)) for face in faces])
                    if faces
                    else np.zeros((0, SIGNATURE_SIZE), np.uint8)
                )
            per_frame.append(faces)
            progress.advance()
        progress.finish()
    finally:
        decoded.close()  # stops the decode thread
        backend.close()
    _check_range(first, last, source_frames, info.fps, options)
    last = source_frames if last is None else last

    with timer("segments"):
        segments = find_segments(
            per_frame,
            signatures,
            cut_detector.cuts(),
            info.fps,
            segment_opts,
            range_start=first,
            starts_video=first == 0,
            ends_video=last == source_frames,
            frame_size=(info.width, info.height),
        )
        del signatures
        kept_index = choose_segment(segments, segment_opts, info.fps, first, last)
    kept = segments[kept_index]
    n_frames = kept.frames
    with timer("track"):
        track = fill_track(per_frame[kept.start - first : kept.end - first], kept.faces, kept.start, kept.end,
                           track_opts)
    del per_frame
    with timer("smooth"):
        landmarks = smooth_series(track.landmarks, smooth_opts)
    with timer("crop"):
        rects = crop_rectangles(landmarks, (info.width, info.height), crop_opts, backend.scheme)
    pcm = audio_job.result()
    with timer("audio"):
        # the audio of the kept frames: the same stretch of time as the video (an --audio file included)
        pcm = pcm[_sample_at(kept.start, info) : _sample_at(kept.end, info)]
        features = audio_features(pcm, info.fps, n_frames, AUDIO_SAMPLE_RATE, MEL_WINDOW)
        model_features = None
        if encoder is not None:
            from ..models.audio_features import package_ave_features

            model_features = package_ave_features(encoder, features.mel, features.mel_index)

    footage = _footage(
        source_frames, first, last, segments, kept_index, track.filled, rects, segment_opts
    )
    scheme = backend.scheme
    size = crop_opts.size
    # created by the `with` itself: nothing may run between creating the temporary file and the block that
    # deletes it on failure (issue 11)
    write_started = time.perf_counter()
    with PackageWriter(
        output, n_frames=n_frames, crop_size=size, num_points=scheme.num_points, force=force
    ) as writer:
        timer.add("write", time.perf_counter() - write_started)
        progress.start("Cropping and writing", n_frames)
        for index, frame in enumerate(timer.timed_frames(video)):
            if index < kept.start:
                continue
            if index >= kept.end:
                break  # a second decode must not see more frames than the first
            i = index - kept.start
            rect = rects[i]
            with timer("crop"):
                crop = crop_face(frame, rect, size, crop_opts.interpolation)
            with timer("masks"):
                mask = blend_mask(to_crop_coordinates(landmarks[i], rect, size), scheme, size, mask_opts)
            with timer("encode"):
                encoded = _encode_frame(frame, options)
            with timer("write"):
                writer.write_frame(i, encoded, crop, mask)
            progress.advance()
        progress.finish()
        with timer("write"):
            writer.write_array("rects", rects)
            writer.write_array("masks/input", model_input_mask(size) if not family.inner_margin
                               else family.input_mask())
            writer.write_array("landmarks", landmarks)
            writer.write_array("boxes", track.boxes)
            writer.write_array("filled", track.filled.astype(np.uint8))
            writer.write_array("audio/pcm", features.pcm)
            writer.write_array("audio/mel", features.mel)
            writer.write_array("audio/mel_index", features.mel_index)
            if model_features is not None:
                writer.write_array("audio/features", model_features)
            if checkpoint_path is not None:
                writer.write_checkpoint(checkpoint_path.read_bytes())
            encoder_bytes = audio_encoder.checkpoint_bytes() if audio_encoder is not None else None
            if encoder_bytes is not None:
                writer.write_checkpoint(encoder_bytes, "model/audio_encoder")
            manifest = writer.commit(
                _manifest(
                    video,
                    audio_path,
                    info,
                    n_frames,
                    options,
                    scheme.name,
                    scheme.num_points,
                    int(track.filled.sum()),
                    features,
                    checkpoint_path,
                    model_meta(family.name, audio_mode.name, audio_encoder, model_features),
                    footage,
                )
            )
    total = time.perf_counter() - started
    return BuildResult(
        video=video,
        output=output,
        manifest=manifest,
        stage_seconds=timer.seconds,
        total_seconds=total,
        peak_rss_mb=_peak_rss_mb(),
    )


def _encode_frame(frame: np.ndarray, options: BuildOptions) -> bytes:
    if options.frame_codec == "png":
        return encode_image(frame, "png", png_compression=options.frame_quality)
    return encode_image(frame, "jpeg", options.frame_quality)


def _manifest(
    video: Path,
    audio: Path | None,
    info: VideoInfo,
    n_frames: int,
    options: BuildOptions,
    scheme: str,
    num_points: int,
    filled: int,
    features: Any,
    checkpoint: Path | None,
    model: ModelMeta,
    footage: FootageMeta,
) -> Manifest:
    return Manifest(
        tool=ToolMeta(name="lipsync-tools", version=__version__),
        source_video=file_sha256(video),
        source_audio=file_sha256(audio) if audio is not None else None,
        video=VideoMeta(
            fps=float(info.fps),
            fps_num=info.frame_rate.numerator,
            fps_den=info.frame_rate.denominator,
            frame_count=n_frames,
            width=info.width,
            height=info.height,
            rotation=info.rotation,
        ),
        frames=FramesMeta(codec=options.frame_codec, quality=options.frame_quality),
        audio=audio_meta(features),
        faces=FacesMeta(
            backend=options.face_backend,
            scheme=scheme,
            num_points=num_points,
            filled_frames=filled,
            missing_policy=options.missing_face,
        ),
        crop=CropMeta(
            size=options.effective_crop_size,
            padding=options.padding,
            smooth_window=options.smooth_window,
            box_rule=options.model_family().box_rule,
        ),
        model=model,
        footage=footage,
        build_options={
            **options.recorded(),
            "checkpoint": checkpoint.name if checkpoint is not None else None,
        },
        datasets={},
    )


def _check_range(first: int, last: int | None, frames: int, fps: float, options: BuildOptions) -> None:
    """Raise :class:`UsageError` unless frames ``first..last-1`` lie in a video of ``frames`` frames."""
    length = f"the video has {frames} frames ({frames / fps:.2f} s)"
    if first >= frames:
        raise UsageError(f"--start {options.start} is frame {first}, but {length}; give a start inside it")
    if last is not None and last > frames:
        raise UsageError(
            f"--end {options.end} is frame {last}, past the end of the video: {length}; give an end inside "
            "it or leave --end out"
        )


def _sample_at(frame: int, info: VideoInfo) -> int:
    """The first 16 kHz audio sample of source frame ``frame`` (exact for rational frame rates)."""
    return frame * AUDIO_SAMPLE_RATE * info.frame_rate.denominator // info.frame_rate.numerator


def _footage(
    source_frames: int,
    first: int,
    last: int,
    segments: list[Segment],
    kept_index: int,
    filled: np.ndarray,
    rects: np.ndarray,
    options: SegmentOptions,
) -> FootageMeta:
    """The manifest's ``footage`` section. A video with more than MAX_SEGMENTS segments lists the longest."""
    listed = list(range(len(segments)))
    if len(listed) > MAX_SEGMENTS:
        longest = sorted(listed, key=lambda i: -segments[i].frames)[: MAX_SEGMENTS - 1]
        listed = sorted({*longest, kept_index})
    kept = segments[kept_index]
    return FootageMeta(
        source_frames=source_frames,
        range_start=first,
        range_end=last,
        source_start=kept.start,
        source_end=kept.end,
        selection=options.policy,
        max_gap_seconds=options.max_gap_seconds,
        min_segment_seconds=options.min_segment_seconds,
        segments_found=len(segments),
        segments=[
            SegmentMeta(
                start=segments[i].start,
                end=segments[i].end,
                start_reason=segments[i].start_reason,
                end_reason=segments[i].end_reason,
                detected_frames=segments[i].detected_frames,
            )
            for i in listed
        ],
        kept_segment=listed.index(kept_index),
        detected_frames=int((~filled).sum()),
        longest_fill=longest_run(filled),
        jitter_rms_px=crop_jitter(rects),
    )


def model_meta(
    family: str,
    audio_mode: str,
    encoder: AudioEncoderChoice | None,
    features: np.ndarray | None,
    *,
    imported: bool = False,
) -> ModelMeta:
    """The manifest's ``model`` section for a package of ``family`` (shared with the importers)."""
    source = "none" if encoder is None else "random" if encoder.is_random else "embedded"
    row = list(get_family(family).audio_mode(audio_mode).row_shape) if features is not None else []
    return ModelMeta(
        family=family,
        audio_mode=audio_mode,
        audio_encoder=source,
        audio_encoder_seed=encoder.random_seed if encoder is not None else None,
        features="none" if features is None else ("imported" if imported else "computed"),
        feature_row_shape=row,
    )


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
