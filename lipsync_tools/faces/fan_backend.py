"""Face backend ``fan``: face-alignment's 2D FAN (68 iBUG points) on boxes from MediaPipe face detection.

face-alignment's own default detector (SFD) would download its weights, so boxes come from MediaPipe's
face detector instead, whose model ships inside the mediapipe wheel. The FAN network is built and run here
rather than through ``face_alignment.FaceAlignment``, which would try to download weights and compile the
network. Weights are looked up on disk only: nothing is ever downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lipsync_tools._quiet import native_stderr_silenced
from lipsync_tools.errors import BackendUnavailableError, CheckpointError, MissingWeightsError, UsageError
from lipsync_tools.faces.base import (
    FaceObservation,
    FaceOptions,
    LandmarkScheme,
    check_options,
    frame_to_rgb,
    import_mediapipe,
)
from lipsync_tools.faces.schemes import IBUG_68

FAN_WEIGHTS_FILE = "2DFAN4-11f355bf06.pth.tar"
FAN_WEIGHTS_URL = f"https://www.adrianbulat.com/downloads/python-fan/{FAN_WEIGHTS_FILE}"

# face-alignment's crop geometry (face_alignment.utils): a box of width w and height h becomes a square crop
# of side 200 * (w + h) / reference_scale around its centre, moved up by 0.12 h, resized to 256 px; FAN
# predicts 64 x 64 heatmaps of it. 195 is the reference scale for SFD's loose boxes; MediaPipe's boxes are
# tight (brows to chin), like YuNet's, for which face-alignment uses 165.
_CROP_RESOLUTION = 256
_HEATMAP_RESOLUTION = 64
_SCALE_FACTOR = 200.0
_CENTER_Y_OFFSET = 0.12
_REFERENCE_SCALE = 165.0

# ``options.extra`` keys this backend reads.
EXTRA_FLIP_INPUT = "fan_flip_input"  # "true": also run the mirrored crop and average (2x slower)
# "full" (default): MediaPipe's full-range detector; it finds the ~95 px astronaut face in a 1280 x 720 frame.
# "short": the short-range one FaceMesh uses; it misses faces narrower than ~15% of the frame width.
EXTRA_DETECTOR_MODEL = "fan_detector_model"
_DETECTOR_MODELS = {"short": 0, "full": 1}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def fan_weights_folders(weights_dir: Path | None) -> list[Path]:
    """Return the folders searched for the FAN weights, in order: ``weights_dir``, then the torch hub cache
    (``torch.hub.get_dir()/checkpoints``, i.e. ``$TORCH_HOME/hub/checkpoints``)."""
    import torch.hub

    folders = [] if weights_dir is None else [Path(weights_dir)]
    folders.append(Path(torch.hub.get_dir()) / "checkpoints")
    return folders


def find_fan_weights(weights_dir: Path | None) -> Path:
    """Return the path of ``2DFAN4-11f355bf06.pth.tar`` in the first folder that has it.

    Raises:
        MissingWeightsError: no searched folder has the file; the one-line message names the file, the
            folders, the URL to fetch it from by hand and the ``--weights-dir`` option.
    """
    folders = fan_weights_folders(weights_dir)
    for folder in folders:
        candidate = folder / FAN_WEIGHTS_FILE
        if candidate.is_file():
            return candidate
    searched = ", ".join(str(folder) for folder in folders)
    raise MissingWeightsError(
        f"the 'fan' face backend needs the weights file {FAN_WEIGHTS_FILE}, which is not in {searched}; "
        f"download it by hand from {FAN_WEIGHTS_URL} and put it in one of those folders, "
        f"or in a folder you pass with --weights-dir (nothing is downloaded automatically)"
    )


def _extra_flag(options: FaceOptions, key: str) -> bool:
    value = options.extra.get(key, "false").strip().lower()
    if value not in _TRUE | _FALSE:
        raise UsageError(f"face option {key} must be true or false, got {value!r}")
    return value in _TRUE


class FanFaceAligner:
    """Face backend ``fan``: 68 FAN landmarks (``ibug-68`` scheme) on MediaPipe face-detection boxes.

    Runs on the CPU under ``torch.inference_mode``. ``options.max_faces`` keeps the most confident boxes,
    ``options.min_confidence`` is the detector threshold, ``options.video_mode`` has no effect (every frame
    is detected afresh). ``options.extra`` may set ``fan_flip_input`` and ``fan_detector_model`` (see the
    module constants).
    """

    name = "fan"
    scheme: LandmarkScheme = IBUG_68

    def __init__(self, options: FaceOptions) -> None:
        """Find and load the FAN weights and build the face detector.

        Raises:
            MissingWeightsError: ``2DFAN4-11f355bf06.pth.tar`` is in neither ``options.weights_dir`` nor the
                torch hub cache.
            CheckpointError: the file is not a FAN-4 state dict.
            BackendUnavailableError: face-alignment, torch or mediapipe is not installed.
            UsageError: an option has a value this backend cannot use.
        """
        check_options(options)
        self._quiet = not options.debug
        self._flip_input = _extra_flag(options, EXTRA_FLIP_INPUT)
        detector_model = options.extra.get(EXTRA_DETECTOR_MODEL, "full")
        if detector_model not in _DETECTOR_MODELS:
            raise UsageError(
                f"face option {EXTRA_DETECTOR_MODEL} must be one of {sorted(_DETECTOR_MODELS)}, "
                f"got {detector_model!r}"
            )
        try:
            import torch
            from face_alignment.models import FAN
            from face_alignment.utils import crop, flip
        except ImportError as error:
            raise BackendUnavailableError(
                f"the 'fan' face backend needs face-alignment and torch, which cannot be imported ({error}); "
                "install the extra: pip install 'lipsync-tools[fan]' (or use --face-backend mediapipe, the "
                "default)"
            ) from error
        self._torch: Any = torch
        self._crop = crop
        self._flip = flip
        self._max_faces = options.max_faces

        weights_path = find_fan_weights(options.weights_dir)
        network = FAN(4)
        try:
            state_dict = torch.load(weights_path, map_location="cpu", weights_only=True)
            network.load_state_dict(state_dict)
        except Exception as error:  # torch raises RuntimeError, pickle/zip errors, EOFError... for bad files
            raise CheckpointError(
                f"{weights_path} is not a FAN-4 state dict ({type(error).__name__}: {error}); "
                f"replace it with {FAN_WEIGHTS_URL}"
            ) from error
        self._network: Any = network.eval()

        mediapipe = import_mediapipe(self.name, options.debug)
        with native_stderr_silenced(self._quiet):
            self._detector: Any = mediapipe.solutions.face_detection.FaceDetection(
                min_detection_confidence=options.min_confidence,
                model_selection=_DETECTOR_MODELS[detector_model],
            )
            # Makes the graph open its model (and log about it) now, inside the silenced block.
            self._detector.process(np.zeros((64, 64, 3), dtype=np.uint8))

    def detect(self, frame_bgr: np.ndarray) -> list[FaceObservation]:
        """Return the faces on one ``(H, W, 3)`` uint8 BGR frame, most confident first (may be empty).

        The box is the face detector's, float32 ``(x0, y0, x1, y1)`` clipped to the frame; the score is the
        detector's confidence; landmarks are float32 ``(68, 2)`` pixel ``(x, y)``.

        Raises:
            UsageError: the frame is not ``(H, W, 3)`` uint8, or the backend was closed.
        """
        if self._detector is None:
            raise UsageError("this fan face backend was closed; create a new one")
        rgb = frame_to_rgb(frame_bgr)
        boxes, scores = self._detect_boxes(rgb)
        if not boxes:
            return []
        landmarks = self._landmarks(rgb, boxes)
        return [
            FaceObservation(box=box, landmarks=points, score=score)
            for box, points, score in zip(boxes, landmarks, scores, strict=True)
        ]

    def _detect_boxes(self, rgb: np.ndarray) -> tuple[list[np.ndarray], list[float]]:
        height, width = rgb.shape[:2]
        with native_stderr_silenced(self._quiet):
            result = self._detector.process(rgb)
        found = []
        for detection in result.detections or ():
            relative = detection.location_data.relative_bounding_box
            box = np.array(
                [
                    relative.xmin * width,
                    relative.ymin * height,
                    (relative.xmin + relative.width) * width,
                    (relative.ymin + relative.height) * height,
                ],
                dtype=np.float32,
            )
            box = np.clip(box, 0, [width, height, width, height]).astype(np.float32)
            if box[2] > box[0] and box[3] > box[1]:
                found.append((float(detection.score[0]), box))
        found.sort(key=lambda item: -item[0])
        found = found[: self._max_faces]
        return [box for _, box in found], [score for score, _ in found]

    def _landmarks(self, rgb: np.ndarray, boxes: list[np.ndarray]) -> list[np.ndarray]:
        torch = self._torch
        centers = np.empty((len(boxes), 2), dtype=np.float64)
        sides = np.empty(len(boxes), dtype=np.float64)  # crop side in frame pixels
        crops = []
        for i, (x0, y0, x1, y1) in enumerate(boxes):
            center = np.array([(x0 + x1) / 2.0, (y0 + y1) / 2.0 - (y1 - y0) * _CENTER_Y_OFFSET])
            scale = float((x1 - x0) + (y1 - y0)) / _REFERENCE_SCALE
            centers[i] = center
            sides[i] = _SCALE_FACTOR * scale
            crops.append(self._crop(rgb, center, scale, float(_CROP_RESOLUTION)).transpose(2, 0, 1))
        batch = torch.from_numpy(np.stack(crops)).float().div_(255.0)
        with torch.inference_mode():
            heatmaps = self._network(batch)[-1]
            if self._flip_input:
                heatmaps = heatmaps + self._flip(self._network(self._flip(batch))[-1], is_label=True)
        points = _heatmap_peaks(heatmaps.numpy())  # (B, 68, 2) in heatmap pixels
        frame_points = points * (sides / _HEATMAP_RESOLUTION)[:, None, None]
        frame_points += (centers - sides[:, None] / 2.0)[:, None, :]
        return list(frame_points.astype(np.float32))

    def close(self) -> None:
        """Release the face detector and the network; calling it again does nothing."""
        if self._detector is not None:
            with native_stderr_silenced(self._quiet):
                self._detector.close()
            self._detector = None
            self._network = None

    def __enter__(self) -> FanFaceAligner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _heatmap_peaks(heatmaps: np.ndarray) -> np.ndarray:
    """Return ``(B, N, 2)`` float64 sub-pixel ``(x, y)`` peaks of ``(B, N, H, W)`` heatmaps.

    Vectorised form of ``face_alignment.utils.get_preds_fromhm`` (argmax, a quarter-pixel step towards the
    larger neighbour, half-pixel centre) without its numba JIT compile, which costs seconds per process,
    and without the integer truncation of its final transform.
    """
    batch, count, height, width = heatmaps.shape
    flat = heatmaps.reshape(batch, count, height * width).argmax(axis=-1)
    ys, xs = np.divmod(flat, width)
    points = np.stack([xs, ys], axis=-1).astype(np.float64)
    inner = (xs > 0) & (xs < width - 1) & (ys > 0) & (ys < height - 1)
    b, n = np.nonzero(inner)
    x, y = xs[b, n], ys[b, n]
    dx = heatmaps[b, n, y, x + 1] - heatmaps[b, n, y, x - 1]
    dy = heatmaps[b, n, y + 1, x] - heatmaps[b, n, y - 1, x]
    points[b, n, 0] += np.sign(dx) * 0.25
    points[b, n, 1] += np.sign(dy) * 0.25
    return points + 0.5
