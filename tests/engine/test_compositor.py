"""Compositing: the identity model gives back the source frame (the issue's 40 dB requirement), and the
load-time masks with reused buffers give the bytes of the per-call composite they replaced."""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import pytest

from lipsync_tools.engine import Engine, PackageStore, composite_crop, composite_frame
from lipsync_tools.engine.compositor import CompositeScratch, _blend_into, paste_crop, prepare_mask
from lipsync_tools.engine.requests import AudioKind, EngineRequest, ImageKind

from .conftest import PACKAGE_ID, raw_pixels


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def mouth_region(store: PackageStore, index: int) -> np.ndarray:
    """Bool (H, W): where frame ``index``'s blend mask, resized to its rectangle, is > 0 (dilated by 2 px)."""
    package = store.get(PACKAGE_ID)
    x0, y0, x1, y1 = package.rects[index]
    info = package.info
    region = np.zeros((info.height, info.width), np.uint8)
    side = x1 - x0
    region[y0:y1, x0:x1] = cv2.resize(np.asarray(package.blend_masks[index]), (side, side),
                                      interpolation=cv2.INTER_LINEAR) > 0
    return cv2.dilate(region, np.ones((5, 5), np.uint8)).astype(bool)


def test_identity_model_composites_back_to_the_source_frame(engine: Engine, store: PackageStore):
    package = store.get(PACKAGE_ID)
    indices = [0, 37, 119]
    requests = [EngineRequest(package_id=PACKAGE_ID, frame_index=i, audio=AudioKind.REPLAY,
                              image=ImageKind.RAW_BGR) for i in indices]
    for index, reply in zip(indices, engine.process_batch_sync(requests), strict=True):
        assert reply.frame_index == index
        out = raw_pixels(reply)
        source = package.frames[index]
        mouth = mouth_region(store, index)
        assert 0.002 < mouth.mean() < 0.5  # the mask covers a real, bounded part of the frame
        outside = psnr(out[~mouth], source[~mouth])
        assert outside >= 40.0, f"frame {index}: {outside:.1f} dB outside the mouth"
        # Inside, the crop went through two resizes only: still close to the source (rect not misplaced).
        assert psnr(out[mouth], source[mouth]) >= 25.0


def test_composite_frame_respects_the_mask():
    frame = np.full((40, 50, 3), 10, np.uint8)
    frame.flags.writeable = False
    generated = np.full((8, 8, 3), 200, np.uint8)
    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 2:6] = 255
    out = composite_frame(frame, generated, mask, (10, 5, 26, 21))  # 16x16 rect: 2x upscale
    assert out.shape == frame.shape and out.flags.writeable
    assert (frame == 10).all()  # the preloaded frame is never written
    changed = np.argwhere(out[..., 0] != 10)
    assert changed[:, 0].min() >= 5 and changed[:, 0].max() < 21  # only inside the rect
    assert changed[:, 1].min() >= 10 and changed[:, 1].max() < 26
    assert out[13, 18, 0] == 200  # the mask's centre is fully generated


def test_composite_crop_keeps_the_border():
    original = np.full((8, 8, 3), 50, np.uint8)
    generated = np.full((8, 8, 3), 250, np.uint8)
    mask = np.zeros((8, 8), np.uint8)
    mask[3:5, 3:5] = 128
    out = composite_crop(original, generated, mask)
    assert (out[0] == 50).all() and (out[:, 0] == 50).all()
    assert out[3, 3, 0] == 150  # round(250 * 128/255 + 50 * 127/255) = round(150.4)


# --- the load-time masks, the reused buffers and the integer blend -----------------------------------------
#
# ``reference_*`` is the compositor before issue 12 part 3, verbatim (a float blend with cv2.blendLinear);
# ``exact_*`` is the correctly rounded blend in int64 NumPy. The engine's path must equal ``exact_*`` bit for
# bit and differ from ``reference_*`` by at most 1 grey level, and not at all where the mask is 0 or 255 or
# the paste is hard.


