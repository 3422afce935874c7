"""The table of loaded packages: opened once, frames decoded into RAM, hot arrays memory-mapped.

Everything per-frame code needs is prepared here at load time, so a frame costs no disk read, no metadata
parsing and no validation beyond an index check: full frames are decoded BGR arrays (read-only), the crop
rectangles are Python int tuples, each frame's blend mask is resized to its rectangle and cut to where it is
not 0 (:func:`~lipsync_tools.engine.compositor.prepare_mask`), and the memory-mapped arrays (crops, blend
masks, mel, mel index) have had their pages touched once so the first frames do not fault them in from disk.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from ..audio.mel import MEL_WINDOW_FRAMES, mel_window
from ..errors import PackageFormatError, RequestError, UsageError
from ..ids import package_id_problem
from ..package.reader import Package, open_package
from .compositor import BlendMask, prepare_mask
from .requests import Reason

_PAGE = 4096


@dataclass(frozen=True, kw_only=True)
class PackageInfo:
    """What a loaded package is and what loading it cost.

    ``load_seconds`` has the keys ``open`` (manifest, shapes, memory maps), ``frame_preload`` (decoding
    every full frame into RAM), ``feature_mapping`` (checks and page-touching of the mapped arrays, and the
    blend masks resized to their rectangles) and ``total``. ``ram_bytes`` is what the package holds in
    process memory (decoded frames, their stored bytes, the resized blend masks and any arrays that could
    not be mapped); ``mapped_bytes`` is the size of the memory-mapped arrays (page cache).
    """

    id: str
    path: Path
    n_frames: int
    fps: float
    width: int
    height: int
    crop_size: int
    has_checkpoint: bool
    load_seconds: dict[str, float]
    family: str = "wav2lip"
    audio_mode: str = "mel"
    frames: str = "all"  # "none": loaded for crop-only serving, full frames not decoded
    ram_bytes: int
    mapped_bytes: int = 0
    warnings: tuple[str, ...] = ()  # the package's own (Manifest.warnings), e.g. too many filled frames

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (for ``GET /v1/packages`` and ``--json`` output)."""
        return {
            "id": self.id, "path": str(self.path), "n_frames": self.n_frames, "fps": self.fps,
            "width": self.width, "height": self.height, "crop_size": self.crop_size,
            "has_checkpoint": self.has_checkpoint, "family": self.family, "audio_mode": self.audio_mode,
            "frames": self.frames,
            "load_seconds": {k: round(v, 6) for k, v in self.load_seconds.items()},
            "ram_bytes": self.ram_bytes, "mapped_bytes": self.mapped_bytes, "warnings": list(self.warnings),
        }


@dataclass(eq=False)
class PackageUsage:
    """How a loaded package is used now: when a frame last asked for it, and how many live sessions hold it
    (a held package is never evicted to make room)."""

    last_used: float = field(default_factory=time.monotonic)
    sessions: int = 0
    frames: int = 0  # model frames rendered for it

    def touch(self) -> None:
        self.last_used = time.monotonic()


@dataclass(frozen=True, kw_only=True)
class MemoryBudget:
    """``max_bytes``: decoded frames of the loaded packages plus their models' weights (``None``: no limit);
    ``max_packages``: most packages loaded at once (``None``: no limit)."""

    max_bytes: int | None = None
    max_packages: int | None = None


