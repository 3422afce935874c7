"""Every broken avatar folder gets one line naming the file and what it should hold, and nothing is "
"written."""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import lipsync_tools.cli.import_cmd  # noqa: F401  (registers `lipsync import` until cli/main.py does)
from lipsync_tools.cli.main import app
from lipsync_tools.errors import (
    CheckpointError,
    ImportFormatError,
    InputNotFoundError,
    LipsyncError,
    NoAudioError,
    OutputExistsError,
)
from lipsync_tools.importers import ImportOptions, import_avatar
from tests import samples

from .folders import N_FRAMES, frames, make_livetalking, make_mp4_package, make_synctalk

UNCHECKED = ImportOptions(check_checkpoint=False)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, speech_wav: Path) -> dict[str, Path]:
    """One good folder of each kind, copied by each test before it breaks it."""
    root = tmp_path_factory.mktemp("pristine")
    return {
        "synctalk": make_synctalk(root / "synctalk", speech_wav),
        "mp4": make_mp4_package(root / "mp4", speech_wav),
        "livetalking": make_livetalking(root / "livetalking", checkpoint=b"x"),
    }


def _copy(pristine: dict[str, Path], kind: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pristine[kind], tmp_path / "avatar"))


def _assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not [p.name for p in out.parent.iterdir() if out.name in p.name]  # no temporary file either


def _fails(folder: Path, error: type[LipsyncError], message: str, **kwargs: object) -> None:
    out = folder.parent / "out.sanders"
    kwargs = {"options": UNCHECKED, **kwargs}
    with pytest.raises(error) as caught:
        import_avatar(folder, out, **kwargs)  # type: ignore[arg-type]
    text = str(caught.value)
    assert "\n" not in text
    assert text == message.format(folder=folder), text
    _assert_nothing_written(out)


def _empty_frames(folder: Path) -> None:
    for path in (folder / "full_body_img").iterdir():
        path.unlink()


LMS_HOLD = "a SyncTalk_2D dataset needs one landmarks file per frame in full_body_img/ (110 lines 'x y')"

