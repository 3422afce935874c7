"""The default face backend: MediaPipe FaceMesh (468 points, models shipped inside the mediapipe wheel).

Uses the legacy ``mp.solutions.face_mesh`` API of mediapipe 0.10.21, the last release whose wheel contains
the face models, so nothing is downloaded.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lipsync_tools._quiet import native_stderr_silenced
from lipsync_tools.errors import UsageError
from lipsync_tools.faces.base import (
    FaceObservation,
    FaceOptions,
    LandmarkScheme,
    check_options,
    frame_to_rgb,
    import_mediapipe,
)
from lipsync_tools.faces.schemes import MEDIAPIPE_468

# FaceMesh reports no per-face confidence; every face it returns passed ``min_detection_confidence`` (or
# is being tracked), so it is reported with this score and ties are broken by face size.
FACE_MESH_SCORE = 1.0


class MediaPipeFaceMesh:
    """Face backend ``mediapipe``: FaceMesh landmarks in the ``mediapipe-468`` scheme.

    ``options.video_mode`` turns on FaceMesh tracking between consecutive frames (``static_image_mode`` is
    its negation); ``max_faces`` and ``min_confidence`` map to ``max_num_faces`` and
    ``min_detection_confidence``. Each instance owns its FaceMesh graph; call :meth:`close` to release it.
    """

    name = "mediapipe"
    scheme: LandmarkScheme = MEDIAPIPE_468

    def __init__(self, options: FaceOptions) -> None:
        """Build the FaceMesh graph.

        Raises:
            UsageError: ``max_faces`` < 1 or ``min_confidence`` outside [0, 1].
            BackendUnavailableError: mediapipe is not installed.
        """
        check_options(options)
        self._quiet = not options.debug
        mediapipe = import_mediapipe(self.name, options.debug)
        with native_stderr_silenced(self._quiet):
            self._mesh: Any = mediapipe.solutions.face_mesh.FaceMesh(
                static_image_mode=not options.video_mode,
                max_num_faces=options.max_faces,
                refine_landmarks=False,
                min_detection_confidence=options.min_confidence,
            )
            # The graph opens its TFLite models on worker threads, which log as they do; one blocking call
            # here makes that happen inside the silenced block, not during someone else's output.
            self._mesh.process(np.zeros((64, 64, 3), dtype=np.uint8))

    def detect(self, frame_bgr: np.ndarray) -> list[FaceObservation]:
        """Return the faces on one ``(H, W, 3)`` uint8 BGR frame, largest first (may be empty).

        Landmarks are float32 ``(468, 2)`` pixel ``(x, y)``; the box is their extent, float32
        ``(x0, y0, x1, y1)``; the score is :data:`FACE_MESH_SCORE`.

        Raises:
            UsageError: the frame is not ``(H, W, 3)`` uint8, or the backend was closed.
        """
        if self._mesh is None:
            raise UsageError("this mediapipe face backend was closed; create a new one")
        rgb = frame_to_rgb(frame_bgr)
        height, width = rgb.shape[:2]
        with native_stderr_silenced(self._quiet):
            result = self._mesh.process(rgb)
        faces = []
        scale = np.array([width, height], dtype=np.float32)
        for face in result.multi_face_landmarks or ():
            normalized = np.array([(point.x, point.y) for point in face.landmark], dtype=np.float32)
            landmarks = normalized * scale
            box = np.concatenate([landmarks.min(axis=0), landmarks.max(axis=0)]).astype(np.float32)
            faces.append(FaceObservation(box=box, landmarks=landmarks, score=FACE_MESH_SCORE))
        faces.sort(key=lambda face: -float((face.box[2] - face.box[0]) * (face.box[3] - face.box[1])))
        return faces

    def close(self) -> None:
        """Release the FaceMesh graph; calling it again does nothing."""
        if self._mesh is not None:
            with native_stderr_silenced(self._quiet):
                self._mesh.close()
            self._mesh = None

    def __enter__(self) -> MediaPipeFaceMesh:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
