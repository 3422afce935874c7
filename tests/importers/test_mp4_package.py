"""The original servers' mp4 video packages -> packages: their own crops (decoded), rectangles and "
"features."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from lipsync_tools.errors import ImportFormatError
from lipsync_tools.importers import RECT_CORNERS, ImportOptions, default_blend_mask, import_avatar
from lipsync_tools.media.video import iter_frames
from lipsync_tools.package.reader import open_package
from lipsync_tools.package.validate import validate_package
from lipsync_tools.pipeline.masks import MaskOptions

from .folders import N_FRAMES, make_mp4_package, pfld_landmarks, reference_crops, synctalk_rect

UNCHECKED = ImportOptions(check_checkpoint=False)
CHECKPOINT = b"synctalk2d-328 network (test bytes)"


def test_package_imports_its_crops_rects_landmarks_and_features(speech_wav: Path, tmp_path: Path) -> None:
    folder = make_mp4_package(tmp_path / "pkg", speech_wav, checkpoint=CHECKPOINT)
    out = tmp_path / "pkg.sanders"
    result = import_avatar(folder, out, family="synctalk2d-328", options=UNCHECKED)
    assert result.kind == "mp4_package"
    assert validate_package(out) == []
    pkg = open_package(out)
    m = pkg.manifest

    assert pkg.rects.tolist() == [synctalk_rect(pfld_landmarks(i)) for i in range(N_FRAMES)]
    # the crops are the package's own crops video, decoded: exact against that decode, and within the
    # video codec's loss of the crops it was made from
    decoded = np.stack(list(iter_frames(folder / "crops_328_video.mp4")))
    assert np.array_equal(pkg.crops, decoded)
    _, made = reference_crops(328)
    error = np.abs(pkg.crops.astype(np.int16) - made.astype(np.int16))
    assert error.mean() < 3.0 and np.percentile(error, 99) < 24
    assert np.array_equal(pkg.landmarks, np.stack([pfld_landmarks(i) for i in range(N_FRAMES)]))
    assert (m.faces.scheme, m.faces.backend) == ("pfld-110", "import:mp4_package")
    assert (pkg.blend_masks[:, 180, 164] > 200).all()

    assert pkg.features is not None and np.array_equal(pkg.features, np.load(folder / "aud_ave.npy"))
    assert pkg.read_checkpoint() == CHECKPOINT
    assert m.model is not None and (m.model.family, m.model.features) == ("synctalk2d-328", "imported")
    # the main input is the full-body video; its own audio track is the package's audio
    video_bytes = (folder / "full_body_video.mp4").read_bytes()
    assert m.source_video.name == "full_body_video.mp4"
    assert m.source_video.sha256 == hashlib.sha256(video_bytes).hexdigest()
    assert m.source_audio is None and pkg.pcm.shape[0] >= N_FRAMES / 25 * 16000 - 1600
    assert m.video.fps == 25 and m.video.frame_count == N_FRAMES
    assert m.build_options["rects_file"] == "crop_rects.json"


def test_cached_rectangles_no_landmarks_and_aud_wav(speech_wav: Path, tmp_path: Path) -> None:
    folder = make_mp4_package(
        tmp_path / "pkg", speech_wav, rects_file="cache", landmarks=False, aud_wav=True, checkpoint=CHECKPOINT
    )
    result = import_avatar(folder, tmp_path / "p.sanders", family="synctalk2d-328", options=UNCHECKED)
    pkg = open_package(result.output)
    assert validate_package(result.output) == []
    assert pkg.rects.tolist() == [synctalk_rect(pfld_landmarks(i)) for i in range(N_FRAMES)]
    # no landmarks: the rectangles' corners stand in, and every frame gets the family's default mask
    assert (pkg.manifest.faces.scheme, pkg.manifest.faces.num_points) == (RECT_CORNERS, 4)
    x0, y0, x1, y1 = pkg.rects[3].astype(np.float32)
    assert pkg.landmarks[3].tolist() == [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]
    from lipsync_tools.models.families import get_family

    expected = default_blend_mask(get_family("synctalk2d-328"), 328, MaskOptions())
    assert all(np.array_equal(mask, expected) for mask in pkg.blend_masks)
    assert expected[180, 164] > 200 and expected[0].max() == 0 and expected[20, 164] < 8
    assert pkg.manifest.source_audio is not None and pkg.manifest.source_audio.name == "aud.wav"
    assert pkg.manifest.build_options["rects_file"] == "crop_rectangles.json"


def test_crops_of_another_size_than_the_family_takes_are_refused(speech_wav: Path, tmp_path: Path) -> None:
    folder = make_mp4_package(tmp_path / "pkg", speech_wav)
    out = tmp_path / "p.sanders"
    with pytest.raises(ImportFormatError) as caught:
        import_avatar(folder, out, family="synctalk2d-160", options=UNCHECKED)
    assert str(caught.value) == (
        f"{folder / 'crops_328_video.mp4'} holds 328x328 crops, but the synctalk2d-160 family takes "
        "168-pixel crops; these crops were made for another family (try --family synctalk2d-328)"
    )
    assert not out.exists()
