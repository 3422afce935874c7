"""Every output file a command writes goes through ``lipsync_tools._atomic`` (issue 11): the contact sheet,
a rendered video, an ONNX export and a download are fsync-ed, renamed into place and their folder fsync-ed;
for the sheet and the video, a failure at the last step (a full disk shows at fsync) leaves no temporary
file and no destination (the export and the download delete theirs in their own ``finally``/``clean_up``).

The package itself is covered in tests/package/test_writer_atomic.py, the helper in tests/test_atomic.py.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from lipsync_tools.errors import OutputNotWritableError
from tests.package.synthetic import write_synthetic_package
from tests.test_atomic import expected_events, record_durability


def _write_sheet(dest: Path) -> None:
    from lipsync_tools.pipeline.preview import make_contact_sheet

    make_contact_sheet(dest.parent.parent / "p.sanders", dest, frames=2)  # written by _folders


def _write_video(dest: Path) -> None:
    from lipsync_tools.media import write_video

    write_video(dest, [np.full((32, 48, 3), 90, np.uint8)] * 3, Fraction(25))


WRITERS: dict[str, tuple[str, Callable[[Path], None]]] = {
    "contact-sheet": ("sheet.png", _write_sheet),
    "video": ("out.mp4", _write_video),
}


def _folders(tmp_path: Path) -> Path:
    """``tmp_path/out`` for the output, and a package to preview beside it (written before any recording)."""
    write_synthetic_package(tmp_path / "p.sanders")
    out = tmp_path / "out"
    out.mkdir()
    return out


def _full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_output_is_fsynced_renamed_and_its_folder_fsynced(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    name, write = WRITERS[kind]
    out = _folders(tmp_path)
    events = record_durability(monkeypatch)
    write(out / name)
    assert events == expected_events(out / name)
    assert [p.name for p in out.iterdir()] == [name]


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_full_disk_at_fsync_leaves_nothing(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    name, write = WRITERS[kind]
    out = _folders(tmp_path)
    _full_disk(monkeypatch)
    with pytest.raises(OutputNotWritableError, match="No space left on device"):
        write(out / name)
    assert list(out.iterdir()) == []


@pytest.mark.slow
def test_onnx_export_is_fsynced_renamed_and_its_folder_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from lipsync_tools.models.export import export_model

    dest = tmp_path / "m.onnx"
    events = record_durability(monkeypatch)
    export_model("random", dest, family="ultralight-160")
    assert events == expected_events(dest)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_download_is_fsynced_renamed_and_its_folder_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from lipsync_tools.remote import pull
    from tests.remote.http_server import Reply, loopback_server

    body = os.urandom(50_000)
    with loopback_server() as server:
        url = server.route("/a.sanders", Reply(body))
        events = record_durability(monkeypatch)
        pull(url, tmp_path, sha256=hashlib.sha256(body).hexdigest())
    dest = tmp_path / "a.sanders"
    assert dest.read_bytes() == body
    assert events == expected_events(dest)
