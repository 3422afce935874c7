"""Pin the v1 layout: a change here is a format change and needs a version bump (docs/package-format.md)."""

from pathlib import Path

from lipsync_tools.package.spec import DATASETS, FORMAT_NAME, FORMAT_VERSION

GOLDEN_V1_0 = [
    ("frames", "vlen-uint8", ("N",), False, True),
    ("crops", "uint8", ("N", "S", "S", 3), True, True),
    ("rects", "int32", ("N", 4), True, True),
    ("masks/input", "uint8", ("S", "S"), True, True),
    ("masks/blend", "uint8", ("N", "S", "S"), True, True),
    ("landmarks", "float32", ("N", "K", 2), True, True),
    ("boxes", "float32", ("N", 4), True, True),
    ("filled", "uint8", ("N",), True, True),
    ("audio/pcm", "int16", ("A",), True, True),
    ("audio/mel", "float32", (80, "T"), True, True),
    ("audio/mel_index", "int32", ("N",), True, True),
    ("model/checkpoint", "uint8", ("B",), False, False),
]

# 1.1 added two optional datasets (and the manifest's optional `model` section and `crop.box_rule`).
GOLDEN_V1_1 = [
    *GOLDEN_V1_0[:11],
    ("audio/features", "float32", ("F", "D"), True, False),
    ("model/checkpoint", "uint8", ("B",), False, False),
    ("model/audio_encoder", "uint8", ("E",), False, False),
]


def test_version_and_layout_are_pinned():
    assert FORMAT_NAME == "sanders"
    assert FORMAT_VERSION == (1, 2)
    assert [(d.path, d.dtype, d.shape, d.hot, d.required) for d in DATASETS] == GOLDEN_V1_1
    # a minor bump only adds optional datasets: every 1.0 dataset is still there, unchanged
    assert all(d in GOLDEN_V1_1 for d in GOLDEN_V1_0)


def test_spec_document_lists_every_dataset_and_the_version():
    doc = (Path(__file__).parents[2] / "docs" / "package-format.md").read_text()
    assert "version 1.2" in doc
    for d in DATASETS:
        assert f"| `{d.path}` | " in doc, d.path