def reference_resize(image: np.ndarray, side: int) -> np.ndarray:
    if image.shape[0] == side and image.shape[1] == side:
        return image
    interpolation = cv2.INTER_AREA if side < image.shape[0] else cv2.INTER_LINEAR
    return cv2.resize(image, (side, side), interpolation=interpolation)


def reference_blend(destination: np.ndarray, generated: np.ndarray, mask: np.ndarray) -> None:
    weight = mask.astype(np.float32)
    weight *= np.float32(1.0 / 255.0)
    destination[...] = cv2.blendLinear(generated, destination, weight, np.float32(1.0) - weight)


def exact_blend(destination: np.ndarray, generated: np.ndarray, mask: np.ndarray) -> None:
    g, d = generated.astype(np.int64), destination.astype(np.int64)
    m = mask.astype(np.int64)[..., None]
    destination[...] = (2 * (g * m + d * (255 - m)) + 255) // 510  # round(t / 255); t / 255 is never a half


Blend = Callable[[np.ndarray, np.ndarray, np.ndarray], None]
Rect = tuple[int, int, int, int]


def _composite_frame(blend: Blend, frame: np.ndarray, generated: np.ndarray, blend_mask: np.ndarray | None,
                     rect: Rect) -> np.ndarray:
    x0, y0, x1, y1 = rect
    side = x1 - x0
    out = frame.copy()
    if blend_mask is None:
        out[y0:y1, x0:x1] = reference_resize(generated, side)
    else:
        blend(out[y0:y1, x0:x1], reference_resize(generated, side), reference_resize(blend_mask, side))
    return out


def _composite_crop(blend: Blend, original: np.ndarray, generated: np.ndarray,
                    blend_mask: np.ndarray | None) -> np.ndarray:
    if blend_mask is None:
        return np.array(generated, copy=True)
    out = np.array(original, copy=True)
    blend(out, generated, blend_mask)
    return out


def reference_composite_frame(frame: np.ndarray, generated: np.ndarray, blend_mask: np.ndarray | None,
                              rect: Rect) -> np.ndarray:
    return _composite_frame(reference_blend, frame, generated, blend_mask, rect)


def exact_composite_frame(frame: np.ndarray, generated: np.ndarray, blend_mask: np.ndarray | None,
                          rect: Rect) -> np.ndarray:
    return _composite_frame(exact_blend, frame, generated, blend_mask, rect)


def reference_composite_crop(original: np.ndarray, generated: np.ndarray,
                             blend_mask: np.ndarray | None) -> np.ndarray:
    return _composite_crop(reference_blend, original, generated, blend_mask)


def exact_composite_crop(original: np.ndarray, generated: np.ndarray,
                         blend_mask: np.ndarray | None) -> np.ndarray:
    return _composite_crop(exact_blend, original, generated, blend_mask)


