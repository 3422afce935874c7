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
    # PFLD's contour has two points per iBUG contour point, so its point 1 lies between iBUG 0 and 1, i.e.
    # between FaceMesh 127 and 234 (the usual FaceMesh -> iBUG-68 correspondence), and 31 between 454 and
    # 356. PFLD 52, the second of the four nose-bridge points (iBUG 28), lies a third of the way from
    # between the eyes to the nose tip: between FaceMesh 6 and 197. tests/pipeline/test_crop.py checks the
    # resulting box against PFLD points annotated by hand on a real face.
    box_points=((127, 234), (454, 356), (6, 197)),
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
    box_points=((0, 1), (15, 16), (28,)),
)

# The 110-point PFLD layout of SyncTalk_2D's and Ultralight's ``landmarks/N.lms`` files (0-based): 0-32 the
# face contour (image left to right, 1 and 31 at eye level, 16 the chin), 33-50 the brows, 51-54 the nose
# bridge, 55-65 the lower nose, 66-89 the eyes, 90-101 the outer lips, 102-109 the inner lips.
PFLD_110 = LandmarkScheme(
    name="pfld-110",
    num_points=110,
    jaw=tuple(range(0, 33)),
    outer_lips=tuple(range(90, 102)),
    nose_tip=54,
    left_eye=tuple(range(78, 90)),
    right_eye=tuple(range(66, 78)),
    box_points=((1,), (31,), (52,)),
)
