"""Atomic output files: written beside the destination, made durable, renamed over it, the rename synced.

Every command that writes a file the user asked for (a package, a contact sheet, a rendered video, an ONNX
export, a download) goes through here, so that an interrupted or failed write never leaves a file at the
destination that could be read as complete, and a finished one survives a power loss (issue 11):

1. the bytes go to a temporary file in the destination's own folder (a rename is only atomic within one
   file system), named ``.NAME.PID.tmp`` so that concurrent writers and a stale file left by a killed
   process never collide with the next run;
2. the temporary file is flushed and ``fsync``-ed, so the rename cannot reach the disk before the data;
3. ``os.replace`` renames it over the destination (atomic on POSIX and on Windows);
4. the folder is ``fsync``-ed, so the new directory entry itself is on disk (POSIX; skipped where a folder
   cannot be opened or synced, as on Windows and some network file systems).

A leaf module, like ``_quiet``: it imports only the standard library, so every layer (package, media,
models, remote, pipeline) may use it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_output", "atomic_replace", "fsync_file", "fsync_folder", "temp_path"]


def temp_path(dest: Path) -> Path:
    """The temporary file for ``dest``: ``.NAME.PID.tmp`` in the same folder (hidden, per process)."""
    return dest.with_name(f".{dest.name}.{os.getpid()}.tmp")


def fsync_file(path: Path) -> None:
    """Flush ``path``'s data to disk. Raises :class:`OSError` (e.g. ENOSPC, EIO surface here)."""
    # POSIX fsyncs any descriptor; Windows' _commit needs one opened for writing.
    fd = os.open(path, os.O_RDONLY if os.name == "posix" else os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable by syncing the folder itself; silently does nothing where that is
    not possible (Windows cannot open a folder; some file systems refuse fsync on one)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # the rename has happened; only its durability across a power loss is not guaranteed
    finally:
        os.close(fd)


def atomic_replace(tmp: Path, dest: Path) -> None:
    """Put the finished file ``tmp`` at ``dest``: fsync ``tmp``, rename it over ``dest``, fsync the folder.

    ``tmp`` must be closed (its writer's buffers flushed) and in ``dest``'s folder. An existing ``dest`` is
    replaced in one step; until the rename it is untouched. Raises :class:`OSError` from the fsync or the
    rename, in which case ``dest`` is as it was and ``tmp`` is left for the caller to delete.
    """
    fsync_file(tmp)
    os.replace(tmp, dest)
    fsync_folder(dest.parent)


@contextlib.contextmanager
def atomic_output(dest: Path) -> Iterator[Path]:
    """Yield the temporary path to write ``dest``'s bytes to; when the block ends normally, put it in place
    with :func:`atomic_replace`. On any exception (``KeyboardInterrupt`` included) the temporary file is
    deleted and ``dest`` is untouched.

    The block must close what it wrote before it ends.
    """
    tmp = temp_path(dest)
    try:
        yield tmp
        atomic_replace(tmp, dest)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
