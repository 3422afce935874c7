"""SyncTalk_2D and Ultralight-Digital-Human dataset folders (what their ``data_utils/process.py`` leaves).

Reads::

    full_body_img/N.jpg      the video's frames, N = 0 .. frames-1 (.png also accepted)
    landmarks/N.lms          110 PFLD landmarks per frame, one "x y" line each
    aud.wav                  the video's speech (or --audio FILE)
    aud_ave.npy              optional: SyncTalk_2D's padded AVE array [frames + 2, 512]
    aud_hu.npy/aud_wenet.npy optional: Ultralight's HuBERT [frames, 2, 1024] / WeNet [frames, 16, 512] rows
    checkpoint/**/N.pth      optional: the trained network, the highest-numbered epoch (or --checkpoint)

Crop rectangles follow SyncTalk_2D's rule on the files' own landmarks, exactly
``[lms[1].x, lms[52].y, lms[31].x, lms[52].y + lms[31].x - lms[1].x]``
(:func:`~lipsync_tools.pipeline.crop.synctalk2d_rectangles` with
:data:`~lipsync_tools.faces.schemes.PFLD_110`; a box that would leave the frame is shifted back inside, as
in a build, and the manifest's ``build_options.rects_shifted_inside`` counts those frames).
Crops are cut at the family's size with INTER_CUBIC, as SyncTalk_2D's inference does; blend masks come from
the landmarks. The frame rate is 25 unless ``--fps`` says otherwise: SyncTalk_2D's preprocessing resamples
every video to 25 fps.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import ImportFormatError
from ..faces.schemes import PFLD_110
from ..pipeline.build import file_sha256
from ..pipeline.crop import synctalk2d_rectangles
from .base import (
    FRAME_EXTENSIONS,
    AvatarData,
    AvatarFolder,
    FrameRecord,
    ImportOptions,
    check_rects,
    choose_model,
    decode_image_file,
    feature_modes_present,
    find_checkpoint,
    frame_rate,
    read_features,
    read_lms,
)

LAYOUT = "a SyncTalk_2D dataset"
DEFAULT_FPS = 25.0
_FRAMES_HOLD = "its video frames as full_body_img/N.jpg (N = 0, 1, ...)"
_LMS_HOLD = "one landmarks file per frame in full_body_img/ (110 lines 'x y')"


def read_synctalk(
    folder: Path,
    *,
    family: str | None,
    audio_mode: str | None,
    checkpoint: Path | None,
    audio: Path | None,
    options: ImportOptions,
) -> AvatarData:
    """Read and check a SyncTalk_2D/Ultralight dataset folder (see the module docstring)."""
    avatar = AvatarFolder(folder, LAYOUT)
    images = avatar.numbered_files("full_body_img", tuple(FRAME_EXTENSIONS), _FRAMES_HOLD)
    n = len(images)
    landmarks = _read_landmarks(avatar, images)
    audio_path = audio or avatar.require_file(
        "aud.wav", "its speech as aud.wav (the audio of the video its frames came from), or pass --audio FILE"
    )
    checkpoint = checkpoint or find_checkpoint(folder / "checkpoint")
    modes = feature_modes_present(avatar)
    # aud_ave.npy is SyncTalk_2D's; HuBERT/WeNet arrays alone are Ultralight's.
    fallback = "synctalk2d-328" if "ave" in modes or not modes else "ultralight-160"
    fam, mode = choose_model(
        checkpoint,
        family,
        audio_mode,
        fallback_family=fallback,
        feature_modes=modes,
        check=options.check_checkpoint,
    )
    features, features_file = read_features(avatar, mode, n, str(folder / "full_body_img"))

    first = decode_image_file(images[0], images[0].read_bytes(), _FRAMES_HOLD)
    height, width = first.shape[:2]
    side = landmarks[:, 31, 0] - landmarks[:, 1, 0]
    if (side < 2).any():
        i = int(np.argmax(side < 2))
        raise ImportFormatError(
            f"{_lms_path(folder, images[i])}: point 31 (x {landmarks[i, 31, 0]:g}) is not right of point 1 "
            f"(x {landmarks[i, 1, 0]:g}); expected PFLD's 110 points, 1 and 31 the face's edges at eye level"
        )
    rects = synctalk2d_rectangles(landmarks, (width, height), PFLD_110)
    rects = check_rects(rects, width, height, str(folder / "landmarks"))
    exact = np.rint(landmarks[:, 1, 0]).astype(np.int64), np.rint(landmarks[:, 52, 1]).astype(np.int64)
    shifted = int(((rects[:, 0] != exact[0]) | (rects[:, 1] != exact[1])).sum())

    def frames() -> Iterator[FrameRecord]:
        for path in images:
            data = path.read_bytes()
            image = decode_image_file(path, data, _FRAMES_HOLD)
            if image.shape[:2] != (height, width):
                raise ImportFormatError(
                    f"{path} is {image.shape[1]}x{image.shape[0]}; frame 0 ({images[0].name}) is "
                    f"{width}x{height}: every frame of {folder / 'full_body_img'} must have one size"
                )
            yield FrameRecord(image=image, file_bytes=data, file_codec=FRAME_EXTENSIONS[path.suffix.lower()])

    return AvatarData(
        kind="synctalk",
        folder=folder,
        n_frames=n,
        width=width,
        height=height,
        frame_rate=frame_rate(options.fps or DEFAULT_FPS),
        frames=frames,
        rects=rects,
        landmarks=landmarks,
        scheme=PFLD_110,
        box_rule="synctalk2d",
        crop_interpolation="cubic",
        audio=audio_path,
        source_audio=file_sha256(audio_path),
        source_video=None,
        source_name="full_body_img/",
        features=features,
        features_file=features_file,
        checkpoint=checkpoint,
        family=fam,
        audio_mode=mode,
        notes={"rects_shifted_inside": shifted},
    )


def _lms_path(folder: Path, image: Path) -> Path:
    return folder / "landmarks" / f"{int(image.stem)}.lms"


def _read_landmarks(avatar: AvatarFolder, images: list[Path]) -> np.ndarray:
    """float32 ``(N, 110, 2)`` from ``landmarks/i.lms`` for every frame ``i`` (the image's own stem when
    its name is zero-padded); more .lms files than frames is a count mismatch."""
    folder = avatar.require_dir("landmarks", _LMS_HOLD)
    n = len(images)
    landmarks = np.empty((n, PFLD_110.num_points, 2), np.float32)
    for i, image in enumerate(images):
        path = folder / f"{i}.lms"
        if not path.is_file() and (folder / f"{image.stem}.lms").is_file():
            path = folder / f"{image.stem}.lms"
        if not path.is_file():
            raise avatar.missing(f"landmarks/{i}.lms", _LMS_HOLD)
        landmarks[i] = read_lms(path, PFLD_110.num_points)
    extra = sum(1 for p in folder.glob("*.lms") if p.stem.isdigit()) - n
    if extra > 0:
        raise ImportFormatError(
            f"frame counts disagree: {folder} holds {n + extra} .lms files but "
            f"{avatar.path('full_body_img')} holds {n} frames; a SyncTalk_2D dataset has one landmarks file "
            "per frame"
        )
    return landmarks
