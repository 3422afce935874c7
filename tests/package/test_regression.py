"""Files written by earlier format versions must keep reading (see tests/data/README.md)."""

from pathlib import Path

import numpy as np

from lipsync_tools.package import open_package, validate_package

DATA = Path(__file__).parents[1] / "data"


def test_v1_0_file_still_opens_and_validates():
    path = DATA / "v1.0-synthetic.sanders"
    assert validate_package(path) == []
    pkg = open_package(path)
    assert pkg.manifest.format_version == "1.0"
    assert pkg.n_frames == 4 and pkg.crop_size == 16 and pkg.landmarks.shape == (4, 5, 2)
    assert pkg.rects[0].tolist() == [4, 4, 36, 36] and pkg.filled.tolist() == [0, 1, 0, 0]
    # the checksum 1.0 recorded; validate_package above re-computed it from the bytes
    assert (
        pkg.manifest.datasets["crops"].sha256
        == "c5a4f4b073d01bb48411788b64d69402006e19b303bf08852a78caa7b8508605"
    )
    assert np.array_equal(pkg.mel_index, [0, 3, 6, 9])


def test_v1_0_file_reads_as_a_wav2lip_package():
    pkg = open_package(DATA / "v1.0-synthetic.sanders")
    assert pkg.manifest.model is None and pkg.family == "wav2lip" and pkg.audio_mode == "mel"
    assert pkg.manifest.crop.box_rule == "padded"  # the 1.1 key's default
    assert pkg.features is None and not pkg.has_audio_encoder


def test_v1_1_file_with_family_features_and_audio_encoder_still_opens_and_validates():
    """A 1.1 package for SyncTalk_2D-328 with AVE rows and an embedded AVE encoder (synthetic, frozen)."""
    path = DATA / "v1.1-synthetic-ave.sanders"
    assert validate_package(path) == []
    pkg = open_package(path)
    assert pkg.manifest.format_version == "1.1"
    assert (pkg.family, pkg.audio_mode) == ("synctalk2d-328", "ave")
    model = pkg.manifest.model
    assert model is not None and model.audio_encoder == "embedded" and model.feature_row_shape == [512]
    assert pkg.manifest.crop.box_rule == "synctalk2d"
    assert pkg.features is not None and pkg.features.shape == (6, 512)
    assert "audio/features" in pkg.memory_mapped
    assert pkg.read_checkpoint() == b"unet-weights" * 10
    assert pkg.read_checkpoint("model/audio_encoder") == b"ave-weights" * 10
    assert (
        pkg.manifest.datasets["audio/features"].sha256
        == "93e5a4d08b29d2a84d1302f26750f683d1c4a5be2b0abfe71a797c03c4011bb3"
    )


def test_v1_2_file_with_footage_still_opens_and_validates():
    """A 1.2 package recording which source frames it holds (synthetic, frozen)."""
    path = DATA / "v1.2-synthetic-footage.sanders"
    assert validate_package(path) == []
    pkg = open_package(path)
    assert pkg.manifest.format_version == "1.2"
    footage = pkg.manifest.footage
    assert footage is not None
    assert (footage.source_start, footage.source_end, footage.source_frames) == (3, 7, 10)
    assert [(s.start, s.end, s.start_reason, s.end_reason) for s in footage.segments] == [
        (1, 3, "video_start", "cut"),
        (3, 7, "cut", "face_lost"),
    ]
    assert footage.kept_segment == 1 and footage.detected_frames == 3 and footage.longest_fill == 1
    assert pkg.manifest.warnings() and "25 %" in pkg.manifest.warnings()[0]


def test_older_files_have_no_footage_and_read_as_before():
    for name in ("v1.0-synthetic.sanders", "v1.1-synthetic-ave.sanders"):
        assert open_package(DATA / name).manifest.footage is None