SYNCTALK_CASES: list[tuple[str, Callable[[Path], object], type[LipsyncError], str]] = [
    (
        "missing landmarks file",
        lambda f: (f / "landmarks" / "3.lms").unlink(),
        ImportFormatError,
        "{folder}/landmarks/3.lms is missing: " + LMS_HOLD,
    ),
    (
        "no landmarks folder",
        lambda f: shutil.rmtree(f / "landmarks"),
        ImportFormatError,
        "{folder}/landmarks/ is missing: " + LMS_HOLD,
    ),
    (
        "short landmarks file",
        lambda f: (f / "landmarks" / "4.lms").write_text("1 2\n" * 109),
        ImportFormatError,
        "{folder}/landmarks/4.lms has 109 lines; expected 110 lines 'x y' (PFLD landmarks, one point a line)",
    ),
    (
        "garbage landmark line",
        lambda f: (f / "landmarks" / "5.lms").write_text("1 2\n" * 7 + "12 abc\n" + "1 2\n" * 102),
        ImportFormatError,
        "{folder}/landmarks/5.lms line 8 is '12 abc'; expected two numbers 'x y' (PFLD landmarks)",
    ),
    (
        "one landmarks file too many",
        lambda f: shutil.copy(f / "landmarks" / "0.lms", f / "landmarks" / f"{N_FRAMES}.lms"),
        ImportFormatError,
        f"frame counts disagree: {{folder}}/landmarks holds {N_FRAMES + 1} .lms files but "
        f"{{folder}}/full_body_img holds {N_FRAMES} frames; a SyncTalk_2D dataset has one landmarks file "
        "per frame",
    ),
    (
        "gap in the frames",
        lambda f: (f / "full_body_img" / "5.jpg").unlink(),
        ImportFormatError,
        f"{{folder}}/full_body_img/5.jpg is missing: a SyncTalk_2D dataset numbers its frames "
        f"0..{N_FRAMES - 2} without gaps, but {{folder}}/full_body_img holds {N_FRAMES - 1} files up to "
        f"{N_FRAMES - 1}",
    ),
    (
        "no frames",
        _empty_frames,
        ImportFormatError,
        "{folder}/full_body_img holds no numbered .jpg/.jpeg/.png files: a SyncTalk_2D dataset needs its "
        "video frames as full_body_img/N.jpg (N = 0, 1, ...)",
    ),
    (
        "no speech",
        lambda f: (f / "aud.wav").unlink(),
        ImportFormatError,
        "{folder}/aud.wav is missing: a SyncTalk_2D dataset needs its speech as aud.wav (the audio of the "
        "video its frames came from), or pass --audio FILE",
    ),
    (
        "AVE rows for another frame count",
        lambda f: np.save(f / "aud_ave.npy", np.zeros((N_FRAMES + 1, 512), np.float32)),
        ImportFormatError,
        f"frame counts disagree: {{folder}}/aud_ave.npy holds {N_FRAMES + 1} rows, i.e. {N_FRAMES - 1} "
        f"frames (AVE arrays hold frames + 2 rows), but {{folder}}/full_body_img holds {N_FRAMES} frames",
    ),
    (
        "AVE rows of another width",
        lambda f: np.save(f / "aud_ave.npy", np.zeros((N_FRAMES + 2, 256), np.float32)),
        ImportFormatError,
        f"{{folder}}/aud_ave.npy has shape [{N_FRAMES + 2}, 256]; expected ave features of shape [frames + "
        "2, 512] (SyncTalk_2D's padded AVE array)",
    ),
    (
        "pickled features",
        lambda f: np.save(f / "aud_ave.npy", np.array([{"a": 1}], dtype=object)),
        ImportFormatError,
        "{folder}/aud_ave.npy is not a readable NumPy .npy array (Object arrays cannot be loaded when "
        "allow_pickle=False); expected ave features of shape [frames + 2, 512] (SyncTalk_2D's padded AVE "
        "array)",
    ),
    (
        "unreadable frame",
        lambda f: (f / "full_body_img" / "7.jpg").write_bytes(b"not a jpeg"),
        ImportFormatError,
        "{folder}/full_body_img/7.jpg is not a readable image; expected its video frames as "
        "full_body_img/N.jpg (N = 0, 1, ...)",
    ),
    (
        "frame of another size",
        lambda f: samples.cv2.imwrite(str(f / "full_body_img" / "9.jpg"), frames(1, (300, 240))[0]),
        ImportFormatError,
        "{folder}/full_body_img/9.jpg is 300x240; frame 0 (0.jpg) is 320x240: every frame of "
        "{folder}/full_body_img must have one size",
    ),
]


@pytest.mark.parametrize(
    ("case", "mutate", "error", "message"), SYNCTALK_CASES, ids=[c[0] for c in SYNCTALK_CASES]
)
def test_synctalk_dataset_errors(
    pristine: dict[str, Path],
    tmp_path: Path,
    case: str,
    mutate: Callable[[Path], object],
    error: type[LipsyncError],
    message: str,
) -> None:
    folder = _copy(pristine, "synctalk", tmp_path)
    mutate(folder)
    _fails(folder, error, message, family="synctalk2d-328")


def _rewrite_video(path: Path, n: int, audio: bool = False) -> None:
    images = frames(n)
    pcm = samples.tone(n / 25)[:, :] if audio else None
    samples.write_test_video(path, images, 25, pcm, 16000)


