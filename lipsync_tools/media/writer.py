"""Writing MP4 files (H.264 + AAC) from BGR frames and float PCM, atomically."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from typing import cast

import av
import av.audio.stream
import av.container
import av.error
import cv2
import numpy as np

from lipsync_tools._atomic import atomic_replace
from lipsync_tools.errors import OutputNotWritableError, UsageError

__all__ = ["pick_video_codec", "write_video"]


def pick_video_codec() -> str:
    """``"libx264"`` when PyAV's bundled FFmpeg has it (it does in the PyPI wheels), else ``"mpeg4"``."""
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def _as_fraction(fps: Fraction | float) -> Fraction:
    rate = Fraction(fps).limit_denominator(1001 * 1000) if not isinstance(fps, Fraction) else fps
    if rate <= 0:
        raise UsageError(f"fps must be positive, got {fps}.")
    return rate


def write_video(
    path: str | os.PathLike[str],
    frames: Iterable[np.ndarray],
    fps: Fraction | float,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
    *,
    crf: int = 20,
    audio_bitrate: int = 128_000,
) -> int:
    """Write ``frames`` (``(H, W, 3)`` uint8 BGR, all the same size) and optional mono audio to an MP4.

    Video is H.264 (libx264, yuv420p, ``crf`` 0..51: lower is better quality and bigger; 20 looks
    transparent for talking heads) or MPEG-4 Part 2 when libx264 is missing. ``audio`` is float32 mono in
    [-1, 1] at ``sample_rate`` Hz, encoded as AAC and interleaved with the video; it is written in full
    even when it runs longer than the frames. Odd frame sizes are padded by one edge pixel on the right /
    bottom because yuv420p needs even sizes. The file gets the ``faststart`` layout (index first), so it
    plays while downloading.

    The MP4 is written to a temporary file in the same folder and renamed over ``path`` at the end: an
    interrupted write never leaves a partial file at ``path``. Returns the number of frames written.

    Raises :class:`UsageError` (no frames, frames of different sizes or not uint8 BGR, bad fps / crf /
    audio) and :class:`OutputNotWritableError` (the folder does not exist or cannot be written).
    """
    target = Path(path)
    rate = _as_fraction(fps)
    if not 0 <= crf <= 51:
        raise UsageError(f"crf must be 0..51 (lower is better quality), got {crf}.")
    pcm = _check_audio(audio, sample_rate)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise OutputNotWritableError(
            f"{folder} does not exist; create the folder first or choose another -o."
        )
    try:
        handle, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=folder)
    except OSError as exc:
        raise OutputNotWritableError(
            f"cannot write in {folder} ({exc.strerror}); choose a writable folder for the output."
        ) from exc
    os.close(handle)
    temp = Path(temp_name)
    try:
        written = _write(temp, frames, rate, pcm, sample_rate, crf, audio_bitrate)
        # mkstemp creates the file 0600; give the finished video the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)
        try:
            atomic_replace(temp, target)  # fsync the video, rename, fsync the folder
        except OSError as exc:  # a full disk may first show at the fsync
            raise OutputNotWritableError(
                f"cannot write {target} ({exc.strerror or exc}); free some space or choose another -o."
            ) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    return written


def _check_audio(audio: np.ndarray | None, sample_rate: int) -> np.ndarray | None:
    if audio is None:
        return None
    if sample_rate <= 0:
        raise UsageError(f"sample_rate must be positive, got {sample_rate}.")
    pcm = np.asarray(audio)
    if pcm.ndim != 1 or not np.issubdtype(pcm.dtype, np.floating):
        raise UsageError(
            f"audio must be a 1-D float array of mono samples, got shape {pcm.shape} dtype {pcm.dtype}."
        )
    return np.ascontiguousarray(np.clip(pcm, -1.0, 1.0), dtype=np.float32)


