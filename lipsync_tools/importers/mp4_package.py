"""The "mp4 video package" of the original lip-sync servers: a folder of videos rendered once per avatar.

Reads::

    package_info.json        {"package_type": "mp4_video_package", ...}; "fps" and a frame count
                             ("frame_count", "frames", "n_frames", "num_frames" or "total_frames") are
                             checked when present, other keys are ignored
    full_body_video.mp4      the full frames
    crops_328_video.mp4      the face crops, square, stored as the package's crops (they are what the
                             network was trained on; their size must be the family's crop size)
    rois_320_video.mp4       the network's inner region, and
    model_inputs_video.mp4   the masked network inputs: both must exist and have one frame per frame; their
                             pixels follow from the crops and are not read
    crop_rects.json          [[x1, y1, x2, y2], ...], one per frame, or
    cache/crop_rectangles.json  {"0": {"rect": [x1, y1, x2, y2]}, "1": ...}
    landmarks/N.lms          optional PFLD landmarks (blend masks from them; else the family's default mask)
    aud.wav                  optional: the speech; else full_body_video.mp4's own audio track
    aud_ave.npy              optional: padded AVE array [frames + 2, 512] (or aud_hu.npy / aud_wenet.npy)
    checkpoint/*.pth         optional: the trained network (the highest-numbered, or the only one)

Frame counts are counted from the containers' packets (nothing decoded) before the one decoding pass, in
which the full frames and the crops are decoded in lockstep.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ImportFormatError, NoAudioError
from ..faces.schemes import PFLD_110
from ..media.video import FrameReader, iter_frames, probe_video
from ..pipeline.build import file_sha256
from .base import (
    AvatarData,
    AvatarFolder,
    FrameRecord,
    ImportOptions,
    check_counts,
    check_rects,
    choose_model,
    feature_modes_present,
    find_checkpoint,
    frame_rate,
    read_features,
    read_lms,
)

LAYOUT = "an mp4 video package"
PACKAGE_TYPE = "mp4_video_package"
_COUNT_KEYS = ("frame_count", "frames", "n_frames", "num_frames", "total_frames")
_RECTS_HOLD = "its crop rectangles as crop_rects.json ([[x1, y1, x2, y2], ...], one per frame)"


def read_mp4_package(
    folder: Path,
    *,
    family: str | None,
    audio_mode: str | None,
    checkpoint: Path | None,
    audio: Path | None,
    options: ImportOptions,
) -> AvatarData:
    """Read and check an mp4 video package folder (see the module docstring)."""
    avatar = AvatarFolder(folder, LAYOUT)
    info = _package_info(avatar)
    full = avatar.require_file("full_body_video.mp4", "its full frames as full_body_video.mp4")
    crops = avatar.require_file(
        "crops_328_video.mp4", "its square face crops as crops_328_video.mp4, one per frame"
    )
    rois = avatar.require_file(
        "rois_320_video.mp4", "the network's inner regions as rois_320_video.mp4, one per frame"
    )
    inputs = avatar.require_file(
        "model_inputs_video.mp4", "the masked network inputs as model_inputs_video.mp4, one per frame"
    )
    full_info = probe_video(full)
    crops_info = probe_video(crops)
    n = _count_frames(full)
    counts = [(n, str(full))] + [(_count_frames(p), str(p)) for p in (crops, rois, inputs)]
    listed = next((info[k] for k in _COUNT_KEYS if _is_int(info.get(k))), None)
    if listed is not None:
        counts.append((int(listed), f"{avatar.path('package_info.json')} (its frame count)"))
    rects_raw, rects_source = _read_rects(avatar)
    counts.append((len(rects_raw), rects_source))
    check_counts(counts)
    rects = check_rects(np.asarray(rects_raw, np.float64), full_info.width, full_info.height, rects_source)

    landmarks = None
    if avatar.path("landmarks").is_dir():
        landmarks = np.empty((n, PFLD_110.num_points, 2), np.float32)
        for i in range(n):
            path = avatar.path(f"landmarks/{i}.lms")
            if not path.is_file():
                raise avatar.missing(
                    f"landmarks/{i}.lms",
                    "one landmarks file per video frame when it has landmarks/ (110 lines 'x y')",
                )
            landmarks[i] = read_lms(path, PFLD_110.num_points)

    if audio is None and avatar.path("aud.wav").is_file():
        audio = avatar.path("aud.wav")
    if audio is None and not full_info.has_audio:
        raise NoAudioError(
            f"{folder} has no aud.wav and {full.name} has no audio track; pass --audio FILE with the speech"
        )
    checkpoint = checkpoint or find_checkpoint(folder / "checkpoint")
    modes = feature_modes_present(avatar)
    fam, mode = choose_model(
        checkpoint,
        family,
        audio_mode,
        fallback_family="synctalk2d-328",
        feature_modes=modes,
        check=options.check_checkpoint,
    )
    if (crops_info.width, crops_info.height) != (fam.crop_size, fam.crop_size):
        raise ImportFormatError(
            f"{crops} holds {crops_info.width}x{crops_info.height} crops, but the {fam.name} family takes "
            f"{fam.crop_size}-pixel crops; these crops were made for another family (try --family "
            "synctalk2d-328)"
        )
    features, features_file = read_features(avatar, mode, n, str(full))

    fps = options.fps or (float(info["fps"]) if _is_number(info.get("fps")) else None)
    rate = frame_rate(fps) if fps is not None else full_info.frame_rate
    width, height, size = full_info.width, full_info.height, fam.crop_size

    def frames() -> Iterator[FrameRecord]:
        decoded_crops = iter_frames(crops)
        try:
            for index, image in enumerate(iter_frames(full)):
                crop = next(decoded_crops, None)
                if crop is None:
                    raise ImportFormatError(
                        f"{crops} decoded to {index} frames but {full} to more; both must hold {n} frames"
                    )
                if image.shape[:2] != (height, width) or crop.shape[:2] != (size, size):
                    raise ImportFormatError(
                        f"{full} or {crops} changes size at frame {index}; expected {width}x{height} frames "
                        f"and {size}x{size} crops throughout"
                    )
                yield FrameRecord(image=image, crop=crop)
        finally:
            decoded_crops.close()

    return AvatarData(
        kind="mp4_package",
        folder=folder,
        n_frames=n,
        width=width,
        height=height,
        frame_rate=rate,
        frames=frames,
        rects=rects,
        landmarks=landmarks,
        scheme=PFLD_110 if landmarks is not None else None,
        box_rule="synctalk2d",
        crop_interpolation="cubic",
        audio=audio or full,
        source_audio=file_sha256(audio) if audio is not None else None,
        source_video=file_sha256(full),
        source_name=full.name,
        features=features,
        features_file=features_file,
        checkpoint=checkpoint,
        family=fam,
        audio_mode=mode,
        notes={"package_type": info.get("package_type"), "rects_file": Path(rects_source).name},
    )


def _package_info(avatar: AvatarFolder) -> dict[str, Any]:
    holds = f'a package_info.json object with "package_type": "{PACKAGE_TYPE}"'
    path = avatar.require_file("package_info.json", holds)
    info = avatar.read_json(path, holds)
    if not isinstance(info, dict):
        raise ImportFormatError(f"{path} holds a JSON {type(info).__name__}; expected {holds}")
    kind = info.get("package_type")
    if kind is not None and kind != PACKAGE_TYPE:
        raise ImportFormatError(
            f"{path} says package_type {kind!r}; lipsync import reads {PACKAGE_TYPE!r} packages only"
        )
    return info


def _read_rects(avatar: AvatarFolder) -> tuple[list[Any], str]:
    """The rectangles as a list of 4-number lists and the file they came from."""
    plain = avatar.path("crop_rects.json")
    cached = avatar.path("cache/crop_rectangles.json")
    if plain.is_file():
        data = avatar.read_json(plain, _RECTS_HOLD)
        if not isinstance(data, list):
            raise ImportFormatError(f"{plain} holds a JSON {type(data).__name__}; expected {_RECTS_HOLD}")
        return [_rect(item, f"{plain} entry {i}") for i, item in enumerate(data)], str(plain)
    if cached.is_file():
        holds = 'its crop rectangles as {"0": {"rect": [x1, y1, x2, y2]}, ...}, one per frame'
        data = avatar.read_json(cached, holds)
        if not isinstance(data, dict):
            raise ImportFormatError(f"{cached} holds a JSON {type(data).__name__}; expected {holds}")
        rects = []
        for i in range(len(data)):
            entry = data.get(str(i))
            if not isinstance(entry, dict) or "rect" not in entry:
                raise ImportFormatError(f'{cached} has no entry "{i}" with a "rect"; expected {holds}')
            rects.append(_rect(entry["rect"], f'{cached} entry "{i}"'))
        return rects, str(cached)
    raise avatar.missing("crop_rects.json", _RECTS_HOLD + " (or cache/crop_rectangles.json)")


def _rect(value: Any, where: str) -> list[float]:
    if not (isinstance(value, list) and len(value) == 4 and all(_is_number(v) for v in value)):
        raise ImportFormatError(f"{where} is {str(value)[:60]}; expected four numbers [x1, y1, x2, y2]")
    return [float(v) for v in value]


def _count_frames(path: Path) -> int:
    with FrameReader(path) as reader:
        return len(reader)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)