MP4_CASES: list[tuple[str, Callable[[Path], object], type[LipsyncError], str]] = [
    (
        "missing crops video",
        lambda f: (f / "crops_328_video.mp4").unlink(),
        ImportFormatError,
        "{folder}/crops_328_video.mp4 is missing: an mp4 video package needs its square face crops as "
        "crops_328_video.mp4, one per frame",
    ),
    (
        "missing model inputs video",
        lambda f: (f / "model_inputs_video.mp4").unlink(),
        ImportFormatError,
        "{folder}/model_inputs_video.mp4 is missing: an mp4 video package needs the masked network inputs "
        "as model_inputs_video.mp4, one per frame",
    ),
    (
        "rois video one frame short",
        lambda f: _rewrite_video(f / "rois_320_video.mp4", N_FRAMES - 1),
        ImportFormatError,
        f"frame counts disagree: {{folder}}/full_body_video.mp4 holds {N_FRAMES} frames but "
        f"{{folder}}/rois_320_video.mp4 holds {N_FRAMES - 1}; every part of the avatar must have one entry "
        "per frame",
    ),
    (
        "package_info frame count",
        lambda f: (f / "package_info.json").write_text(
            json.dumps({"package_type": "mp4_video_package", "frames": 40})
        ),
        ImportFormatError,
        f"frame counts disagree: {{folder}}/full_body_video.mp4 holds {N_FRAMES} frames but "
        f"{{folder}}/package_info.json (its frame count) holds 40; every part of the avatar must have one "
        "entry per frame",
    ),
    (
        "another package type",
        lambda f: (f / "package_info.json").write_text(json.dumps({"package_type": "hls_package"})),
        ImportFormatError,
        "{folder}/package_info.json says package_type 'hls_package'; lipsync import reads "
        "'mp4_video_package' packages only",
    ),
    (
        "package_info not JSON",
        lambda f: (f / "package_info.json").write_text("{fps: 25"),
        ImportFormatError,
        "{folder}/package_info.json is not valid JSON (Expecting property name enclosed in double quotes: "
        "line 1 "
        'column 2 (char 1)); expected a package_info.json object with "package_type": "mp4_video_package"',
    ),
    (
        "no rectangles",
        lambda f: (f / "crop_rects.json").unlink(),
        ImportFormatError,
        "{folder}/crop_rects.json is missing: an mp4 video package needs its crop rectangles as "
        "crop_rects.json ([[x1, y1, x2, y2], ...], one per frame) (or cache/crop_rectangles.json)",
    ),
    (
        "a rectangle outside the frame",
        lambda f: (f / "crop_rects.json").write_text(
            json.dumps([[0, 0, 40, 40]] * 3 + [[300, 10, 340, 50]] + [[0, 0, 40, 40]] * (N_FRAMES - 4))
        ),
        ImportFormatError,
        "{folder}/crop_rects.json: frame 3's crop rectangle [300, 10, 340, 50] (x0, y0, x1, y1) is empty "
        "or leaves the 320x240 frame (1 such frames)",
    ),
    (
        "a rectangle that is not square",
        lambda f: (f / "crop_rects.json").write_text(
            json.dumps([[0, 0, 40, 40]] * (N_FRAMES - 1) + [[0, 0, 40, 50]])
        ),
        ImportFormatError,
        f"{{folder}}/crop_rects.json: frame {N_FRAMES - 1}'s crop rectangle [0, 0, 40, 50] is 40x50; "
        "packages need square rectangles (the crop is pasted back square)",
    ),
    (
        "a rectangle that is not four numbers",
        lambda f: (f / "crop_rects.json").write_text(json.dumps([[0, 0, 40]] * N_FRAMES)),
        ImportFormatError,
        "{folder}/crop_rects.json entry 0 is [0, 0, 40]; expected four numbers [x1, y1, x2, y2]",
    ),
    (
        "no audio anywhere",
        lambda f: _rewrite_video(f / "full_body_video.mp4", N_FRAMES, audio=False),
        NoAudioError,
        "{folder} has no aud.wav and full_body_video.mp4 has no audio track; pass --audio FILE with the "
        "speech",
    ),
]


