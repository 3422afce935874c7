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
