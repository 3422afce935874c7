"""The engine's per-frame path: formats, audio kinds, errors, batching, queue bound, no file access."""

from __future__ import annotations

import asyncio
import builtins
import io
import os
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from lipsync_tools.engine import STAGES, Engine, EngineOptions, PackageStore, composite_crop, composite_frame
from lipsync_tools.engine.requests import AudioKind, EngineRequest, EngineResult, ImageKind
from lipsync_tools.errors import RequestError
from lipsync_tools.media.images import decode_image, encode_image
from lipsync_tools.models import InferenceBackend

from .conftest import PACKAGE_ID, raw_pixels


def request(index: int, image: ImageKind = ImageKind.RAW_BGR, audio: AudioKind = AudioKind.REPLAY,
            samples: np.ndarray | None = None) -> EngineRequest:
    return EngineRequest(package_id=PACKAGE_ID, frame_index=index, audio=audio, samples=samples, image=image,
                         jpeg_quality=80)


def speech_pcm(store: PackageStore, index: int) -> np.ndarray:
    """The package's own 3200-sample PCM window for frame ``index`` (200 samples per mel column)."""
    package = store.get(PACKAGE_ID)
    start = package.mel_starts[index] * 200
    return np.ascontiguousarray(package.package.pcm[start : start + 3200])


class RecordingObserver:
    def __init__(self) -> None:
        self.stages: list[tuple[str, float]] = []
        self.batches: list[int] = []
        self.depths: list[int] = []

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stages.append((stage, seconds))

    def observe_batch(self, size: int) -> None:
        self.batches.append(size)

    def set_queue_depth(self, depth: int) -> None:
        self.depths.append(depth)


class SlowBackend:
    """Wraps a backend; each call waits ``delay`` s or until ``gate`` is set; records batch sizes."""

    def __init__(self, inner: InferenceBackend, delay: float = 0.0, gate: threading.Event | None = None):
        self.inner, self.delay, self.gate = inner, delay, gate
        self.name, self.crop_size = "slow", inner.crop_size
        self.family, self.audio_mode = inner.family, inner.audio_mode
        self.sizes: list[int] = []

    def infer(self, crops: np.ndarray, mels: np.ndarray) -> np.ndarray:
        self.sizes.append(crops.shape[0])
        if self.gate is not None:
            self.gate.wait(10)
        time.sleep(self.delay)
        return self.inner.infer(crops, mels)

    def run_network(self, faces: np.ndarray, mels: np.ndarray) -> np.ndarray:
        return self.inner.run_network(faces, mels)


# --- formats ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("image", [ImageKind.JPEG, ImageKind.PNG, ImageKind.RAW_BGR])
def test_every_image_format_decodes_to_the_frame_size(engine: Engine, image: ImageKind):
    (reply,) = engine.process_batch_sync([request(3, image)])
    assert (reply.frame_index, reply.image) == (3, image)
    assert (reply.width, reply.height) == (176, 144) and reply.rect is None and not reply.silence
    pixels = raw_pixels(reply) if image is ImageKind.RAW_BGR else decode_image(bytes(reply.payload))
    assert pixels.shape == (144, 176, 3)
    assert list(reply.timings) == list(STAGES)


def test_crop_only_reply(engine: Engine, store: PackageStore):
    (reply,) = engine.process_batch_sync([request(10, ImageKind.CROP_ONLY)])
    package = store.get(PACKAGE_ID)
    assert reply.image is ImageKind.CROP_ONLY and (reply.width, reply.height) == (96, 96)
    assert reply.rect == package.rects[10]
    crop = raw_pixels(reply)
    # identity model: the blended crop is the package's crop (blendLinear rounds to +-1 level)
    assert np.abs(crop.astype(int) - package.crops[10].astype(int)).max() <= 1


