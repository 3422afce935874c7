"""Open a sanders package for serving: manifest parsed once, hot arrays memory-mapped with no copy.

Per-frame code reads :class:`Package` attributes, which are plain NumPy arrays (``np.memmap`` views of the
file, or in-RAM arrays for the full frames after :meth:`Package.decode_frames`); nothing here touches
h5py after :func:`open_package` returns.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import h5py
import numpy as np

from ..errors import InputNotFoundError, LipsyncError, PackageFormatError, UsageError
from .manifest import Manifest, check_version, parse_version
from .spec import (
    DATASETS,
    FORMAT_NAME,
    MAX_AUDIO_SAMPLES,
    MAX_CHECKPOINT_BYTES,
    MAX_CROP_SIZE,
    MAX_ENCODED_FRAME_BYTES,
    MAX_FEATURE_DIM,
    MAX_FPS,
    MAX_FRAME_SIDE,
    MAX_FRAMES,
    MAX_LANDMARKS,
    MAX_MANIFEST_BYTES,
)


def decode_stored_frame(
    data: bytes | np.ndarray, index: int, expected: tuple[int, int, int], codec: str
) -> np.ndarray:
    """Frame ``index`` of a package's ``frames`` dataset, decoded; :class:`PackageFormatError` when its bytes
    do not decode to ``expected`` (height, width, 3). The one frame check of the reader, the validator and
    the server's preload."""
    frame = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if frame is None or frame.shape != expected:
        found = "undecodable bytes" if frame is None else f"an image of shape {frame.shape}"
        raise PackageFormatError(
            f"dataset 'frames', frame {index} holds {found}; expected a {codec} image of shape {expected}."
        )
    return frame


@dataclass
class Package:
    """A loaded package. Array shapes use N frames, S crop size, K landmarks, T mel columns."""

    path: Path
    manifest: Manifest
    crops: np.ndarray  # uint8 (N, S, S, 3) BGR
    rects: np.ndarray  # int32 (N, 4) x0, y0, x1, y1
    input_mask: np.ndarray  # uint8 (S, S)
    blend_masks: np.ndarray  # uint8 (N, S, S)
    landmarks: np.ndarray  # float32 (N, K, 2)
    boxes: np.ndarray  # float32 (N, 4)
    filled: np.ndarray  # uint8 (N,)
    pcm: np.ndarray  # int16 (A,)
    mel: np.ndarray  # float32 (80, T)
    mel_index: np.ndarray  # int32 (N,)
    encoded_frames: list[bytes] = field(repr=False, default_factory=list)
    has_checkpoint: bool = False
    memory_mapped: tuple[str, ...] = ()
    features: np.ndarray | None = None  # float32 (F, D) audio/features, since 1.1 (None when absent)
    has_audio_encoder: bool = False

    @property
    def family(self) -> str:
        """The model family the package was built for (1.0 packages: ``"wav2lip"``)."""
        return self.manifest.model.family if self.manifest.model is not None else "wav2lip"

    @property
    def audio_mode(self) -> str:
        """The audio feature the family's network takes (1.0 packages: ``"mel"``)."""
        return self.manifest.model.audio_mode if self.manifest.model is not None else "mel"

    @property
    def n_frames(self) -> int:
        return int(self.rects.shape[0])

    @property
    def fps(self) -> float:
        return self.manifest.video.fps

    @property
    def crop_size(self) -> int:
        return self.manifest.crop.size

    def decode_frames(self, threads: int = 1) -> list[np.ndarray]:
        """Decode every stored full frame into RAM (BGR uint8 (H, W, 3) each), on up to ``threads`` threads
        (``cv2.imdecode`` releases the GIL).

        Raises :class:`PackageFormatError` naming the first frame that does not decode to the manifest's size.
        """
        if len(self.encoded_frames) != self.n_frames:
            raise UsageError(f"{self.path} was opened with load_frames=False; open it with load_frames=True")
        expected = (self.manifest.video.height, self.manifest.video.width, 3)
        codec = self.manifest.frames.codec

        def decode(index: int) -> np.ndarray:
            try:
                return decode_stored_frame(self.encoded_frames[index], index, expected, codec)
            except PackageFormatError as exc:
                raise PackageFormatError(f"{self.path}: {exc} Rebuild the package.") from None

        if threads <= 1 or self.n_frames <= 1:
            return [decode(i) for i in range(self.n_frames)]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(threads, self.n_frames)) as pool:
            return list(pool.map(decode, range(self.n_frames)))

    def read_checkpoint(self, name: str = "model/checkpoint") -> bytes | None:
        """An embedded checkpoint's bytes, or ``None`` (read from disk: call at load time only).

        ``name``: ``model/checkpoint`` (the network) or ``model/audio_encoder`` (the AVE encoder).
        """
        present = self.has_checkpoint if name == "model/checkpoint" else self.has_audio_encoder
        if not present:
            return None
        with h5py.File(self.path, "r") as f:
            return bytes(np.asarray(f[name]).tobytes())