def check(out: np.ndarray, exact: np.ndarray, reference: np.ndarray, *, same: bool = False) -> None:
    """``out`` is ``exact`` bit for bit, within 1 grey level of the old ``reference`` (equal if ``same``)."""
    assert np.array_equal(out, exact)
    difference = np.abs(out.astype(np.int16) - reference)
    assert difference.max() <= (0 if same else 1)
    assert np.count_nonzero(difference) <= max(2, out.size // 200)  # rare: only values within 0.003 of a half


def feathered_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    """A mouth-like mask: 0 on the border, 255 in an ellipse over the lower half, a blurred edge."""
    mask = np.zeros((size, size), np.uint8)
    centre = (size // 2 + int(rng.integers(-3, 4)), int(size * 0.7))
    cv2.ellipse(mask, centre, (size // 3, size // 5), 0, 0, 360, 255, -1)
    k = max(3, size // 8) | 1
    return cv2.GaussianBlur(mask, (k, k), 0)


def random_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    """Every weight 0..255 at random inside, 0 on a random border: the rounding's worst case."""
    mask = rng.integers(0, 256, (size, size), dtype=np.uint8)
    edge = int(rng.integers(1, size // 4))
    mask[:edge], mask[-edge:], mask[:, : edge + 3], mask[:, -edge:] = 0, 0, 0, 0
    return mask


# (crop size, rectangle side): Wav2Lip's 96 up to 300, SyncTalk_2D's 328 up to 400 and down to 300, and equal.
SIZES = [(96, 300), (328, 400), (328, 300), (96, 96), (96, 57)]


@pytest.mark.parametrize(("crop", "side"), SIZES)
@pytest.mark.parametrize("kind", ["feathered", "random", "zero", "full", "hard"])
def test_prepared_paste_is_the_rounded_blend_within_1_of_the_old(crop: int, side: int, kind: str):
    rng = np.random.default_rng(crop * 1000 + side)
    frame = rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    frame.flags.writeable = False
    scratch = CompositeScratch()
    same = kind in ("zero", "full", "hard")  # no weight strictly between 0 and 1: no rounding to differ on
    for x0, y0 in [(490, 210), (0, 0), (1280 - side, 720 - side), (7, 720 - side)]:
        generated = rng.integers(0, 256, (crop, crop, 3), dtype=np.uint8)
        mask = {"feathered": lambda: feathered_mask(crop, rng), "random": lambda: random_mask(crop, rng),
                "zero": lambda: np.zeros((crop, crop), np.uint8),
                "full": lambda: np.full((crop, crop), 255, np.uint8), "hard": lambda: None}[kind]()
        rect = (x0, y0, x0 + side, y0 + side)
        exact = exact_composite_frame(frame, generated, mask, rect)
        reference = reference_composite_frame(frame, generated, mask, rect)
        out = scratch.frame(frame.shape)
        np.copyto(out, frame)
        paste_crop(out, generated, rect, None if mask is None else prepare_mask(mask, side), scratch)
        check(out, exact, reference, same=same)
        assert np.array_equal(composite_frame(frame, generated, mask, rect), exact)
        if side == crop:
            original = rng.integers(0, 256, (crop, crop, 3), dtype=np.uint8)
            check(composite_crop(original, generated, mask), exact_composite_crop(original, generated, mask),
                  reference_composite_crop(original, generated, mask), same=same)


def test_the_blend_differs_from_the_old_only_near_a_half():
    """Every (generated, original, mask) value: 1 grey level apart exactly where the exact blend is within
    1/510 of a half (the old float blend divided by 1 + 1e-5), equal everywhere else."""
    g, d = np.meshgrid(np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8), indexing="ij")
    g3, d3 = cv2.merge([g, g, g]), cv2.merge([d, d, d])
    scratch = CompositeScratch()
    largest = 0
    for value in range(256):
        m = np.full((256, 256), value, np.uint8)
        old, new, exact = d3.copy(), d3.copy(), d3.copy()
        reference_blend(old, g3, m)
        _blend_into(new, g3, m, scratch)
        exact_blend(exact, g3, m)
        assert np.array_equal(new, exact), value
        t = g.astype(np.int64) * value + d.astype(np.int64) * (255 - value)
        near_half = np.abs(t % 255 - 127.5) < 1  # t / 255 within 1/510 of a half
        difference = np.abs(old.astype(np.int16) - new).max(axis=2)
        assert difference.max() <= 1 and not (difference.astype(bool) & ~near_half).any(), value
        largest = max(largest, int(difference.max()))
    assert largest == 1  # the two blends do differ somewhere


def test_one_scratch_serves_any_sequence_of_sides():
    """The square and blend buffers are views of the largest size asked for: strided for smaller sides."""
    rng = np.random.default_rng(7)
    frame = rng.integers(0, 256, (360, 640, 3), dtype=np.uint8)
    scratch = CompositeScratch()
    for side in [120, 300, 97, 310, 96, 200, 330]:
        crop = 96 if side % 2 else 328
        generated = rng.integers(0, 256, (crop, crop, 3), dtype=np.uint8)
        mask = feathered_mask(crop, rng)
        rect = (11, 13, 11 + side, 13 + side)
        out = frame.copy()
        paste_crop(out, generated, rect, prepare_mask(mask, side), scratch)
        assert np.array_equal(out, exact_composite_frame(frame, generated, mask, rect)), side


def test_real_package_masks_and_rects(store: PackageStore):
    """Every frame of the test package, its own mask and rectangle, a generated crop unlike its own."""
    package = store.get(PACKAGE_ID)
    scratch = CompositeScratch()
    for index in range(package.n_frames):
        frame, rect, mask = package.frames[index], package.rects[index], package.blend_masks[index]
        generated = np.ascontiguousarray(255 - package.crops[index])
        out = scratch.frame(frame.shape)
        np.copyto(out, frame)
        paste_crop(out, generated, rect, package.rect_masks[index], scratch)
        check(out, exact_composite_frame(frame, generated, mask, rect),
              reference_composite_frame(frame, generated, mask, rect))
        crop = np.array(package.crops[index])
        side = crop.shape[0]
        paste_crop(crop, generated, (0, 0, side, side), package.crop_masks[index], scratch)
        check(crop, exact_composite_crop(package.crops[index], generated, mask),
              reference_composite_crop(package.crops[index], generated, mask))


def test_prepare_mask_keeps_only_the_non_zero_box():
    mask = np.zeros((96, 96), np.uint8)
    mask[40:60, 30:71] = 200
    prepared = prepare_mask(mask, 96, copy=False)
    assert (prepared.top, prepared.left, prepared.weights.shape) == (40, 30, (20, 41))
    assert np.shares_memory(prepared.weights, mask)  # a view of the (mapped) mask: no RAM
    owned = prepare_mask(mask, 192)
    assert owned.weights.flags.c_contiguous and owned.weights.base is None
    w = owned.weights
    assert w[0].any() and w[-1].any() and w[:, 0].any() and w[:, -1].any()  # the box is tight
    empty = prepare_mask(np.zeros((96, 96), np.uint8), 300)
    assert empty.weights.size == 0
    frame = np.full((400, 400, 3), 9, np.uint8)
    paste_crop(frame, np.zeros((96, 96, 3), np.uint8), (10, 10, 310, 310), empty)
    assert (frame == 9).all()  # a mask of zeros leaves the frame as it is


def test_scratch_frames_are_reused_and_bounded():
    scratch = CompositeScratch(max_shapes=2)
    a = scratch.frame((720, 1280, 3))
    assert scratch.frame((720, 1280, 3)) is a
    scratch.frame((96, 96, 3))
    scratch.frame((328, 328, 3))  # a third shape: the oldest goes
    assert scratch.frame((720, 1280, 3)) is not a
    assert scratch.square(300).shape == (300, 300, 3) and scratch.square(96).shape == (96, 96, 3)
    mask3, high, low = scratch.blend_buffers(30, 40)
    assert mask3.shape == high.shape == low.shape == (30, 40, 3) and not np.shares_memory(high, low)
    assert (mask3.dtype, high.dtype) == (np.uint8, np.uint16)


def test_a_resize_opencv_cannot_do_in_place_still_lands_in_the_frame():
    """cv2 silently makes a new array when ``dst`` has another dtype; the paste copies it in, as before."""
    frame = np.zeros((64, 64, 3), np.uint8)
    generated = np.full((8, 8, 3), 77.0, np.float32)
    paste_crop(frame, generated, (4, 4, 20, 20), None)
    assert (frame[4:20, 4:20] == 77).all() and frame[:4].max() == 0