class InvertingBackend(SlowBackend):
    """Answers ``255 - crop``, a generated crop unlike the package's (so the blend has work everywhere), and
    keeps what it answered."""

    def __init__(self, inner: InferenceBackend) -> None:
        super().__init__(inner)
        self.generated: list[np.ndarray] = []

    def infer(self, crops: np.ndarray, mels: np.ndarray) -> np.ndarray:
        out = 255 - np.asarray(super().infer(crops, mels))
        self.generated.extend(np.array(row) for row in out)
        return out


@pytest.mark.parametrize("blend", ["feather", "hard"])
def test_replies_are_the_bytes_of_the_one_shot_composite(
    store: PackageStore, identity_backend: InferenceBackend, blend: str
):
    """Load-time masks and reused frame buffers (per post worker) change no byte of any format against the
    one-shot ``composite_frame``/``composite_crop``; a raw reply is never a reused buffer (later frames would
    overwrite it); and every pixel is within 1 grey level of the compositor before issue 12 part 3."""
    from .test_compositor import reference_composite_crop, reference_composite_frame

    package = store.get(PACKAGE_ID)
    formats = [ImageKind.JPEG, ImageKind.RAW_BGR, ImageKind.PNG, ImageKind.CROP_JPEG, ImageKind.CROP_ONLY]
    requests = [request(i, image) for i in (0, 5, 77, 119) for image in formats]

    def expected(req: EngineRequest, generated: np.ndarray) -> bytes:
        i = req.frame_index
        mask = package.blend_masks[i] if blend == "feather" else None
        if req.image.is_crop:
            image = composite_crop(package.crops[i], generated, mask)
            old = reference_composite_crop(package.crops[i], generated, mask)
        else:
            image = composite_frame(package.frames[i], generated, mask, package.rects[i])
            old = reference_composite_frame(package.frames[i], generated, mask, package.rects[i])
        assert np.abs(image.astype(np.int16) - old).max() <= (1 if mask is not None else 0)
        if req.image in (ImageKind.JPEG, ImageKind.CROP_JPEG):
            return encode_image(image, "jpeg", req.jpeg_quality)
        if req.image is ImageKind.PNG:
            return encode_image(image, "png", png_compression=1)
        return image.tobytes()

    backend = InvertingBackend(identity_backend)
    replies = Engine(store, backend, EngineOptions(max_batch=4, blend=blend)).process_batch_sync(requests)
    for req, reply, generated in zip(requests, replies, backend.generated, strict=True):
        assert (reply.frame_index, reply.image) == (req.frame_index, req.image)
        assert bytes(reply.payload) == expected(req, generated), (req.frame_index, req.image)

    pooled = InvertingBackend(identity_backend)
    engine = Engine(store, pooled, EngineOptions(max_batch=3, max_wait_ms=20.0, blend=blend, post_workers=2))

    async def scenario() -> list[EngineResult]:
        await engine.start()
        try:
            return list(await asyncio.gather(*(engine.process(r) for r in requests)))
        finally:
            await engine.stop()

    # the pool's workers: the same bytes (the network is per crop); each caller gets its own request's frame
    for req, reply, alone in zip(requests, asyncio.run(scenario()), replies, strict=True):
        assert (reply.frame_index, reply.image) == (req.frame_index, req.image)
        assert bytes(reply.payload) == bytes(alone.payload)


def test_audio_kinds_give_the_same_frame_for_the_same_window(engine: Engine, store: PackageStore):
    mel = np.ascontiguousarray(store.get(PACKAGE_ID).mel_window(20))
    replies = engine.process_batch_sync([
        request(20),
        request(20, audio=AudioKind.MEL, samples=mel),
        request(20, audio=AudioKind.PCM16, samples=speech_pcm(store, 20)),
    ])
    assert [(r.frame_index, r.image) for r in replies] == [(20, ImageKind.RAW_BGR)] * 3
    # the identity model ignores audio: all three composite the same frame
    assert bytes(replies[0].payload) == bytes(replies[1].payload) == bytes(replies[2].payload)


