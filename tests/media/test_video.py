"""Decoding real videos: probing, streaming, random access, rotation, and every kind of bad input."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from lipsync_tools.errors import CorruptMediaError, EmptyVideoError, InputNotFoundError, NotAVideoError
from lipsync_tools.media import FrameReader, iter_frames, probe_video
from tests import samples


def test_probe_reports_container_facts(astronaut_mp4: Path) -> None:
    info = probe_video(astronaut_mp4)
    assert (info.width, info.height) == (320, 240)
    assert info.frame_rate == Fraction(25) and info.fps == 25.0
    assert info.frame_count == 50
    assert info.duration_s == pytest.approx(2.0, abs=0.05)
    assert info.rotation == 0 and info.codec == "h264"
    assert info.has_audio and info.audio_sample_rate == 16000 and info.audio_channels == 1


def test_probe_carphone_ntsc_rate() -> None:
    info = probe_video(samples.carphone_path())
    assert (info.width, info.height, info.frame_count) == (176, 144, 120)
    assert info.frame_rate == Fraction(30000, 1001)
    assert not info.has_audio and info.audio_sample_rate == 0


def test_iter_frames_streams_bgr_frames(astronaut_mp4: Path) -> None:
    frames = list(iter_frames(astronaut_mp4))
    assert len(frames) == 50
    for frame in frames:
        assert frame.shape == (240, 320, 3) and frame.dtype == np.uint8 and frame.flags.c_contiguous
    # the face drifts: consecutive frames differ
    assert np.abs(frames[0].astype(int) - frames[6].astype(int)).mean() > 1


def test_iter_frames_is_lazy(astronaut_mp4: Path) -> None:
    frames = iter_frames(astronaut_mp4)
    first = next(frames)
    assert first.shape == (240, 320, 3)
    frames.close()  # closing early releases the file without decoding the rest


def test_channel_order_is_bgr(colour_mp4: Path) -> None:
    frame = next(iter(iter_frames(colour_mp4)))
    expected = samples.colour_bars()
    # compare the middle of each bar (codec edges blur); blue, green, red thirds in BGR order
    for x, bgr in ((50, (255, 0, 0)), (160, (0, 255, 0)), (270, (0, 0, 255))):
        np.testing.assert_allclose(frame[200, x].astype(int), bgr, atol=12)
        np.testing.assert_allclose(frame[200, x].astype(int), expected[200, x].astype(int), atol=12)


def test_rotation_metadata_is_honoured(rotated_mp4: Path) -> None:
    info = probe_video(rotated_mp4)
    assert info.rotation == 90 and (info.width, info.height) == (240, 320)
    frame = next(iter(iter_frames(rotated_mp4)))
    assert frame.shape == (320, 240, 3)
    expected = np.rot90(samples.colour_bars(), k=1)  # 90° counter-clockwise
    # the white block moves from the top-left to the bottom-left corner; blue bar is now at the bottom
    assert np.abs(frame.astype(int) - expected.astype(int)).mean() < 4
    assert frame[300, 20].min() > 230


def test_frame_reader_matches_iter_frames(astronaut_mp4: Path) -> None:
    reference = list(iter_frames(astronaut_mp4))
    with FrameReader(astronaut_mp4) as reader:
        assert len(reader) == 50
        order = [0, 1, 2, 49, 13, 12, 30, 31, 32, 5, 24, 25, 48, 0, 0]
        for index in order:
            np.testing.assert_array_equal(reader[index], reference[index], err_msg=f"frame {index}")
        for index in range(50):  # a full sequential pass
            np.testing.assert_array_equal(reader.read(index), reference[index])
        with pytest.raises(IndexError):
            reader.read(50)


def test_frame_reader_returns_fresh_arrays(astronaut_mp4: Path) -> None:
    with FrameReader(astronaut_mp4) as reader:
        first = reader[3]
        first[:] = 0
        assert reader[3].any()


def test_frame_reader_on_carphone_bframes() -> None:
    clip = samples.carphone_path()
    reference = list(iter_frames(clip))
    with FrameReader(clip) as reader:
        for index in (119, 0, 60, 61, 59, 7):
            np.testing.assert_array_equal(reader[index], reference[index])


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    for call in (probe_video, lambda p: list(iter_frames(p)), FrameReader):
        with pytest.raises(InputNotFoundError, match=r"nope\.mp4 does not exist; expected a video"):
            call(missing)


def test_text_file_is_not_a_video(text_mp4: Path) -> None:
    with pytest.raises(NotAVideoError, match="is not a video or audio file FFmpeg can read") as caught:
        probe_video(text_mp4)
    assert "\n" not in str(caught.value)
    with pytest.raises(NotAVideoError):
        list(iter_frames(text_mp4))


def test_audio_file_is_not_a_video(tone_wav: Path) -> None:
    with pytest.raises(NotAVideoError, match=r"is audio only; expected a video .* --audio"):
        probe_video(tone_wav)
    with pytest.raises(NotAVideoError):
        FrameReader(tone_wav)


def test_folder_is_not_a_video(tmp_path: Path) -> None:
    with pytest.raises(NotAVideoError, match="is a folder"):
        probe_video(tmp_path)


def test_truncated_video_fails_part_way(truncated_mp4: Path) -> None:
    seen = 0
    with pytest.raises(CorruptMediaError, match=r"decoded (\d+) frames, then the stream ended") as caught:  # noqa: PT012
        for _ in iter_frames(truncated_mp4):
            seen += 1
    assert 0 < seen < 50 and f"decoded {seen} frames" in str(caught.value)
    assert "lists 50" in str(caught.value)


def test_header_only_video_is_empty(media_dir: Path, astronaut_mp4: Path) -> None:
    # faststart puts the index first: the first 2 kB hold a header and no frame data
    stub = samples.truncated_copy(astronaut_mp4, media_dir / "header_only.mp4", 0.0)
    stub.write_bytes(astronaut_mp4.read_bytes()[:2048])
    with pytest.raises((EmptyVideoError, CorruptMediaError)):
        list(iter_frames(stub))


def test_mp4_without_index_is_corrupt(media_dir: Path, astronaut_mp4: Path, tmp_path: Path) -> None:
    data = astronaut_mp4.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[:32] + b"\0" * 64)  # ftyp box, then garbage: looks like MP4, unreadable
    with pytest.raises(CorruptMediaError, match="looks like a video container"):
        probe_video(cut)


def test_zero_frame_video(empty_avi: Path) -> None:
    with pytest.raises(EmptyVideoError, match="decoded to 0 frames; expected at least one"):
        probe_video(empty_avi)
    with pytest.raises(EmptyVideoError):
        list(iter_frames(empty_avi))
    with pytest.raises(EmptyVideoError):
        FrameReader(empty_avi)


def test_error_messages_are_one_line(
    tmp_path: Path, text_mp4: Path, truncated_mp4: Path, empty_avi: Path
) -> None:
    for path in (tmp_path / "missing.mov", text_mp4, truncated_mp4, empty_avi):
        with pytest.raises(
            (InputNotFoundError, NotAVideoError, CorruptMediaError, EmptyVideoError)
        ) as caught:
            list(iter_frames(path))
        assert "\n" not in str(caught.value) and str(path) in str(caught.value)
