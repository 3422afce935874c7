"""SyncTalk_2D / Ultralight dataset folders -> packages: their own landmarks, boxes, features and network."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

import lipsync_tools.cli.import_cmd  # noqa: F401  (registers `lipsync import` until cli/main.py does)
from lipsync_tools.cli.main import app
from lipsync_tools.errors import CheckpointError
from lipsync_tools.importers import ImportOptions, import_avatar
from lipsync_tools.models.families import get_family
from lipsync_tools.package.reader import open_package
from lipsync_tools.package.validate import validate_package
from lipsync_tools.pipeline.crop import crop_face

from .folders import N_FRAMES, make_synctalk, pfld_landmarks, synctalk_rect

UNCHECKED = ImportOptions(check_checkpoint=False)


def test_dataset_imports_with_its_own_landmarks_boxes_features_and_checkpoint(
    speech_wav: Path, tmp_path: Path
) -> None:
    folder = make_synctalk(
        tmp_path / "avatar",
        speech_wav,
        checkpoints={"checkpoint/run/5.pth": b"epoch five", "checkpoint/run/12.pth": b"epoch twelve"},
    )
    out = tmp_path / "avatar.sanders"
    result = import_avatar(folder, family="synctalk2d-328", options=UNCHECKED)  # default output: beside it
    assert result.output == out and result.kind == "synctalk"
    assert validate_package(out) == []
    pkg = open_package(out)
    m = pkg.manifest

    lms = np.stack([pfld_landmarks(i) for i in range(N_FRAMES)])
    assert pkg.rects.tolist() == [
        synctalk_rect(lms[i]) for i in range(N_FRAMES)
    ]  # SyncTalk_2D's rule, exactly
    assert np.array_equal(pkg.landmarks, lms) and pkg.landmarks.dtype == np.float32
    assert np.array_equal(pkg.boxes, pkg.rects.astype(np.float32)) and not pkg.filled.any()
    # crops are cut from the dataset's own JPEGs with INTER_CUBIC; the JPEGs are stored byte for byte
    for i in (0, N_FRAMES - 1):
        jpg = (folder / "full_body_img" / f"{i}.jpg").read_bytes()
        assert pkg.encoded_frames[i] == jpg
        frame = cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR)
        assert np.array_equal(pkg.crops[i], crop_face(frame, pkg.rects[i], 328, "cubic"))
    family = get_family("synctalk2d-328")
    assert pkg.crops.shape == (N_FRAMES, 328, 328, 3)
    assert np.array_equal(pkg.input_mask, family.input_mask())
    # blend masks from the landmarks: the mouth (crop centre, a little low) blends, the border never does
    assert (pkg.blend_masks[:, 180, 164] > 200).all() and pkg.blend_masks[:, 0, :].max() == 0

    assert pkg.features is not None and pkg.features.shape == (N_FRAMES + 2, 512)
    assert np.array_equal(pkg.features, np.load(folder / "aud_ave.npy"))
    assert pkg.read_checkpoint() == b"epoch twelve"  # the highest-numbered epoch
    assert m.model is not None and (m.model.family, m.model.audio_mode) == ("synctalk2d-328", "ave")
    assert (m.model.features, m.model.feature_row_shape, m.model.audio_encoder) == ("imported", [512], "none")
    assert (m.faces.backend, m.faces.scheme, m.faces.num_points) == ("import:synctalk", "pfld-110", 110)
    assert (m.crop.box_rule, m.crop.size) == ("synctalk2d", 328)
    assert m.video.fps == 25 and (m.video.width, m.video.height) == (320, 240)
    # source_video: the frame files' digest, which equals the stored frames' own checksum here
    assert m.source_video.name == "full_body_img/" and m.source_video.sha256 == m.datasets["frames"].sha256
    assert m.source_audio is not None and m.source_audio.name == "aud.wav"
    assert m.source_audio.sha256 == hashlib.sha256((folder / "aud.wav").read_bytes()).hexdigest()
    assert pkg.mel_index.shape == (N_FRAMES,) and pkg.pcm.shape[0] >= N_FRAMES / 25 * 16000
    assert m.build_options["importer"] == "synctalk" and m.build_options["rects_shifted_inside"] == 0
    summary = result.summary()
    assert summary["family"] == "synctalk2d-328" and summary["checkpoint"] == "12.pth"
    assert summary["audio_features"] == "imported" and summary["frames"] == N_FRAMES


def test_family_from_the_folder_when_no_checkpoint_says(speech_wav: Path, tmp_path: Path) -> None:
    # aud_ave.npy: SyncTalk_2D's 328 network
    ave = import_avatar(make_synctalk(tmp_path / "ave", speech_wav), tmp_path / "ave.sanders")
    assert ave.manifest.model is not None and ave.manifest.model.family == "synctalk2d-328"
    # only HuBERT rows: an Ultralight dataset; rows [N, 2, 1024] are stored flat
    hu = import_avatar(make_synctalk(tmp_path / "hu", speech_wav, features="hubert"), tmp_path / "hu.sanders")
    assert hu.manifest.model is not None
    assert (hu.manifest.model.family, hu.manifest.model.audio_mode) == ("ultralight-160", "hubert")
    assert hu.manifest.model.feature_row_shape == [2, 1024]
    pkg = open_package(hu.output)
    assert pkg.crops.shape[1:] == (168, 168, 3)
    assert pkg.features is not None and pkg.features.shape == (N_FRAMES, 2048)
    assert np.array_equal(pkg.features, np.load(tmp_path / "hu" / "aud_hu.npy").reshape(N_FRAMES, 2048))
    assert validate_package(hu.output) == []


def test_family_detected_from_a_real_checkpoint(
    speech_wav: Path, tmp_path: Path, unet_checkpoint: Callable[[str, str], Path]
) -> None:
    pth = unet_checkpoint("synctalk2d-160", "ave")
    folder = make_synctalk(
        tmp_path / "avatar", speech_wav, checkpoints={"checkpoint/7.pth": pth.read_bytes()}
    )
    result = import_avatar(folder, tmp_path / "a.sanders")
    model = result.manifest.model
    assert model is not None and (model.family, model.audio_mode) == ("synctalk2d-160", "ave")
    pkg = open_package(result.output, load_frames=False)
    assert pkg.crops.shape[1:] == (168, 168, 3) and pkg.read_checkpoint() == pth.read_bytes()

    # a --family that contradicts the checkpoint is refused before anything is written
    with pytest.raises(CheckpointError, match="is a synctalk2d-160 checkpoint, not synctalk2d-328"):
        import_avatar(folder, tmp_path / "b.sanders", family="synctalk2d-328")
    assert not (tmp_path / "b.sanders").exists()


def test_audio_encoder_rows_computed_when_the_folder_has_none(speech_wav: Path, tmp_path: Path) -> None:
    pytest.importorskip("lipsync_tools.models.ave", reason="the AVE encoder module is not there yet")
    from lipsync_tools.models.audio_features import AudioEncoderChoice

    folder = make_synctalk(tmp_path / "avatar", speech_wav, features=None)
    result = import_avatar(folder, tmp_path / "a.sanders", audio_encoder=AudioEncoderChoice.parse("random"))
    model = result.manifest.model
    assert model is not None and (model.features, model.audio_encoder) == ("computed", "random")
    pkg = open_package(result.output, load_frames=False)
    assert pkg.features is not None and pkg.features.shape == (N_FRAMES + 2, 512)


def test_cli_imports_and_prints_json(speech_wav: Path, tmp_path: Path) -> None:
    folder = make_synctalk(tmp_path / "avatar", speech_wav)
    out = tmp_path / "cli.sanders"
    result = CliRunner().invoke(app, ["import", str(folder), "-o", str(out), "--fps", "30", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["ok"] and summary["kind"] == "synctalk" and summary["fps"] == 30
    assert summary["family"] == "synctalk2d-328" and summary["landmarks"] == "pfld-110"
    assert validate_package(out) == []