def test_features_follow_the_request(store: PackageStore, identity_backend: InferenceBackend):
    """The mel window that reaches the model is the package's (replay), the payload's (mel) or the PCM's."""
    seen: list[np.ndarray] = []

    class Spy(SlowBackend):
        def infer(self, crops: np.ndarray, mels: np.ndarray) -> np.ndarray:
            seen.extend(np.array(m[0]) for m in mels)
            return super().infer(crops, mels)

    engine = Engine(store, Spy(identity_backend), EngineOptions(max_batch=4))
    own = np.array(store.get(PACKAGE_ID).mel_window(40))
    custom = np.full((80, 16), -1.5, np.float32)
    pcm = speech_pcm(store, 40)
    engine.process_batch_sync([
        request(40),
        request(40, audio=AudioKind.MEL, samples=custom),
        request(40, audio=AudioKind.PCM16, samples=pcm),
    ])
    assert np.array_equal(seen[0], own) and np.array_equal(seen[1], custom)
    # a standalone 200 ms window matches the package's spectrogram away from its two edges
    assert np.abs(seen[2][:, 2:14] - own[:, 2:14]).max() < 0.05


# --- errors -----------------------------------------------------------------------------------------------


def reason_of(engine: Engine, req: EngineRequest) -> str:
    with pytest.raises(RequestError) as err:
        engine.process_batch_sync([req])
    return err.value.reason


def test_error_reasons(engine: Engine):
    unknown = EngineRequest(package_id="nobody", frame_index=0, audio=AudioKind.REPLAY)
    assert reason_of(engine, unknown) == "unknown_package"
    assert reason_of(engine, request(120)) == "frame_out_of_range"
    with pytest.raises(RequestError, match=r"frames 0\.\.119"):
        engine.process_batch_sync([request(500)])
    # a wrong PCM length is refused by the request itself and, if one slips through, by the engine
    with pytest.raises(RequestError) as err:
        request(1, audio=AudioKind.PCM16, samples=np.zeros(3199, np.int16))
    assert err.value.reason == "bad_audio"
    sneaky = request(1, audio=AudioKind.PCM16, samples=np.zeros(3200, np.int16))
    object.__setattr__(sneaky, "samples", np.zeros(50, np.int16))
    assert reason_of(engine, sneaky) == "bad_audio"
    nan = np.full((80, 16), np.nan, np.float32)
    bad_mel = request(0, audio=AudioKind.MEL, samples=nan)
    assert reason_of(engine, bad_mel) == "bad_audio"


def test_async_errors_and_not_started(engine: Engine):
    async def scenario() -> None:
        with pytest.raises(RequestError) as err:
            await engine.process(request(0))
        assert err.value.reason == "overloaded"  # not started
        await engine.start()
        try:
            with pytest.raises(RequestError) as err:
                await engine.process(request(999))
            assert err.value.reason == "frame_out_of_range"
            reply = await engine.process(request(1))
            assert reply.frame_index == 1
        finally:
            await engine.stop()

    asyncio.run(scenario())


# --- silence ----------------------------------------------------------------------------------------------


def test_original_frame_and_silence(engine: Engine, store: PackageStore):
    frame = store.get(PACKAGE_ID).frames[7]

    async def scenario() -> tuple[EngineResult, EngineResult, EngineResult, EngineResult]:
        await engine.start()
        try:
            raw = await engine.original_frame(PACKAGE_ID, 7, ImageKind.RAW_BGR, 90)
            jpeg = await engine.original_frame(PACKAGE_ID, 7, ImageKind.JPEG, 90)
            crop = await engine.original_frame(PACKAGE_ID, 7, ImageKind.CROP_ONLY, 90)
            quiet = request(7, audio=AudioKind.PCM16, samples=np.zeros(3200, np.int16))
            skipped = await engine.process(quiet, skip_silence=True)
            return raw, jpeg, crop, skipped
        finally:
            await engine.stop()

    raw, jpeg, crop, skipped = asyncio.run(scenario())
    assert raw.silence and np.array_equal(raw_pixels(raw), frame)
    assert jpeg.silence and decode_image(bytes(jpeg.payload)).shape == frame.shape
    # a silent JPEG frame is the package's own stored JPEG: nothing is encoded again
    assert bytes(jpeg.payload) == store.get(PACKAGE_ID).encoded_frames[7]
    assert jpeg.timings["encode"] == 0 or jpeg.timings["encode"] < 1000
    assert crop.silence and (crop.width, crop.height, crop.rect, bytes(crop.payload)) == (0, 0, None, b"")
    assert skipped.silence and skipped.frame_index == 7 and np.array_equal(raw_pixels(skipped), frame)
    assert list(raw.timings) == ["encode", "total"]
    with pytest.raises(RequestError) as err:
        engine.original_frame_sync(PACKAGE_ID, 120)
    assert err.value.reason == "frame_out_of_range"