@pytest.mark.parametrize(("case", "mutate", "error", "message"), MP4_CASES, ids=[c[0] for c in MP4_CASES])
def test_mp4_package_errors(
    pristine: dict[str, Path],
    tmp_path: Path,
    case: str,
    mutate: Callable[[Path], object],
    error: type[LipsyncError],
    message: str,
) -> None:
    folder = _copy(pristine, "mp4", tmp_path)
    mutate(folder)
    _fails(folder, error, message, family="synctalk2d-328")


def test_livetalking_errors(pristine: dict[str, Path], tmp_path: Path, speech_wav: Path) -> None:
    folder = _copy(pristine, "livetalking", tmp_path)
    coords = pickle.loads((folder / "coords.pkl").read_bytes())
    (folder / "coords.pkl").write_bytes(pickle.dumps(coords[:-1]))
    _fails(
        folder,
        ImportFormatError,
        f"frame counts disagree: {{folder}}/full_imgs holds {N_FRAMES} frames but {{folder}}/coords.pkl "
        f"holds {N_FRAMES - 1}; every part of the avatar must have one entry per frame",
        audio=speech_wav,
    )
    (folder / "coords.pkl").unlink()
    _fails(
        folder,
        ImportFormatError,
        "{folder}/coords.pkl is missing: a LiveTalking avatar needs its crop rectangles as coords.pkl (a "
        "pickled list, one rectangle per frame)",
        audio=speech_wav,
    )
    # a MuseTalk avatar keeps latents instead of crops
    shutil.rmtree(folder / "face_imgs")
    (folder / "latents.pt").write_bytes(b"")
    _fails(
        folder,
        ImportFormatError,
        "{folder} is a LiveTalking MuseTalk avatar (latents.pt, no face_imgs/); lipsync import reads "
        "LiveTalking's wav2lip and ultralight avatars",
        audio=speech_wav,
    )


def test_unknown_and_missing_folders(tmp_path: Path) -> None:
    folder = tmp_path / "avatar"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    _fails(
        folder,
        ImportFormatError,
        "{folder} is not an avatar folder lipsync import knows: looked for an mp4 video package "
        "(package_info.json + full_body_video.mp4); a SyncTalk_2D/Ultralight dataset (full_body_img/ + "
        "landmarks/); a LiveTalking avatar (full_imgs/ + face_imgs/ + coords.pkl)",
    )
    _fails(tmp_path / "nowhere", InputNotFoundError, "avatar folder {folder} does not exist; check the path")


def test_paths_given_on_the_command_line(pristine: dict[str, Path], tmp_path: Path, speech_wav: Path) -> None:
    folder = _copy(pristine, "synctalk", tmp_path)
    out = tmp_path / "out.sanders"
    out.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match="already exists; pass --force"):
        import_avatar(folder, out)
    assert out.read_bytes() == b"keep me"
    out.unlink()
    _fails(
        folder,
        InputNotFoundError,
        f"checkpoint {tmp_path}/x.pth does not exist; check the --checkpoint path",
        checkpoint=tmp_path / "x.pth",
    )
    _fails(
        folder,
        InputNotFoundError,
        f"audio file {tmp_path}/x.wav does not exist; check the --audio path",
        audio=tmp_path / "x.wav",
    )
    # a file that is not a checkpoint, given without --family, cannot tell the family
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"bad\.pth is not a PyTorch checkpoint"):
        import_avatar(folder, out, checkpoint=tmp_path / "bad.pth")
    _assert_nothing_written(out)


def test_cli_error_is_one_line_with_its_exit_code(pristine: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(pristine, "synctalk", tmp_path)
    (folder / "landmarks" / "3.lms").unlink()
    out = tmp_path / "out.sanders"
    result = CliRunner().invoke(app, ["import", str(folder), "-o", str(out)])
    assert result.exit_code == ImportFormatError.exit_code == 18
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"error: {folder}/landmarks/3.lms is missing: " + LMS_HOLD]
    _assert_nothing_written(out)

    result = CliRunner().invoke(app, ["import", str(folder), "-o", str(out), "--json"])
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["error"] == "ImportFormatError" and report["exit_code"] == 18
