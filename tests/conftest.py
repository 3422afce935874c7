"""Shared fixtures: real test media, made once per test session by :mod:`tests.samples`.

Each media fixture returns the ``Path`` of a file in a session-wide temporary folder. Fixtures that need
speech depend on ``espeak``: without espeak-ng a local run skips those tests with the reason, while CI
(``CI=true``, where ``make install`` installs espeak-ng) fails them, so a broken CI image cannot silently
skip half the suite.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests import samples

# Hypothesis profiles of the fuzz properties (tests/protocol/test_fuzz.py, tests/server/test_fuzz_http.py).
# "fuzz" keeps the default run fast (~100 examples a property); `pytest --fuzz-long` loads "fuzz-long",
# whose examples add up to more than 100,000 cases over the two files (each file prints its count). Neither
# is derandomized: a failure prints its seed and a @reproduce_failure blob, and the example database
# (.hypothesis/) replays it first on the next run. No deadline: the machines are shared and slow.
FUZZ_EXAMPLES = 100
FUZZ_LONG_EXAMPLES = 3000
settings.register_profile(
    "fuzz", max_examples=FUZZ_EXAMPLES, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "fuzz-long", max_examples=FUZZ_LONG_EXAMPLES, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fuzz-long", action="store_true", default=False,
        help=f"run the Hypothesis fuzz properties with {FUZZ_LONG_EXAMPLES} examples each instead of "
        f"{FUZZ_EXAMPLES} (over 100,000 cases in all; minutes)",
    )


def pytest_configure(config: pytest.Config) -> None:
    settings.load_profile("fuzz-long" if config.getoption("--fuzz-long") else "fuzz")


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-wide folder holding the generated media."""
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def espeak() -> str:
    """The espeak-ng executable; skips (locally) or fails (in CI) when it is missing."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        reason = "espeak-ng is not installed (apt-get install espeak-ng; `make install` does it)"
        if _in_ci():
            pytest.fail(f"{reason}; CI must have it")
        pytest.skip(reason)
    return exe


@pytest.fixture(scope="session")
def astronaut_mp4(media_dir: Path) -> Path:
    """50 frames, 25 fps, 320x240 H.264 (keyframe every 12), the astronaut face drifting; 16 kHz mono tone."""
    return samples.astronaut_video(media_dir / "astronaut.mp4")


@pytest.fixture(scope="session")
def talking_head_mp4(media_dir: Path, espeak: str) -> Path:
    """The carphone talking head (176x144, 120 frames, 29.97 fps) with espeak-ng speech (AAC 16 kHz mono)."""
    return samples.talking_head_video(media_dir / "talking_head.mp4")


@pytest.fixture(scope="session")
def speech_wav(media_dir: Path, espeak: str) -> Path:
    """espeak-ng speech as a WAV (22.05 kHz mono s16): an audio file, not a video."""
    return samples.speech_wav(media_dir / "speech.wav")


@pytest.fixture(scope="session")
def tone_wav(media_dir: Path) -> Path:
    """One second of a 440 Hz tone as a 16 kHz mono WAV (no espeak needed)."""
    return samples.tone_wav(media_dir / "tone.wav")


@pytest.fixture(scope="session")
def black_mp4(media_dir: Path) -> Path:
    """25 black frames (320x240, 25 fps) with a tone track: no face anywhere."""
    return samples.black_video(media_dir / "black.mp4")


@pytest.fixture(scope="session")
def silent_mp4(media_dir: Path) -> Path:
    """25 astronaut frames with no audio track."""
    return samples.video_without_audio(media_dir / "no_audio.mp4")


@pytest.fixture(scope="session")
def stereo_44k_mp4(media_dir: Path) -> Path:
    """50 astronaut frames (2 s) with 44.1 kHz stereo AAC audio."""
    return samples.stereo_44k_video(media_dir / "stereo_44k.mp4")


@pytest.fixture(scope="session")
def late_face_mp4(media_dir: Path) -> Path:
    """50 astronaut frames at 25 fps whose first 25 (one second) show no face."""
    return samples.late_face_video(media_dir / "late_face.mp4")


@pytest.fixture(scope="session")
def colour_mp4(media_dir: Path) -> Path:
    """10 frames of :func:`tests.samples.colour_bars` (blue | green | red, white top-left block)."""
    return samples.colour_video(media_dir / "colour.mp4")


@pytest.fixture(scope="session")
def rotated_mp4(media_dir: Path) -> Path:
    """Colour bars stored 320x240 with a display matrix for a 90° counter-clockwise turn (shown 240x320)."""
    return samples.rotated_video(media_dir / "rotated.mp4", rotation=90)


@pytest.fixture(scope="session")
def truncated_mp4(media_dir: Path, astronaut_mp4: Path) -> Path:
    """The first half of ``astronaut_mp4``'s bytes: the header lists 50 frames, about half remain."""
    return samples.truncated_copy(astronaut_mp4, media_dir / "truncated.mp4", 0.5)


@pytest.fixture(scope="session")
def empty_avi(media_dir: Path) -> Path:
    """An AVI with a video stream and zero frames."""
    return samples.empty_video(media_dir / "empty.avi")


@pytest.fixture(scope="session")
def text_mp4(media_dir: Path) -> Path:
    """A text file named ``.mp4``: not a video."""
    return samples.text_file(media_dir / "not_a_video.mp4")


@pytest.fixture(scope="session")
def head_package(talking_head_mp4: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A package built from the carphone talking head with speech (120 frames, 176x144, 96-px crops)."""
    from lipsync_tools.pipeline.build import build_package

    out = tmp_path_factory.mktemp("package") / "head.sanders"
    build_package(talking_head_mp4, out)
    return out
