import numpy as np
import pytest

from lipsync_tools.errors import UsageError
from lipsync_tools.faces.base import LandmarkScheme
from lipsync_tools.pipeline.masks import MaskOptions, blend_mask, model_input_mask

# A toy 10-point face in a 96 px crop: jaw 0-4 (ear, cheek, chin, cheek, ear), lips 5-8, nose tip 9.
SCHEME = LandmarkScheme(
    name="toy",
    num_points=10,
    jaw=(0, 1, 2, 3, 4),
    outer_lips=(5, 6, 7, 8),
    nose_tip=9,
    left_eye=(0,),
    right_eye=(4,),
)
POINTS = np.array(
    [[10, 40], [20, 75], [48, 90], [76, 75], [86, 40], [38, 68], [48, 64], [58, 68], [48, 74], [48, 50]],
    np.float32,
)


def test_model_input_mask_hides_the_lower_half():
    mask = model_input_mask(96)
    assert mask.dtype == np.uint8 and mask.shape == (96, 96)
    assert mask[:48].all() and not mask[48:].any()


def test_blend_mask_covers_mouth_not_eyes_and_fades_at_border():
    mask = blend_mask(POINTS, SCHEME, 96, MaskOptions())
    assert mask.dtype == np.uint8 and mask.shape == (96, 96)
    assert mask[68, 48] > 240  # mouth
    assert mask[20, 48] == 0  # forehead / eyes
    assert mask[0].max() == 0 and mask[-1].max() == 0 and mask[:, 0].max() == 0 and mask[:, -1].max() == 0
    values = np.unique(mask)
    assert len(values) > 10  # feathered, not a hard edge


def test_no_feather_gives_hard_mask():
    mask = blend_mask(POINTS, SCHEME, 96, MaskOptions(feather=0.0))
    assert set(np.unique(mask).tolist()) == {0, 255}


def test_bad_feather():
    with pytest.raises(UsageError, match="mask feather"):
        MaskOptions(feather=0.9)
