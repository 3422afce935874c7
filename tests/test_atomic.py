"""``lipsync_tools._atomic``: a temporary file beside the destination, fsync, rename, fsync the folder."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from lipsync_tools._atomic import atomic_output, atomic_replace, fsync_folder, temp_path

Event = tuple[str, int, bool]  # ("fsync", inode, is a folder) or ("replace", inode of the source, False)


def record_durability(monkeypatch: pytest.MonkeyPatch) -> list[Event]:
    """Record every ``os.fsync`` and ``os.replace``, in order, by inode (a rename keeps the inode)."""
    events: list[Event] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        events.append(("fsync", st.st_ino, stat.S_ISDIR(st.st_mode)))
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        events.append(("replace", os.stat(src).st_ino, False))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def expected_events(dest: Path) -> list[Event]:
    """The file synced, then renamed, then its folder synced."""
    ino = dest.stat().st_ino
    return [("fsync", ino, False), ("replace", ino, False), ("fsync", dest.parent.stat().st_ino, True)]


def test_temp_path_is_hidden_beside_the_destination_and_names_the_process(tmp_path: Path):
    assert temp_path(tmp_path / "a.png") == tmp_path / f".a.png.{os.getpid()}.tmp"


def test_atomic_output_fsyncs_the_file_renames_then_fsyncs_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    events = record_durability(monkeypatch)
    dest = tmp_path / "out.bin"
    with atomic_output(dest) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.bin.")
        tmp.write_bytes(b"complete")
        assert not dest.exists()  # nothing at the destination until the block has finished
    assert dest.read_bytes() == b"complete"
    assert events == expected_events(dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_failure_in_the_middle_leaves_no_temporary_file_and_no_destination(tmp_path: Path):
    dest = tmp_path / "out.bin"
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_output(dest) as tmp:  # noqa: PT012
        tmp.write_bytes(b"half")
        raise RuntimeError("disk on fire")
    assert list(tmp_path.iterdir()) == []


def test_interrupt_leaves_no_temporary_file(tmp_path: Path):
    with pytest.raises(KeyboardInterrupt), atomic_output(tmp_path / "out.bin") as tmp:  # noqa: PT012
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_an_existing_destination_is_untouched_on_failure(tmp_path: Path):
    """What ``--force`` replaces stays whole until the new file is complete."""
    dest = tmp_path / "out.bin"
    dest.write_bytes(b"the old, good file")
    with pytest.raises(RuntimeError), atomic_output(dest) as tmp:  # noqa: PT012
        tmp.write_bytes(b"new but unfinished")
        raise RuntimeError("failed")
    assert dest.read_bytes() == b"the old, good file"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_a_failed_fsync_of_the_file_keeps_the_old_destination(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A full disk often shows only at fsync: then the rename must not happen."""
    dest = tmp_path / "out.bin"
    dest.write_bytes(b"old")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"), atomic_output(dest) as tmp:
        tmp.write_bytes(b"new")
    assert dest.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_atomic_replace_replaces_an_existing_destination(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    dest, tmp = tmp_path / "out.bin", tmp_path / ".out.bin.1.tmp"
    dest.write_bytes(b"old")
    tmp.write_bytes(b"new")
    events = record_durability(monkeypatch)
    atomic_replace(tmp, dest)
    assert dest.read_bytes() == b"new" and not tmp.exists()
    assert events == expected_events(dest)


def test_folder_fsync_is_skipped_where_the_platform_refuses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Some file systems refuse fsync on a folder (EINVAL) and Windows cannot open one: the rename stands."""
    real_fsync, real_open = os.fsync, os.open

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    dest = tmp_path / "a.bin"
    with atomic_output(dest) as tmp:
        tmp.write_bytes(b"x")
    assert dest.read_bytes() == b"x"

    def no_folders(path: str | os.PathLike[str], flags: int, mode: int = 0o777) -> int:
        if Path(path).is_dir():
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", no_folders)
    fsync_folder(tmp_path)  # no error
    with atomic_output(tmp_path / "b.bin") as tmp:
        tmp.write_bytes(b"y")
    assert (tmp_path / "b.bin").read_bytes() == b"y"
