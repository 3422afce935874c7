"""Build the avatar folders other tools leave, from real frames (the astronaut photo drifting, as in
:func:`tests.samples.astronaut_frames`) and real speech, the way those tools write them.

Landmarks are a PFLD-110 template placed on the astronaut's face (measured once with MediaPipe: ears at
x 0.35 / 0.53 of the photo's side at y 0.21, nose tip y 0.25, mouth y 0.28, chin y 0.34), whole pixels as
PFLD writes them, following the photo's drift frame by frame.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import cv2
import numpy as np

from lipsync_tools.media.audio import load_audio
from tests import samples

N_FRAMES = 12
FRAME_SIZE = (320, 240)  # (width, height)
FPS = 25


def frames(n: int = N_FRAMES, size: tuple[int, int] = FRAME_SIZE) -> list[np.ndarray]:
    return list(samples.astronaut_frames(n, size))


def _photo_origin(index: int, size: tuple[int, int]) -> tuple[int, int]:
    """Where the photo's top-left corner lands in frame ``index`` (astronaut_frames' geometry)."""
    width, height = size
    margin = 6
    canvas_w = max(width, height) + 2 * margin
    dx = round(margin * np.sin(2 * np.pi * index / 25))
    dy = round(margin * 0.5 * np.cos(2 * np.pi * index / 20))
    x0 = (canvas_w - height) // 2 + dx
    left = (canvas_w - width) // 2
    return x0 - left, dy


def _ellipse(cx: float, cy: float, ax: float, ay: float, k: int) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, k, endpoint=False)
    return np.stack([cx + ax * np.cos(t), cy + ay * np.sin(t)], 1)


def pfld_landmarks(index: int, size: tuple[int, int] = FRAME_SIZE) -> np.ndarray:
    """float32 (110, 2) whole-pixel PFLD landmarks of frame ``index``: 0-32 contour (1 and 31 at eye level,
    16 the chin), 33-50 brows, 51-54 nose bridge (52 its middle, 54 the tip), 55-65 lower nose, 66-89 eyes,
    90-101 outer lips, 102-109 inner lips."""
    cx, half, e0, chin = 0.439, 0.089, 0.200, 0.342
    t = np.arange(33) / 32
    contour = np.stack([cx - half * np.cos(np.pi * t), e0 + (chin - e0) * np.sin(np.pi * t)], 1)
    brow = np.linspace(0.012, 0.075, 9)
    brows = np.concatenate(
        [np.stack([cx - brow[::-1], np.full(9, 0.19)], 1), np.stack([cx + brow, np.full(9, 0.19)], 1)]
    )
    bridge = np.stack([np.full(4, cx), [0.205, 0.225, 0.240, 0.254]], 1)
    lower_nose = np.stack(
        [cx + np.linspace(-0.02, 0.02, 11), 0.256 + 0.004 * np.sin(np.linspace(0, np.pi, 11))], 1
    )
    eyes = np.concatenate(
        [_ellipse(cx - 0.04, 0.212, 0.018, 0.006, 12), _ellipse(cx + 0.04, 0.212, 0.018, 0.006, 12)]
    )
    lips = np.concatenate([_ellipse(cx, 0.283, 0.043, 0.016, 12), _ellipse(cx, 0.283, 0.030, 0.006, 8)])
    points = np.concatenate([contour, brows, bridge, lower_nose, eyes, lips])
    assert points.shape == (110, 2)
    ox, oy = _photo_origin(index, size)
    height = size[1]
    return np.rint(points * height + [ox, oy]).astype(np.float32)


def synctalk_rect(lms: np.ndarray) -> list[int]:
    """SyncTalk_2D's box, written out: [lms[1].x, lms[52].y, lms[31].x, lms[52].y + lms[31].x - lms[1].x]."""
    x1, y1, x2 = int(lms[1, 0]), int(lms[52, 1]), int(lms[31, 0])
    return [x1, y1, x2, y1 + x2 - x1]


def write_lms(path: Path, lms: np.ndarray) -> None:
    path.write_text("".join(f"{int(x)} {int(y)}\n" for x, y in lms))


def speech_pcm(speech_wav: Path, n: int = N_FRAMES) -> np.ndarray:
    """The first ``n`` frames' worth of speech, float32 (1, samples) at 16 kHz."""
    pcm = load_audio(speech_wav, 16000)[: round(n / FPS * 16000)]
    return pcm[None]


def write_wav(path: Path, pcm: np.ndarray) -> Path:
    import av

    with av.open(str(path), "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(pcm, np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate = 16000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def make_synctalk(
    root: Path,
    speech_wav: Path,
    *,
    features: str | None = "ave",
    checkpoints: dict[str, bytes] | None = None,
) -> Path:
    """A SyncTalk_2D dataset folder: full_body_img/N.jpg, landmarks/N.lms, aud.wav, optional feature array
    (``"ave"``: aud_ave.npy [N + 2, 512]; ``"hubert"``: aud_hu.npy [N, 2, 1024]) and checkpoints
    (relative path -> bytes)."""
    (root / "full_body_img").mkdir(parents=True)
    (root / "landmarks").mkdir()
    for i, frame in enumerate(frames()):
        cv2.imwrite(str(root / "full_body_img" / f"{i}.jpg"), frame)
        write_lms(root / "landmarks" / f"{i}.lms", pfld_landmarks(i))
    write_wav(root / "aud.wav", speech_pcm(speech_wav))
    rng = np.random.default_rng(7)
    if features == "ave":
        np.save(root / "aud_ave.npy", rng.standard_normal((N_FRAMES + 2, 512)).astype(np.float32))
    elif features == "hubert":
        np.save(root / "aud_hu.npy", rng.standard_normal((N_FRAMES, 2, 1024)).astype(np.float32))
    for relative, data in (checkpoints or {}).items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    return root