def _shape_symbols(manifest: Manifest, f: h5py.File) -> dict[str, int]:
    return {
        "N": manifest.video.frame_count,
        "S": manifest.crop.size,
        "K": manifest.faces.num_points,
        "T": manifest.audio.mel_columns,
        "A": manifest.audio.samples,
        "B": int(f["model/checkpoint"].shape[0]) if "model/checkpoint" in f else 0,
        "E": int(f["model/audio_encoder"].shape[0]) if "model/audio_encoder" in f else 0,
        "F": int(f["audio/features"].shape[0]) if "audio/features" in f else 0,
        "D": _feature_width(f),
    }


def _feature_width(f: h5py.File) -> int:
    """Values per row of ``audio/features`` (0 when absent or not 2-D: the shape check then reports it)."""
    if "audio/features" not in f or f["audio/features"].ndim != 2:
        return 0
    return int(f["audio/features"].shape[1])


# What h5py raises when a file's internal structure is damaged (a killed writer, flipped bytes): a broken
# object header is a KeyError, a bad B-tree an OSError or RuntimeError. Readers turn them into one error.
HDF5_DAMAGE = (KeyError, OSError, RuntimeError)


def damaged(path: Path, exc: BaseException) -> PackageFormatError:
    """The error for a package whose HDF5 structure cannot be read."""
    return PackageFormatError(
        f"{path}: the HDF5 structure is damaged ({type(exc).__name__}: {exc}); the file was not written "
        "completely or was changed afterwards. Rebuild it, or copy it again"
    )


def read_manifest(f: h5py.File, path: Path) -> Manifest:
    """Check the root attributes and parse the manifest (raises PackageFormatError/PackageVersionError)."""
    try:
        return _read_manifest(f, path)
    except LipsyncError:
        raise
    except HDF5_DAMAGE as exc:
        raise damaged(path, exc) from exc


