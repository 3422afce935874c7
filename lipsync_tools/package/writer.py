"""Write a sanders package: streamed frame by frame into a temporary file, renamed into place at the end.

An interrupted or failed build never leaves a file at the output path: everything goes to
``.NAME.sanders.<pid>.tmp`` in the same folder (so the final rename is atomic on the same file system)
and that file is removed on any error, including one in the constructor. :meth:`PackageWriter.commit` puts
it in place with :func:`lipsync_tools._atomic.atomic_replace` (fsync the file, rename, fsync the folder).
A process killed outright (SIGKILL, power loss) can leave the hidden temporary file behind, never a file at
the output path; the next build uses its own PID's name, so it is not blocked by it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from types import TracebackType

import h5py
import msgspec
import numpy as np

from .._atomic import atomic_replace, temp_path
from ..errors import OutputExistsError, OutputNotWritableError, PackageFormatError
from .manifest import DatasetMeta, Manifest
from .spec import DATASETS_BY_PATH, FORMAT_NAME, format_version_string


def check_output_path(path: Path, force: bool) -> None:
    """Fail early, before any work, if ``path`` cannot be written.

    Raises :class:`OutputExistsError` if it exists and ``force`` is false, :class:`OutputNotWritableError`
    if its folder is missing or not writable.
    """
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists; pass --force to overwrite it or choose another -o")
    if path.is_dir():
        raise OutputExistsError(f"{path} is a folder; expected a file path such as {path / 'avatar.sanders'}")
    folder = path.parent
    if not folder.is_dir():
        raise OutputNotWritableError(f"output folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputNotWritableError(f"output folder {folder} is not writable; choose another -o")


def dataset_sha256(array: np.ndarray) -> str:
    """SHA-256 of a fixed-size dataset: its C-order bytes, little-endian as stored."""
    # hash a byte view of the array, not a copy: landmarks of a long video are tens of MB
    return hashlib.sha256(np.ascontiguousarray(array).data.cast("B")).hexdigest()


class _FramesHash:
    """SHA-256 of the ``frames`` dataset: for each frame in order, u32 LE length then the encoded bytes."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def update(self, data: bytes) -> None:
        self._hash.update(len(data).to_bytes(4, "little"))
        self._hash.update(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def frames_sha256(frames: list[bytes] | list[np.ndarray]) -> str:
    h = _FramesHash()
    for frame in frames:
        h.update(bytes(frame))
    return h.hexdigest()


class PackageWriter:
    """Create one package. Use as a context manager; call :meth:`commit` last.

    ``n_frames``, ``crop_size`` and ``num_points`` fix the shapes of the per-frame datasets, so the hot
    arrays can be allocated contiguous up front and filled frame by frame without holding the video in RAM.
    """

    def __init__(self, path: Path, *, n_frames: int, crop_size: int, num_points: int, force: bool) -> None:
        check_output_path(path, force)
        self.path = path
        self.tmp_path = temp_path(path)
        self.n_frames = n_frames
        self.num_points = num_points
        self._frames_hash = _FramesHash()
        self._stream_hash = {"crops": hashlib.sha256(), "masks/blend": hashlib.sha256()}
        self._next_frame = 0
        self._written: dict[str, DatasetMeta] = {}
        # mode "w" truncates: a stale file of a killed process that had our PID is simply reused
        stale = self.tmp_path.exists()
        try:
            self._file = h5py.File(self.tmp_path, "w", libver=("earliest", "v110"), track_order=True)
        except OSError as exc:
            if not stale:  # HDF5 may have created the file before failing; what was there is not ours
                with contextlib.suppress(OSError):
                    self.tmp_path.unlink(missing_ok=True)
            raise OutputNotWritableError(f"cannot create {self.tmp_path}: {exc}") from exc
        try:
            # the hot arrays are allocated here, so a full disk fails here: the file exists, remove it
            self._frames = self._file.create_dataset(
                "frames",
                shape=(n_frames,),
                dtype=h5py.vlen_dtype(np.uint8),
                chunks=(min(n_frames, 64),),
                track_times=False,
            )
            s = crop_size
            self._crops = self._hot("crops", (n_frames, s, s, 3), np.uint8)
            self._blend = self._hot("masks/blend", (n_frames, s, s), np.uint8)
        except BaseException as exc:
            self.abort()
            if isinstance(exc, OSError):
                raise OutputNotWritableError(f"cannot write {self.tmp_path}: {exc}") from exc
            raise

    # -- helpers -------------------------------------------------------------------------------------
    def _hot(self, name: str, shape: tuple[int, ...], dtype: type) -> h5py.Dataset:
        # Contiguous, uncompressed, allocated now ("early") so its file offset exists for memory-mapping.
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        dcpl.set_obj_track_times(False)
        space = h5py.h5s.create_simple(shape)
        tid = h5py.h5t.py_create(np.dtype(dtype))
        parent = self._file.require_group(name.rpartition("/")[0]) if "/" in name else self._file
        dsid = h5py.h5d.create(parent.id, name.rpartition("/")[2].encode(), tid, space, dcpl=dcpl)
        return h5py.Dataset(dsid)

    def _check(self, name: str, array: np.ndarray) -> None:
        spec = DATASETS_BY_PATH[name]
        if array.dtype != np.dtype(spec.dtype):
            raise PackageFormatError(f"internal: {name} has dtype {array.dtype}; the spec says {spec.dtype}")

    # -- per frame -----------------------------------------------------------------------------------
    def write_frame(self, index: int, encoded_frame: bytes, crop: np.ndarray, blend_mask: np.ndarray) -> None:
        """Store frame ``index`` (frames must come in order 0, 1, 2, ...)."""
        if index != self._next_frame:
            raise PackageFormatError(
                f"internal: frame {index} written out of order (expected {self._next_frame})"
            )
        self._frames[index] = np.frombuffer(encoded_frame, dtype=np.uint8)
        self._frames_hash.update(encoded_frame)
        crop = np.ascontiguousarray(crop, dtype=np.uint8)
        blend_mask = np.ascontiguousarray(blend_mask, dtype=np.uint8)
        self._crops[index] = crop
        self._blend[index] = blend_mask
        self._stream_hash["crops"].update(crop.tobytes())
        self._stream_hash["masks/blend"].update(blend_mask.tobytes())
        self._next_frame += 1

    # -- whole arrays --------------------------------------------------------------------------------
    def write_array(self, name: str, array: np.ndarray) -> None:
        """Store a whole dataset (rects, landmarks, audio/mel, ...) contiguous and uncompressed."""
        array = np.ascontiguousarray(array)
        self._check(name, array)
        ds = self._hot(name, array.shape, array.dtype.type)
        if array.size:
            ds[...] = array
        self._written[name] = DatasetMeta(
            shape=list(array.shape), dtype=str(array.dtype), sha256=dataset_sha256(array)
        )

    def write_checkpoint(self, data: bytes, name: str = "model/checkpoint") -> None:
        """Embed a checkpoint's bytes (MAY; chunked and compressed, it is read once at load time).

        ``name`` is ``model/checkpoint`` (the lip-sync network) or ``model/audio_encoder`` (AVE encoder).
        """
        if name not in ("model/checkpoint", "model/audio_encoder"):
            raise PackageFormatError(f"internal: {name!r} is not a checkpoint dataset")
        arr = np.frombuffer(data, dtype=np.uint8)
        self._file.create_dataset(
            name,
            data=arr,
            chunks=True,
            compression="gzip",
            compression_opts=1,
            track_times=False,
        )
        self._written[name] = DatasetMeta(shape=[arr.size], dtype="uint8", sha256=dataset_sha256(arr))

    # -- finish --------------------------------------------------------------------------------------
    def commit(self, manifest: Manifest) -> Manifest:
        """Write the manifest with every dataset's checksum, then put the file in place: close (flushing
        HDF5's buffers), fsync, rename over the output path, fsync the folder.

        Raises :class:`OutputNotWritableError` when the disk refuses the data (e.g. it is full); the
        context manager then deletes the temporary file and the output path is as it was.
        """
        if self._next_frame != self.n_frames:
            raise PackageFormatError(f"internal: {self._next_frame} of {self.n_frames} frames were written")
        datasets = dict(self._written)
        datasets["frames"] = DatasetMeta(
            shape=[self.n_frames], dtype="vlen-uint8", sha256=self._frames_hash.hexdigest()
        )
        for name, ds in (("crops", self._crops), ("masks/blend", self._blend)):
            datasets[name] = DatasetMeta(
                shape=list(ds.shape), dtype="uint8", sha256=self._stream_hash[name].hexdigest()
            )
        manifest = msgspec.structs.replace(manifest, datasets=dict(sorted(datasets.items())))
        f = self._file
        f.attrs["format"] = FORMAT_NAME
        f.attrs["format_version"] = format_version_string()
        f.attrs["manifest"] = manifest.to_json()
        f.flush()
        f.close()
        try:
            atomic_replace(self.tmp_path, self.path)
        except OSError as exc:
            raise OutputNotWritableError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        return manifest

    def abort(self) -> None:
        """Close and delete the temporary file (idempotent)."""
        try:
            if self._file.id.valid:
                self._file.close()
        finally:
            with contextlib.suppress(OSError):
                self.tmp_path.unlink(missing_ok=True)

    def __enter__(self) -> PackageWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None or self.tmp_path.exists():
            self.abort()


def manifest_json_for_humans(manifest: Manifest) -> str:
    return json.dumps(manifest.to_dict(), indent=2, sort_keys=True)