@dataclass(frozen=True, kw_only=True, eq=False)
class LoadedPackage:
    """A package ready for per-frame work. Shapes: N frames, S crop size, H x W frame size, T mel columns.

    ``frames``: N read-only uint8 ``(H, W, 3)`` BGR arrays in RAM. ``crops`` uint8 ``(N, S, S, 3)``,
    ``blend_masks`` uint8 ``(N, S, S)``, ``mel`` float32 ``(80, T)``: memory-mapped, read-only.
    ``rects``: N ``(x0, y0, x1, y1)`` int tuples (half-open, square, inside the frame). ``mel_starts``: N
    ints, the first mel column of each frame's window (every window lies inside ``mel``).
    ``rect_masks``: N :class:`~lipsync_tools.engine.compositor.BlendMask`, frame i's blend mask resized to
    its rectangle's side and cut to its non-zero box (uint8, in RAM; consecutive frames with the same mask
    and side share one); empty for a package loaded with ``frames="none"``. ``crop_masks``: N, the masks at
    crop size cut to their box (views of the mapped ``blend_masks``), for crop replies.
    ``encoded_frames``: the package's own stored full frames (``frame_codec`` ``"jpeg"`` or ``"png"`` bytes,
    about a tenth of the decoded size): silent session frames are sent from them without re-encoding, and
    ``GET /v1/packages/{id}/frames`` serves them to clients that composite crops themselves. Empty for a
    package loaded with ``frames="none"``.
    """

    info: PackageInfo
    package: Package = field(repr=False)
    frames: list[np.ndarray] = field(repr=False)
    crops: np.ndarray = field(repr=False)
    blend_masks: np.ndarray = field(repr=False)
    mel: np.ndarray = field(repr=False)
    rects: list[tuple[int, int, int, int]] = field(repr=False)
    mel_starts: list[int] = field(repr=False)
    rect_masks: list[BlendMask] = field(repr=False)
    crop_masks: list[BlendMask] = field(repr=False)
    encoded_frames: list[bytes] = field(default_factory=list, repr=False)
    frame_codec: str = "jpeg"
    usage: PackageUsage = field(default_factory=PackageUsage, repr=False)

    @property
    def n_frames(self) -> int:
        return self.info.n_frames

    def mel_window(self, frame_index: int) -> np.ndarray:
        """The package's own ``(80, 16)`` float32 mel window for ``frame_index`` (a view, no copy)."""
        return mel_window(self.mel, self.mel_starts[frame_index])

    def read_checkpoint(self) -> bytes | None:
        """The embedded checkpoint's bytes, or ``None``. Reads the file: call at startup only."""
        return self.package.read_checkpoint()


class _HasInfo(Protocol):
    @property
    def info(self) -> Any: ...


ItemT = TypeVar("ItemT", bound=_HasInfo)


class IdRegistry(Generic[ItemT]):
    """Loaded items by package id, safe to use from threads: what :class:`PackageStore` and the original
    path's ``VideoStore`` share. Subclasses prepare an item and :meth:`_insert` it."""

    def __init__(self) -> None:
        self._items: dict[str, ItemT] = {}
        self._lock = threading.Lock()

    def _check_new_id(self, package_id: str) -> None:
        """``RequestError(bad_request)`` for an invalid id (1-64 of ``A-Za-z0-9._-``, starting with a
        letter or digit: no path can be expressed) or one already loaded."""
        check_id(package_id)
        if package_id in self._items:
            raise RequestError(
                Reason.BAD_REQUEST,
                f"package id {package_id!r} is already loaded; unload it first or choose another id",
            )

    def _insert(self, package_id: str, item: ItemT, *, replace: bool = False) -> None:
        with self._lock:
            if not replace and package_id in self._items:
                raise RequestError(
                    Reason.BAD_REQUEST, f"package id {package_id!r} was loaded by another caller meanwhile"
                )
            self._items[package_id] = item

    def unload(self, package_id: str) -> None:
        """Forget ``package_id``; memory is freed once in-flight frames finish. Unknown: RequestError."""
        with self._lock:
            if self._items.pop(package_id, None) is None:
                raise unknown_package(package_id)

    def get(self, package_id: str) -> ItemT:
        """The item loaded as ``package_id``; ``RequestError(unknown_package)`` when there is none."""
        item = self._items.get(package_id)
        if item is None:
            raise unknown_package(package_id)
        return item

    def infos(self) -> list[Any]:
        """Every loaded item's info, in load order."""
        return [item.info for item in list(self._items.values())]

    def __contains__(self, package_id: object) -> bool:
        return package_id in self._items

    def __len__(self) -> int:
        return len(self._items)