# --- batching and the queue bound ---------------------------------------------------------------------------


def test_concurrent_callers_are_batched_and_results_match_unbatched(
    store: PackageStore, identity_backend: InferenceBackend
):
    observer = RecordingObserver()
    backend = SlowBackend(identity_backend, delay=0.03)
    engine = Engine(store, backend, EngineOptions(max_batch=3, max_wait_ms=50.0, queue_limit=32), observer)
    requests = [request(i, ImageKind.PNG) for i in range(10)]

    async def scenario() -> list[EngineResult]:
        await engine.start()
        try:
            return list(await asyncio.gather(*(engine.process(r) for r in requests)))
        finally:
            await engine.stop()

    replies = asyncio.run(scenario())
    assert [r.frame_index for r in replies] == list(range(10))  # each caller gets its own frame
    assert max(backend.sizes) == 3 and max(observer.batches) == 3  # max_batch respected and reached
    assert sum(backend.sizes) == 10 and observer.batches == backend.sizes
    assert any(size > 1 for size in backend.sizes)
    assert observer.depths and max(observer.depths) <= 32
    assert {stage for stage, _ in observer.stages} == set(STAGES)
    assert any(r.timings["queue"] > 0 for r in replies)

    one_by_one = Engine(store, identity_backend, EngineOptions(max_batch=1))
    alone = [one_by_one.process_batch_sync([r])[0] for r in requests]
    assert [bytes(a.payload) for a in alone] == [bytes(r.payload) for r in replies]


def test_batch_waits_at_most_max_wait(store: PackageStore, identity_backend: InferenceBackend):
    backend = SlowBackend(identity_backend)
    engine = Engine(store, backend, EngineOptions(max_batch=8, max_wait_ms=30.0))

    async def scenario() -> float:
        await engine.start()
        try:
            started = time.perf_counter()
            await engine.process(request(0))
            return time.perf_counter() - started
        finally:
            await engine.stop()

    elapsed = asyncio.run(scenario())
    assert backend.sizes == [1]  # a lone caller is not held for a full batch...
    assert 0.025 <= elapsed < 2.0  # ...only for the wait window (at start the engine counts as contended)


def test_an_uncontended_caller_does_not_wait(store: PackageStore, identity_backend: InferenceBackend):
    backend = SlowBackend(identity_backend)
    engine = Engine(store, backend, EngineOptions(max_batch=8, max_wait_ms=1000.0))

    async def scenario() -> list[float]:
        await engine.start()
        try:
            times = []
            for i in range(4):
                started = time.perf_counter()
                await engine.process(request(i))
                times.append(time.perf_counter() - started)
            return times
        finally:
            await engine.stop()

    times = asyncio.run(scenario())
    assert backend.sizes == [1, 1, 1, 1]
    # a window long enough that no scheduling hiccup on a shared machine blurs the two cases
    assert times[0] >= 0.99  # the first request waits the window: others might have come
    assert max(times[1:]) < 0.5  # then a lone caller goes straight to the model