def reference_crops(size: int = 328) -> tuple[list[np.ndarray], np.ndarray]:
    """The frames and SyncTalk_2D's crops of them (INTER_CUBIC at ``size``), as its inference cuts them."""
    images = frames()
    rects = np.array([synctalk_rect(pfld_landmarks(i)) for i in range(N_FRAMES)])
    crops = np.stack(
        [
            cv2.resize(im[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_CUBIC)
            for im, (x0, y0, x1, y1) in zip(images, rects, strict=True)
        ]
    )
    return images, crops


def make_mp4_package(
    root: Path,
    speech_wav: Path,
    *,
    rects_file: str = "crop_rects.json",
    landmarks: bool = True,
    aud_wav: bool = False,
    checkpoint: bytes = b"synctalk2d-328 network (test bytes)",
) -> Path:
    """The original servers' mp4 video package for the astronaut frames (328 crops, SyncTalk_2D's rule)."""
    root.mkdir(parents=True)
    images, crops = reference_crops(328)
    rects = [synctalk_rect(pfld_landmarks(i)) for i in range(N_FRAMES)]
    pcm = speech_pcm(speech_wav)
    samples.write_test_video(root / "full_body_video.mp4", images, FPS, pcm, 16000)
    samples.write_test_video(root / "crops_328_video.mp4", list(crops), FPS)
    rois = [np.ascontiguousarray(c[4:324, 4:324]) for c in crops]
    samples.write_test_video(root / "rois_320_video.mp4", rois, FPS)
    masked = [cv2.rectangle(r.copy(), (5, 5, 310, 305), (0, 0, 0), -1) for r in rois]
    samples.write_test_video(root / "model_inputs_video.mp4", masked, FPS)
    info = {"package_type": "mp4_video_package", "fps": FPS, "frame_count": N_FRAMES, "crop_size": 328}
    (root / "package_info.json").write_text(json.dumps(info))
    if rects_file == "crop_rects.json":
        (root / "crop_rects.json").write_text(json.dumps(rects))
    else:
        (root / "cache").mkdir()
        cached = {str(i): {"rect": r, "frame": i} for i, r in enumerate(rects)}
        (root / "cache" / "crop_rectangles.json").write_text(json.dumps(cached))
    if landmarks:
        (root / "landmarks").mkdir()
        for i in range(N_FRAMES):
            write_lms(root / "landmarks" / f"{i}.lms", pfld_landmarks(i))
    if aud_wav:
        write_wav(root / "aud.wav", pcm)
    np.save(
        root / "aud_ave.npy", np.random.default_rng(3).standard_normal((N_FRAMES + 2, 512)).astype(np.float32)
    )
    (root / "checkpoint").mkdir()
    (root / "checkpoint" / "avatar.pth").write_bytes(checkpoint)
    return root


def make_livetalking(root: Path, *, kind: str = "ultralight", checkpoint: bytes | None = None) -> Path:
    """A LiveTalking avatar as its genavatar.py writes it.

    ``ultralight``: square SyncTalk_2D boxes, 168-pixel crops, coords ``(x1, y1, x2, y2)`` as NumPy int32
    scalars (its landmarks are np.int32), ``ultralight.pth`` when ``checkpoint`` is given. ``wav2lip``:
    face-detector boxes taller than wide, squashed to 96x96 crops, coords ``(y1, y2, x1, x2)`` as ints.
    """
    (root / "full_imgs").mkdir(parents=True)
    (root / "face_imgs").mkdir()
    coords: list[tuple[object, ...]] = []
    for i, frame in enumerate(frames()):
        cv2.imwrite(str(root / "full_imgs" / f"{i:08d}.png"), frame)
        x0, y0, x1, y1 = synctalk_rect(pfld_landmarks(i))
        if kind == "ultralight":
            crop = cv2.resize(frame[y0:y1, x0:x1], (168, 168))
            coords.append((np.int32(x0), np.int32(y0), np.int32(x1), np.int32(y1)))
        else:
            y0, y1 = y0 - 20, y1 + 4  # a detector box: taller than wide
            crop = cv2.resize(frame[y0:y1, x0:x1], (96, 96))
            coords.append((y0, y1, x0, x1))
        cv2.imwrite(str(root / "face_imgs" / f"{i:08d}.png"), crop)
    (root / "coords.pkl").write_bytes(pickle.dumps(coords))
    if checkpoint is not None:
        (root / "ultralight.pth").write_bytes(checkpoint)
    return root