class PackageStore(IdRegistry[LoadedPackage]):
    """Packages by id. Built at startup, passed to the engine and the server; safe to use from threads.

    ``expected_crop_size``, when given, makes :meth:`load` refuse packages whose crops have another size.
    ``admit(package_id, package)``, when set, is asked before a package's frames are decoded and refuses it
    by raising (:class:`PackageFormatError`: the engine's model store refuses a package no model can serve);
    ``on_unload(package_id)`` is told when one goes. ``decode_threads`` bounds the threads that decode full
    frames at load (default: the CPU count).
    """

    def __init__(self, *, expected_crop_size: int | None = None, decode_threads: int | None = None) -> None:
        super().__init__()
        self.expected_crop_size = expected_crop_size
        self.admit: Callable[[str, Package], object] | None = None
        self.on_unload: Callable[[str], None] | None = None
        self.decode_threads = decode_threads or os.cpu_count() or 1
        self.budget = MemoryBudget()
        # The models' side of the budget (set by the server: the engine's model store). ``model_bytes``:
        # what loaded models hold; ``model_need(package)``: what loading this package's model would add;
        # ``free_models()``: unload models no loaded package needs, returning the bytes freed.
        self.model_bytes: Callable[[], int] = lambda: 0
        self.model_need: Callable[[str, Package], int] = lambda package_id, package: 0
        self.free_models: Callable[[], int] = lambda: 0
        self.evictions = 0
        self._budget_lock = threading.Lock()

    def load(
        self, package_id: str, path: str | Path, *, replace: bool = False, frames: str = "all"
    ) -> PackageInfo:
        """Open ``path`` read-only under ``package_id`` and prepare it for serving.

        ``frames="none"`` loads it for crop-only serving: its full frames are not decoded into RAM (only the
        crops, masks, boxes and features, memory-mapped), so it costs megabytes; full-frame requests to it
        are refused.

        Raises ``RequestError(bad_request)`` for an invalid id (1-64 of ``A-Za-z0-9._-``, starting with a
        letter or digit: no path can be expressed) or an id already loaded (unless ``replace``);
        :class:`~lipsync_tools.errors.InputNotFoundError` and :class:`PackageFormatError` for a missing or
        invalid file, a crop size other than ``expected_crop_size``, or one ``admit`` refuses.
        """
        if not replace:
            self._check_new_id(package_id)
        else:
            check_id(package_id)
        if frames not in ("all", "none"):
            raise UsageError(f"frames is {frames!r}; expected all or none")
        loaded = self._prepare(package_id, Path(path), frames)
        self._insert(package_id, loaded, replace=replace)
        return loaded.info

    def unload(self, package_id: str) -> None:
        super().unload(package_id)
        if self.on_unload is not None:
            self.on_unload(package_id)

    # -- usage and the memory budget ---------------------------------------------------------------------
    def hold(self, package_id: str) -> LoadedPackage:
        """A live session starts on ``package_id``: it is not evicted until :meth:`release`."""
        loaded = self.get(package_id)
        loaded.usage.sessions += 1
        loaded.usage.touch()
        return loaded

    def release(self, package_id: str) -> None:
        loaded = self._items.get(package_id)
        if loaded is not None:
            loaded.usage.sessions = max(0, loaded.usage.sessions - 1)
            loaded.usage.touch()

    def frames_bytes(self) -> int:
        """Decoded full frames (and arrays read into RAM) of every loaded package."""
        return sum(item.info.ram_bytes for item in list(self._items.values()))

    def used_bytes(self) -> int:
        """What the budget counts now: decoded frames plus loaded models."""
        return self.frames_bytes() + self.model_bytes()

    def describe(self) -> list[dict[str, Any]]:
        """Every loaded package's info with its usage (``GET /v1/packages``)."""
        now = time.monotonic()
        return [
            {**item.info.to_dict(), "sessions": item.usage.sessions,
             "frames_rendered": item.usage.frames,
             "idle_seconds": round(now - item.usage.last_used, 3)}
            for item in list(self._items.values())
        ]

    @staticmethod
    def estimate_bytes(package: Package, frames: str = "all") -> int:
        """What ``package``'s frames will hold: N x H x W x 3 decoded plus the stored bytes kept beside them
        and at most one rectangle-sized blend mask per frame (0 for ``frames="none"``)."""
        if frames == "none":
            return 0
        v = package.manifest.video
        rects = np.asarray(package.rects, dtype=np.int64).reshape(-1, 4)  # not checked yet: clip the sides
        sides = np.clip(rects[:, 2] - rects[:, 0], 0, max(int(v.width), int(v.height)))
        masks = int((sides * sides).sum())
        frames_bytes = int(v.frame_count) * int(v.width) * int(v.height) * 3
        return frames_bytes + sum(map(len, package.encoded_frames)) + masks

    def _make_room(self, package_id: str, package: Package, path: Path, frames: str = "all") -> None:
        """Evict idle packages (least recently used first) and idle models until ``package`` fits the
        budget; refuse it (:class:`PackageFormatError`) when it cannot. Runs before any frame is decoded."""
        budget = self.budget
        if budget.max_bytes is None and budget.max_packages is None:
            return
        need = self.estimate_bytes(package, frames) + self.model_need(package_id, package)
        if budget.max_bytes is not None and need > budget.max_bytes:
            raise PackageFormatError(
                f"{path}: needs about {need / 2**20:.0f} MiB (decoded frames and model), more than the whole "
                f"memory budget of {budget.max_bytes / 2**20:.0f} MiB (--max-memory); raise it"
            )
        with self._budget_lock:
            while True:
                over_count = budget.max_packages is not None and len(self._items) >= budget.max_packages
                used = self.used_bytes()
                over_bytes = budget.max_bytes is not None and used + need > budget.max_bytes
                if not (over_count or over_bytes):
                    return
                if over_bytes and self.free_models() > 0:
                    continue
                idle = [(k, v) for k, v in list(self._items.items()) if v.usage.sessions == 0]
                if not idle:
                    busy = len(self._items)
                    limit = (
                        f"{budget.max_packages} packages (--max-packages)" if over_count
                        else f"{used / 2**20:.0f} of {(budget.max_bytes or 0) / 2**20:.0f} MiB (--max-memory)"
                    )
                    raise PackageFormatError(
                        f"{path}: no room: {limit} in use, and all {busy} loaded packages have live "
                        "sessions; retry when a session ends, or raise the limit"
                    )
                victim, _ = min(idle, key=lambda kv: kv[1].usage.last_used)
                self.unload(victim)
                self.evictions += 1

    def infos(self) -> list[PackageInfo]:
        """Every loaded package's info, in load order."""
        return [p.info for p in list(self._items.values())]

    def _prepare(self, package_id: str, path: Path, frames_mode: str = "all") -> LoadedPackage:
        started = time.perf_counter()
        package = open_package(path, mmap=True, load_frames=frames_mode == "all")
        if self.admit is not None:
            self.admit(package_id, package)  # before the costly decode
        try:
            self._make_room(package_id, package, path, frames_mode)
        except BaseException:
            if self.on_unload is not None:
                self.on_unload(package_id)  # the admission is withdrawn
            raise
        opened = time.perf_counter()

        # frames="none" opened the package without its frames: nothing to decode
        frames = package.decode_frames(threads=self.decode_threads) if package.encoded_frames else []
        for frame in frames:
            frame.flags.writeable = False  # shared by every request: replies copy, never write
        m = package.manifest
        encoded = list(package.encoded_frames)  # kept: silent frames and /frames are sent from them
        package.encoded_frames.clear()
        preloaded = time.perf_counter()

        rects, mel_starts = self._check_and_map(package, path)
        rect_masks, crop_masks, mask_bytes = _prepare_masks(package.blend_masks, rects, frames_mode == "all")
        mapped = time.perf_counter()
        load_seconds = {
            "open": opened - started,
            "frame_preload": preloaded - opened,
            "feature_mapping": mapped - preloaded,
            "total": mapped - started,
        }
        hot = (package.crops, package.rects, package.input_mask, package.blend_masks, package.mel,
               package.mel_index, package.pcm, package.landmarks, package.boxes, package.filled)
        in_ram = sum(int(a.nbytes) for a in hot if not isinstance(a, np.memmap))
        mapped_bytes = sum(int(a.nbytes) for a in hot if isinstance(a, np.memmap))
        info = PackageInfo(
            id=package_id, path=path, n_frames=package.n_frames, fps=float(m.video.fps),
            width=m.video.width, height=m.video.height, crop_size=package.crop_size,
            has_checkpoint=package.has_checkpoint, load_seconds=load_seconds,
            family=package.family, audio_mode=package.audio_mode, frames=frames_mode,
            ram_bytes=sum(int(f.nbytes) for f in frames) + sum(len(b) for b in encoded) + mask_bytes + in_ram,
            mapped_bytes=mapped_bytes,
            warnings=tuple(m.warnings()),
        )
        return LoadedPackage(
            info=info, package=package, frames=frames, crops=package.crops, blend_masks=package.blend_masks,
            mel=package.mel, rects=rects, mel_starts=mel_starts, rect_masks=rect_masks, crop_masks=crop_masks,
            encoded_frames=encoded,
            frame_codec=m.frames.codec,
        )

    def _check_and_map(
        self, package: Package, path: Path
    ) -> tuple[list[tuple[int, int, int, int]], list[int]]:
        """Check what per-frame code relies on, once; touch every mapped page; return plain-int tables."""
        m = package.manifest
        s = package.crop_size
        if self.expected_crop_size is not None and s != self.expected_crop_size:
            raise PackageFormatError(
                f"{path}: crops are {s}x{s} but the model takes {self.expected_crop_size}x"
                f"{self.expected_crop_size}; rebuild the package with --crop-size {self.expected_crop_size}"
            )
        rects_array = np.asarray(package.rects, dtype=np.int64)
        x0, y0, x1, y1 = rects_array.T
        bad = (x0 < 0) | (y0 < 0) | (x1 > m.video.width) | (y1 > m.video.height) | (x1 <= x0) | (y1 <= y0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise PackageFormatError(
                f"{path}: dataset 'rects', rectangle {i} {tuple(rects_array[i])} is empty or outside the "
                f"{m.video.width}x{m.video.height} frame; rebuild the package"
            )
        not_square = (x1 - x0) != (y1 - y0)
        if not_square.any():
            i = int(np.flatnonzero(not_square)[0])
            raise PackageFormatError(
                f"{path}: dataset 'rects', rectangle {i} {tuple(rects_array[i])} is not square "
                f"({int(x1[i] - x0[i])}x{int(y1[i] - y0[i])}); crops are pasted back into squares. Rebuild "
                "the package"
            )
        starts = np.asarray(package.mel_index, dtype=np.int64)
        columns = package.mel.shape[1]
        out_of_range = (starts < 0) | (starts + MEL_WINDOW_FRAMES > columns)
        if out_of_range.any():
            i = int(np.flatnonzero(out_of_range)[0])
            raise PackageFormatError(
                f"{path}: audio/mel_index[{i}] = {int(starts[i])} puts the 16-column window outside the "
                f"{columns} mel columns; rebuild the package"
            )
        for array in (package.crops, package.blend_masks, package.mel):
            if isinstance(array, np.memmap):
                # One read per page faults the whole mapping into the page cache now, not on a live frame.
                flat = np.frombuffer(array, dtype=np.uint8)
                int(flat[::_PAGE].sum())
        rects = [(int(a), int(b), int(c), int(d)) for a, b, c, d in rects_array]
        return rects, [int(v) for v in starts]


def _prepare_masks(
    blend_masks: np.ndarray, rects: list[tuple[int, int, int, int]], with_frames: bool
) -> tuple[list[BlendMask], list[BlendMask], int]:
    """Every frame's blend mask prepared for pasting: ``(rect_masks, crop_masks, bytes held in RAM)``.

    ``rect_masks`` (only ``with_frames``): resized to the frame's rectangle side, as the per-reply resize
    did, so a reply does no mask work but a table look-up. A run of frames with the same mask (an imported
    package's one mask, a still face) shares one array per side. ``crop_masks``: views of the mapped masks.
    """
    rect_masks: list[BlendMask] = []
    crop_masks: list[BlendMask] = []
    held = 0
    previous: np.ndarray | None = None
    by_side: dict[int, BlendMask] = {}
    crop_mask: BlendMask | None = None
    for index, (x0, _, x1, _) in enumerate(rects):
        mask = blend_masks[index]
        if crop_mask is None or previous is None or not np.array_equal(mask, previous):
            previous, by_side = mask, {}
            crop_mask = prepare_mask(mask, mask.shape[0], copy=False)
        crop_masks.append(crop_mask)
        if with_frames:
            side = x1 - x0
            rect_mask = by_side.get(side)
            if rect_mask is None:
                rect_mask = by_side[side] = prepare_mask(mask, side)
                held += rect_mask.nbytes
            rect_masks.append(rect_mask)
    return rect_masks, crop_masks, held


def check_id(package_id: str) -> None:
    """``RequestError(bad_request)`` unless ``package_id`` follows :mod:`lipsync_tools.ids`' rule."""
    problem = package_id_problem(package_id)
    if problem is not None:
        raise RequestError(Reason.BAD_REQUEST, problem)


def unknown_package(package_id: str) -> RequestError:
    return RequestError(
        Reason.UNKNOWN_PACKAGE,
        f"package {package_id[:64]!r} is not loaded; list the loaded ones with GET /v1/packages",
    )
