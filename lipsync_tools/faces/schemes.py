"""The landmark schemes of the built-in backends: which point indices are the jaw, lips, nose and eyes.

Every contour runs in a fixed order so it can be drawn or filled as a polygon. "Left" and "right" are the
subject's: the subject's left eye appears on the right of the image.
"""

from __future__ import annotations

from lipsync_tools.faces.base import LandmarkScheme

# MediaPipe FaceMesh without iris refinement. The contours follow the edges of MediaPipe's own
# ``FACEMESH_FACE_OVAL``, ``FACEMESH_LIPS``, ``FACEMESH_LEFT_EYE`` and ``FACEMESH_RIGHT_EYE`` tables
# (tests/faces/test_contract.py checks that every consecutive pair is one of those edges).
MEDIAPIPE_468 = LandmarkScheme(
    name="mediapipe-468",
    num_points=468,
    # Lower half of the face oval: subject's right ear (234, image left) through the chin (152) to the
    # left ear (454), the same direction as iBUG points 0..16.
    jaw=(
        *(234, 93, 132, 58, 172, 136, 150, 149, 176, 148),
        152,
        *(377, 400, 378, 379, 365, 397, 288, 361, 323, 454),
    ),
    # From the right mouth corner (61) along the lower lip to the left corner (291) and back along the upper.
    outer_lips=(61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185),
    nose_tip=1,
    # Inner corner (362) along the lower lid to the outer corner (263), back along the upper lid.
    left_eye=(362, 382, 381, 380, 374, 373, 390, 249, 263, 466, 388, 387, 386, 385, 384, 398),
    # Outer corner (33) along the lower lid to the inner corner (133), back along the upper lid.
    right_eye=(33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246),
)

# The 68-point iBUG 300-W layout that face-alignment's FAN predicts (0-based indices).
IBUG_68 = LandmarkScheme(
    name="ibug-68",
    num_points=68,
    jaw=tuple(range(0, 17)),  # 0 at the subject's right ear (image left), 8 at the chin
    outer_lips=tuple(range(48, 60)),  # 48 right mouth corner, along the upper lip, back along the lower
    nose_tip=30,
    left_eye=tuple(range(42, 48)),  # the subject's left eye, image right; 42 is its inner corner
    right_eye=tuple(range(36, 42)),  # the subject's right eye, image left; 36 is its outer corner
)