def test_full_queue_answers_overloaded(store: PackageStore, identity_backend: InferenceBackend):
    gate = threading.Event()
    backend = SlowBackend(identity_backend, gate=gate)
    engine = Engine(store, backend, EngineOptions(max_batch=1, max_wait_ms=0.0, queue_limit=2))

    async def scenario() -> list[EngineResult | BaseException]:
        await engine.start()
        try:
            first = asyncio.create_task(engine.process(request(0)))
            while not backend.sizes:  # wait until request 0 is inside the model call
                await asyncio.sleep(0.001)
            waiting = [asyncio.create_task(engine.process(request(i))) for i in (1, 2)]
            await asyncio.sleep(0.01)
            assert engine.queue_depth == 2
            with pytest.raises(RequestError) as err:
                await engine.process(request(3))
            assert err.value.reason == "overloaded" and "queue is full (2 frames waiting)" in str(err.value)
            gate.set()
            return list(await asyncio.gather(first, *waiting, return_exceptions=True))
        finally:
            gate.set()
            await engine.stop()

    results = asyncio.run(scenario())
    assert [r.frame_index for r in results if isinstance(r, EngineResult)] == [0, 1, 2]


def test_stop_fails_waiting_callers(store: PackageStore, identity_backend: InferenceBackend):
    gate = threading.Event()
    options = EngineOptions(max_batch=1, max_wait_ms=0)
    engine = Engine(store, SlowBackend(identity_backend, gate=gate), options)

    async def scenario() -> list[EngineResult | BaseException]:
        await engine.start()
        tasks = [asyncio.create_task(engine.process(request(i))) for i in range(3)]
        await asyncio.sleep(0.02)
        stopping = asyncio.create_task(engine.stop())
        await asyncio.sleep(0.01)
        gate.set()
        await stopping
        return list(await asyncio.gather(*tasks, return_exceptions=True))

    results = asyncio.run(scenario())
    errors = [r for r in results if isinstance(r, RequestError)]
    assert errors and all(e.reason == "overloaded" for e in errors)


# --- no file access per frame -------------------------------------------------------------------------------


def test_frames_never_open_files(engine: Engine, store: PackageStore, monkeypatch: pytest.MonkeyPatch):
    pcm = speech_pcm(store, 5)
    kinds = [(AudioKind.REPLAY, None), (AudioKind.PCM16, pcm)]
    every = [request(i, image, audio, samples)
             for i, image in enumerate(ImageKind) for audio, samples in kinds]
    engine.process_batch_sync(every)  # warm every lazy import (librosa, cv2 codecs) first

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"per-frame code opened a file: {args!r}")

    monkeypatch.setattr(builtins, "open", refuse)
    monkeypatch.setattr(io, "open", refuse)
    monkeypatch.setattr(os, "open", refuse)
    monkeypatch.setattr(h5py, "File", refuse)
    monkeypatch.setattr(Path, "open", refuse)

    replies = engine.process_batch_sync(every)
    assert len(replies) == len(every)

    async def scenario() -> list[EngineResult]:
        await engine.start()
        try:
            got = list(await asyncio.gather(*(engine.process(r) for r in every)))
            got.append(await engine.original_frame(PACKAGE_ID, 3, ImageKind.JPEG, 80))
            return got
        finally:
            await engine.stop()

    assert len(asyncio.run(scenario())) == len(every) + 1


def test_capacity_follows_the_batches_served_and_feeds_the_latency_estimate(
    store: PackageStore, identity_backend: InferenceBackend
):
    backend = SlowBackend(identity_backend, delay=0.02)
    engine = Engine(store, backend, EngineOptions(max_batch=2, max_wait_ms=0.0, queue_limit=32))

    async def scenario() -> tuple[float, float, float]:
        await engine.start()
        try:
            model = await engine.model_for(PACKAGE_ID)
            assert not model.capacity.known and engine.expected_latency(model) == 0.0
            await asyncio.gather(*(engine.process(request(i)) for i in range(6)))
            alone = model.capacity.batch_seconds(1)
            return model.capacity.batch_seconds(2), alone, engine.expected_latency(model)
        finally:
            await engine.stop()

    two, alone, estimate = asyncio.run(scenario())
    assert two >= 0.02  # learned from the calls served (each call sleeps 20 ms)
    assert estimate >= alone > 0 and engine.post_seconds > 0  # an idle engine: one call + compositing
