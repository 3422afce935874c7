"""LiveTalking avatars -> packages: its crops and coords.pkl (read safely), the speech from --audio."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from lipsync_tools.errors import ImportFormatError, NoAudioError
from lipsync_tools.importers import RECT_CORNERS, import_avatar
from lipsync_tools.importers.livetalking import load_coords
from lipsync_tools.package.reader import open_package
from lipsync_tools.package.validate import validate_package

from .folders import N_FRAMES, make_livetalking, pfld_landmarks, synctalk_rect


def test_ultralight_avatar_with_its_network(
    speech_wav: Path, tmp_path: Path, unet_checkpoint: Callable[[str, str], Path]
) -> None:
    pth = unet_checkpoint("ultralight-160", "hubert")
    folder = make_livetalking(tmp_path / "ultralight_avatar1", checkpoint=pth.read_bytes())
    out = tmp_path / "u.sanders"
    result = import_avatar(folder, out, audio=speech_wav)
    assert result.kind == "livetalking" and validate_package(out) == []
    pkg = open_package(out)
    m = pkg.manifest
    assert m.model is not None and (m.model.family, m.model.audio_mode) == ("ultralight-160", "hubert")
    assert m.model.features == "none" and pkg.features is None
    assert pkg.read_checkpoint() == pth.read_bytes()
    # coords.pkl holds (x1, y1, x2, y2) as NumPy int32 scalars; the 168-pixel crops are used as they are
    assert pkg.rects.tolist() == [synctalk_rect(pfld_landmarks(i)) for i in range(N_FRAMES)]
    stored = pkg.decode_frames()
    for i in (0, N_FRAMES - 1):
        face = cv2.imread(str(folder / "face_imgs" / f"{i:08d}.png"))
        assert np.array_equal(pkg.crops[i], face)
        # PNG frames are encoded as JPEG, the default frame codec
        frame = cv2.imread(str(folder / "full_imgs" / f"{i:08d}.png")).astype(np.int16)
        assert np.abs(stored[i].astype(np.int16) - frame).mean() < 2.0
    assert m.build_options["frames_stored_as_is"] == 0 and m.frames.codec == "jpeg"
    assert (m.faces.scheme, m.faces.num_points, m.faces.backend) == (RECT_CORNERS, 4, "import:livetalking")
    assert m.source_video.name == "full_imgs/" and m.source_audio is not None
    assert m.source_audio.name == speech_wav.name and m.video.fps == 25
    assert m.build_options["coords_order"] == "(x1, y1, x2, y2)"


def test_wav2lip_avatar_boxes_become_squares(speech_wav: Path, tmp_path: Path) -> None:
    folder = make_livetalking(tmp_path / "wav2lip_avatar1", kind="wav2lip")
    result = import_avatar(folder, tmp_path / "w.sanders", audio=speech_wav)
    pkg = open_package(result.output)
    assert validate_package(result.output) == [] and pkg.family == "wav2lip"
    coords = pickle.loads((folder / "coords.pkl").read_bytes())
    for (y1, y2, x1, x2), (a0, b0, a1, b1) in zip(coords, pkg.rects.tolist(), strict=True):
        # (y1, y2, x1, x2), 20 px taller than wide: the square of its height around the same centre
        assert a1 - a0 == b1 - b0 == y2 - y1
        assert abs((a0 + a1) - (x1 + x2)) <= 1 and abs((b0 + b1) - (y1 + y2)) <= 1
    assert pkg.crops.shape == (N_FRAMES, 96, 96, 3)
    assert pkg.manifest.build_options["recut_square_crops"] == N_FRAMES
    assert pkg.manifest.build_options["coords_order"] == "(y1, y2, x1, x2)"


def test_no_audio_is_one_line_and_nothing_is_written(tmp_path: Path) -> None:
    folder = make_livetalking(tmp_path / "avatar", checkpoint=b"x")
    out = tmp_path / "a.sanders"
    with pytest.raises(NoAudioError) as caught:
        import_avatar(folder, out, family="ultralight-160")
    assert str(caught.value) == (
        f"{folder} is a LiveTalking avatar, which holds no audio; pass --audio FILE with the speech of the "
        "video it was made from"
    )
    assert not out.exists() and os.listdir(tmp_path) == ["avatar"]


class _RunsACommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_restricted_unpickler_refuses_code_without_running_it(speech_wav: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = pickle.dumps([(1, 2, 3, 4), _RunsACommand(marker)])
    with pytest.raises(
        ImportFormatError, match=r"names posix\.system, which a list of rectangles never needs"
    ):
        load_coords(tmp_path / "coords.pkl", evil)
    assert not marker.exists()

    # the same inside an avatar folder: one line, nothing executed, nothing written
    folder = make_livetalking(tmp_path / "avatar", checkpoint=b"x")
    (folder / "coords.pkl").write_bytes(evil)
    with pytest.raises(ImportFormatError, match=r"coords\.pkl was refused"):
        import_avatar(folder, tmp_path / "a.sanders", audio=speech_wav, family="ultralight-160")
    assert not marker.exists() and not (tmp_path / "a.sanders").exists()

    for payload in (
        pickle.dumps([(eval, ("1",))]),  # a builtin
        pickle.dumps(np.arange(4)),  # an array is not a list of numbers
        pickle.dumps([(np.bool_(True), 1, 2, 3)]),  # booleans are not numbers here
        pickle.dumps([(1, 2, 3)]),
        b"\x80\x04not a pickle",
    ):
        with pytest.raises(ImportFormatError):
            load_coords(tmp_path / "coords.pkl", payload)


def test_restricted_unpickler_reads_numbers_of_every_kind(tmp_path: Path) -> None:
    coords = [(np.int32(1), np.int64(2), 3, 4.0), [np.float32(5.5), np.uint16(6), np.float64(7), 8]]
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        rects = load_coords(tmp_path / "coords.pkl", pickle.dumps(coords, protocol=protocol))
        assert rects == [[1, 2, 3, 4], [5.5, 6, 7, 8]]
    # NumPy's own dtypes are untouched by the unpickling (a fresh dtype object gets the byte order)
    big = pickle.dumps([(np.dtype(">i4").type(7), 1, 2, 3)])
    assert load_coords(tmp_path / "coords.pkl", big)[0][0] == 7
    assert np.dtype("i4").byteorder == "="