def _read_manifest(f: h5py.File, path: Path) -> Manifest:
    fmt = f.attrs.get("format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode("utf-8", "replace")
    if fmt != FORMAT_NAME:
        raise PackageFormatError(
            f"{path} is an HDF5 file but not a sanders package (root attribute format={fmt!r}); "
            "build one with `lipsync build-package VIDEO`"
        )
    check_version(parse_version(_attr_text(f, "format_version", path)))
    manifest = Manifest.from_json(_attr_text(f, "manifest", path))
    m = manifest
    limits = [
        (m.video.frame_count, 1, MAX_FRAMES, "video.frame_count"),
        (m.video.width, 1, MAX_FRAME_SIDE, "video.width"),
        (m.video.height, 1, MAX_FRAME_SIDE, "video.height"),
        (m.crop.size, 8, MAX_CROP_SIZE, "crop.size"),
        (m.faces.num_points, 1, MAX_LANDMARKS, "faces.num_points"),
        (m.audio.samples, 1, MAX_AUDIO_SAMPLES, "audio.samples"),
        (m.audio.mel_columns, 1, MAX_AUDIO_SAMPLES // 200 + 1, "audio.mel_columns"),
    ]
    for value, low, high, name in limits:
        if not low <= value <= high:
            raise PackageFormatError(f"{path}: manifest {name} is {value}; expected {low}..{high}")
    if not 0 < m.video.fps <= MAX_FPS:
        raise PackageFormatError(
            f"{path}: manifest video.fps is {m.video.fps}; expected more than 0, at most {MAX_FPS:g}"
        )
    if m.model is not None:
        row = m.model.feature_row_shape
        sizes_ok = all(1 <= d <= MAX_FEATURE_DIM for d in row) and int(np.prod(row)) <= MAX_FEATURE_DIM
        if len(row) > 4 or not sizes_ok:
            raise PackageFormatError(
                f"{path}: manifest model.feature_row_shape is {row}; expected up to 4 sizes whose product is "
                f"1..{MAX_FEATURE_DIM}"
            )
    return manifest


def _attr_text(f: h5py.File, name: str, path: Path) -> str:
    value = f.attrs.get(name)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        raise PackageFormatError(
            f"{path}: root attribute {name!r} is missing or not text; the file is damaged"
        )
    if len(value) > MAX_MANIFEST_BYTES:
        raise PackageFormatError(f"{path}: root attribute {name!r} exceeds {MAX_MANIFEST_BYTES} bytes")
    return value


def open_hdf5(path: Path) -> h5py.File:
    """Open read-only, turning "missing" and "not HDF5" into our errors."""
    if not path.exists():
        raise InputNotFoundError(
            f"package {path} does not exist; build one with `lipsync build-package VIDEO`"
        )
    if not path.is_file():
        raise PackageFormatError(f"{path} is not a file; expected a .sanders package")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise PackageFormatError(
            f"{path} is not a sanders package (not an HDF5 file, or truncated): {exc}"
        ) from exc


def _read_frames(f: h5py.File, path: Path, indices: Iterable[int]) -> list[bytes]:
    frames_ds = f["frames"]
    encoded: list[bytes] = []
    for i in indices:
        item = frames_ds[i]
        if item.size == 0 or item.size > MAX_ENCODED_FRAME_BYTES:
            raise PackageFormatError(f"{path}: frame {i} holds {item.size} bytes; expected an encoded image")
        encoded.append(item.tobytes())
    return encoded


def read_encoded_frames(package: Package, indices: Iterable[int]) -> list[bytes]:
    """The encoded full frames ``indices`` of an opened package, read from its file (for tools that need
    a few frames, e.g. a preview; a server loads them all with :func:`open_package`)."""
    with open_hdf5(package.path) as f:
        return _read_frames(f, package.path, indices)


def expected_shape(spec_shape: tuple[str | int, ...], symbols: dict[str, int]) -> tuple[int, ...]:
    return tuple(symbols[d] if isinstance(d, str) else d for d in spec_shape)


def open_package(path: str | Path, *, mmap: bool = True, load_frames: bool = True) -> Package:
    """Open ``path``: check version, manifest, every dataset's shape and dtype, map hot arrays.

    Checksums are not verified here (that reads every byte; see :func:`lipsync_tools.package.validate`).
    With ``mmap`` true, contiguous datasets become read-only ``np.memmap`` views of the file (zero copy);
    datasets another writer stored chunked or compressed are read into RAM instead. With ``load_frames``
    false the encoded full frames stay on disk (``encoded_frames`` is empty); read the few a tool needs
    with :func:`read_encoded_frames`.
    """
    path = Path(path)
    try:
        return _open_package(path, mmap, load_frames)
    except LipsyncError:
        raise
    except HDF5_DAMAGE as exc:
        raise damaged(path, exc) from exc


def _open_package(path: Path, mmap: bool, load_frames: bool) -> Package:
    with open_hdf5(path) as f:
        manifest = read_manifest(f, path)
        symbols = _shape_symbols(manifest, f)
        arrays: dict[str, np.ndarray] = {}
        mapped: list[str] = []
        for spec in DATASETS:
            if spec.path not in f:
                if spec.required:
                    raise PackageFormatError(f"{path}: dataset {spec.path!r} is missing ({spec.description})")
                continue
            ds = f[spec.path]
            if not isinstance(ds, h5py.Dataset):
                raise PackageFormatError(f"{path}: {spec.path!r} is a group; expected a dataset")
            want = expected_shape(spec.shape, symbols)
            if ds.shape != want:
                raise PackageFormatError(
                    f"{path}: dataset {spec.path!r} has shape {ds.shape}; expected {want} from the manifest"
                )
            if spec.path in ("frames", "model/checkpoint", "model/audio_encoder"):
                continue
            if ds.dtype != np.dtype(spec.dtype):
                raise PackageFormatError(
                    f"{path}: dataset {spec.path!r} has dtype {ds.dtype}; expected {spec.dtype}"
                )
            offset = ds.id.get_offset()
            if mmap and ds.chunks is None and ds.compression is None and offset is not None and ds.size:
                arrays[spec.path] = np.memmap(path, dtype=ds.dtype, mode="r", offset=offset, shape=ds.shape)
                mapped.append(spec.path)
            else:
                arrays[spec.path] = np.asarray(ds[...])
        encoded = _read_frames(f, path, range(f["frames"].shape[0])) if load_frames else []
        has_checkpoint = "model/checkpoint" in f
        has_audio_encoder = "model/audio_encoder" in f
        for name, symbol in (("model/checkpoint", "B"), ("model/audio_encoder", "E")):
            if symbols[symbol] > MAX_CHECKPOINT_BYTES:
                raise PackageFormatError(f"{path}: embedded {name} exceeds {MAX_CHECKPOINT_BYTES} bytes")
        features = arrays.get("audio/features")
        row = manifest.model.feature_row_shape if manifest.model is not None else []
        if features is not None and (not row or features.shape[1] != int(np.prod(row))):
            raise PackageFormatError(
                f"{path}: audio/features has rows of {features.shape[1]} values but the manifest's "
                f"model.feature_row_shape is {row}; rebuild the package"
            )
    return Package(
        path=path,
        manifest=manifest,
        crops=arrays["crops"],
        rects=arrays["rects"],
        input_mask=arrays["masks/input"],
        blend_masks=arrays["masks/blend"],
        landmarks=arrays["landmarks"],
        boxes=arrays["boxes"],
        filled=arrays["filled"],
        pcm=arrays["audio/pcm"],
        mel=arrays["audio/mel"],
        mel_index=arrays["audio/mel_index"],
        encoded_frames=encoded,
        has_checkpoint=has_checkpoint,
        memory_mapped=tuple(mapped),
        features=features,
        has_audio_encoder=has_audio_encoder,
    )