def _write(
    temp: Path,
    frames: Iterable[np.ndarray],
    rate: Fraction,
    pcm: np.ndarray | None,
    sample_rate: int,
    crf: int,
    audio_bitrate: int,
) -> int:
    codec = pick_video_codec()
    container = av.open(str(temp), mode="w", format="mp4", options={"movflags": "+faststart"})
    try:
        video: av.VideoStream | None = None
        audio_stream: av.audio.stream.AudioStream | None = None
        audio_written = 0
        count = 0
        size: tuple[int, int] | None = None
        for image in frames:
            image = np.asarray(image)
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise UsageError(
                    f"frame {count} has shape {image.shape} dtype {image.dtype}; "
                    "expected (H, W, 3) uint8 BGR."
                )
            if size is None:
                size = (image.shape[0], image.shape[1])
                video = _add_video_stream(container, codec, rate, size, crf)
                if pcm is not None:
                    audio_stream = container.add_stream("aac", rate=sample_rate, layout="mono")
                    audio_stream.bit_rate = audio_bitrate
            elif (image.shape[0], image.shape[1]) != size:
                raise UsageError(
                    f"frame {count} is {image.shape[1]}x{image.shape[0]} but frame 0 was "
                    f"{size[1]}x{size[0]}; every frame of a video must have the same size."
                )
            assert video is not None  # set with size above
            if image.shape[0] % 2 or image.shape[1] % 2:
                image = cv2.copyMakeBorder(
                    image, 0, image.shape[0] % 2, 0, image.shape[1] % 2, cv2.BORDER_REPLICATE
                )
            # OpenCV's BGR -> I420 (BT.601, limited range, as the stream is tagged) is exact to +-1 level;
            # libswscale's default path shifts colours by a few levels.
            yuv: np.ndarray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_BGR2YUV_I420).astype(
                np.uint8, copy=False
            )
            frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            frame.pts = count
            frame.time_base = 1 / rate
            container.mux(video.encode(frame))
            count += 1
            if audio_stream is not None and pcm is not None:
                # Keep audio interleaved with video: write the audio up to the end of this frame.
                until = min(len(pcm), int(count * sample_rate / rate))
                audio_written = _encode_audio(container, audio_stream, pcm, audio_written, until, sample_rate)
        if video is None:
            raise UsageError("no frames to write; a video needs at least one frame.")
        container.mux(video.encode(None))
        if audio_stream is not None and pcm is not None:
            _encode_audio(container, audio_stream, pcm, audio_written, len(pcm), sample_rate)
            container.mux(audio_stream.encode(None))
    finally:
        container.close()
    return count


def _add_video_stream(
    container: av.container.OutputContainer, codec: str, rate: Fraction, size: tuple[int, int], crf: int
) -> av.VideoStream:
    video = cast(av.VideoStream, container.add_stream(codec, rate=rate))
    # yuv420p (the pixel format every player decodes) needs even sizes; frames are padded to match.
    video.height = size[0] + size[0] % 2
    video.width = size[1] + size[1] % 2
    video.pix_fmt = "yuv420p"
    # Tag the colours as BT.601 limited range (SMPTE 170M), which is what the frames are converted with;
    # untagged HD video is shown with BT.709 by many players, which would shift skin tones.
    video.codec_context.colorspace = 6
    video.codec_context.color_primaries = 6
    video.codec_context.color_trc = 6
    video.codec_context.color_range = 1
    if codec == "libx264":
        video.options = {"crf": str(crf), "preset": "veryfast"}
    else:
        video.bit_rate = 4_000_000
    video.thread_type = "AUTO"
    return video


def _encode_audio(
    container: av.container.OutputContainer,
    stream: av.audio.stream.AudioStream,
    pcm: np.ndarray,
    start: int,
    stop: int,
    sample_rate: int,
) -> int:
    if stop <= start:
        return start
    frame = av.AudioFrame.from_ndarray(pcm[start:stop].reshape(1, -1), format="flt", layout="mono")
    frame.sample_rate = sample_rate
    frame.pts = start
    frame.time_base = Fraction(1, sample_rate)
    # PyAV re-chunks arbitrary-length frames into the AAC encoder's 1024-sample frames.
    container.mux(stream.encode(frame))
    return stop
