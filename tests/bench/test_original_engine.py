"""The original per-frame path (baseline/original.py): every stage per request, on the real talking head."""

from __future__ import annotations

import asyncio
from pathlib import Path

import cv2
import numpy as np
import pytest

from lipsync_tools.baseline.original import ORIGINAL_STAGES, OriginalEngine, VideoStore
from lipsync_tools.engine import load_inference_backend
from lipsync_tools.engine.requests import AudioKind, EngineRequest, ImageKind
from lipsync_tools.errors import RequestError
from lipsync_tools.media import FrameReader


def _noise(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-8000, 8000, 3200, dtype=np.int16)


@pytest.fixture(scope="module")
def engine(talking_head_mp4: Path):
    store = VideoStore(audio=talking_head_mp4)
    store.load("head", talking_head_mp4)
    backend, _ = load_inference_backend("identity", warmup_batches=())
    engine = OriginalEngine(store, backend)
    engine.warm_up()
    yield engine
    asyncio.run(engine.stop())


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_every_stage_runs_per_request_and_the_identity_frame_comes_back(engine, talking_head_mp4: Path):
    request = EngineRequest(
        package_id="head", frame_index=30, audio=AudioKind.PCM16, samples=_noise(), image=ImageKind.PNG
    )
    reply = engine.render_sync(request)
    assert list(reply.timings) == list(ORIGINAL_STAGES)
    assert reply.timings["detect"] > 0 and reply.timings["decode"] > 0 and reply.timings["features"] > 0
    assert (reply.width, reply.height, reply.frame_index, reply.image) == (176, 144, 30, ImageKind.PNG)
    image = cv2.imdecode(np.frombuffer(reply.payload, np.uint8), cv2.IMREAD_COLOR)
    with FrameReader(talking_head_mp4) as reader:
        source = reader.read(30)
    # identity model + the pipeline's own crop/mask/composite: the frame comes back (crop resampling only)
    assert _psnr(image, source) > 35


def test_crop_only_reply_carries_the_rectangle(engine):
    request = EngineRequest(
        package_id="head", frame_index=3, audio=AudioKind.PCM16, samples=_noise(1), image=ImageKind.CROP_ONLY
    )
    reply = engine.render_sync(request)
    assert (reply.width, reply.height) == (96, 96) and len(reply.payload) == 96 * 96 * 3
    x0, y0, x1, y1 = reply.rect
    assert 0 <= x0 < x1 <= 176 and 0 <= y0 < y1 <= 144 and x1 - x0 == y1 - y0


def test_replay_audio_is_cut_from_the_raw_audio_file(engine):
    reply = engine.render_sync(EngineRequest(package_id="head", frame_index=60, audio=AudioKind.REPLAY))
    assert reply.timings["features"] > 0 and reply.width == 176


@pytest.mark.parametrize(
    ("request_fields", "reason"),
    [
        ({"package_id": "nope", "frame_index": 0}, "unknown_package"),
        ({"package_id": "head", "frame_index": 120}, "frame_out_of_range"),
    ],
)
def test_bad_requests_are_request_errors(engine, request_fields, reason):
    with pytest.raises(RequestError) as info:
        engine.render_sync(EngineRequest(audio=AudioKind.PCM16, samples=_noise(), **request_fields))
    assert info.value.reason == reason


def test_replay_without_audio_file_is_bad_audio(talking_head_mp4: Path):
    store = VideoStore()
    info = store.load("head", talking_head_mp4)
    assert info.n_frames == 120 and (info.width, info.height) == (176, 144) and info.to_dict()["original"]
    backend, _ = load_inference_backend("identity", warmup_batches=())
    engine = OriginalEngine(store, backend)
    try:
        with pytest.raises(RequestError) as error:
            engine.render_sync(EngineRequest(package_id="head", frame_index=0, audio=AudioKind.REPLAY))
        assert error.value.reason == "bad_audio" and "--audio" in str(error.value)
    finally:
        asyncio.run(engine.stop())
    with pytest.raises(RequestError):
        store.load("head", talking_head_mp4)  # the id is taken
