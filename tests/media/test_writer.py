"""Writing MP4s: frames and audio survive a round trip, the write is atomic, bad input is refused."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from lipsync_tools.errors import OutputNotWritableError, UsageError
from lipsync_tools.media import iter_frames, load_audio, probe_video, write_video
from tests import samples


def test_round_trip_frames_and_audio(tmp_path: Path) -> None:
    frames = list(samples.astronaut_frames(30, (160, 120)))
    audio = samples.tone(1.2, 16000)[0]
    out = tmp_path / "out.mp4"
    assert write_video(out, frames, Fraction(25), audio, 16000) == 30
    info = probe_video(out)
    assert (info.width, info.height, info.frame_count, info.fps) == (160, 120, 30, 25.0)
    assert info.has_audio and info.audio_sample_rate == 16000
    decoded = list(iter_frames(out))
    assert len(decoded) == 30
    for original, back in zip(frames, decoded, strict=True):
        assert np.abs(original.astype(int) - back.astype(int)).mean() < 4
    pcm = load_audio(out)
    assert pcm.size / 16000 == pytest.approx(1.2, abs=0.07)
    corr = np.corrcoef(pcm[1000:16000], audio[1000:16000])[0, 1]
    assert corr > 0.9
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]  # no temp file left behind


def test_odd_size_and_float_fps_without_audio(tmp_path: Path) -> None:
    frames = [np.full((61, 81, 3), 128, np.uint8)] * 5
    out = write_video(tmp_path / "odd.mp4", frames, 29.97)
    assert out == 5
    info = probe_video(tmp_path / "odd.mp4")
    assert (info.width, info.height) == (82, 62) and not info.has_audio
    assert info.fps == pytest.approx(29.97)


def test_refuses_bad_input_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "bad.mp4"
    with pytest.raises(UsageError, match="no frames"):
        write_video(out, [], 25)
    mixed = [np.zeros((64, 64, 3), np.uint8), np.zeros((32, 32, 3), np.uint8)]
    with pytest.raises(UsageError, match="same size"):
        write_video(out, mixed, 25)
    with pytest.raises(UsageError, match="fps"):
        write_video(out, mixed, 0)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_keeps_old_file(tmp_path: Path) -> None:
    out = tmp_path / "keep.mp4"
    out.write_bytes(b"old")

    def frames():
        yield np.zeros((32, 32, 3), np.uint8)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_video(out, frames(), 25)
    assert out.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["keep.mp4"]


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(OutputNotWritableError, match="does not exist"):
        write_video(tmp_path / "no" / "x.mp4", [np.zeros((8, 8, 3), np.uint8)], 25)
