"""Where a benchmark's results go: each output checked before a run of minutes, each file written atomically.

A benchmark runs for minutes (``--soak`` for as long as it is told); an output path that cannot be written
must fail before that, not after. :func:`check_outputs` refuses, in milliseconds, a path that is a folder, a
file that exists (without ``force``: the rule of every other command), a folder that does not exist or
cannot be written (a probe file is created and removed there), and two outputs on one path. Then
:func:`write_outputs` writes each file with :mod:`lipsync_tools._atomic` (a temporary file in the destination
folder, synced, renamed over the path): a reader sees the old file or the whole new one, and a failure (disk
full, an exception while drawing the plot) leaves no partial file and no temporary file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import OutputExistsError, OutputNotWritableError, UsageError

STDOUT = "-"
"""The path that means standard output (``--json -``); never checked or written as a file."""


def is_stdout(path: Path | None) -> bool:
    return path is not None and str(path) == STDOUT


def check_output(option: str, path: Path | None, *, force: bool = False) -> None:
    """Raise unless ``path`` (the value of ``option``) can be written as a file; ``None`` and ``-`` pass.

    :class:`OutputExistsError` for a folder, or an existing file without ``force``;
    :class:`OutputNotWritableError` for a folder that does not exist or cannot be written. Nothing is left
    behind (the write probe is removed).
    """
    if path is None or is_stdout(path):
        return
    if path.is_dir():
        raise OutputExistsError(f"{option} {path} is a folder; give a file path such as {path / 'result'}")
    if path.exists() and not force:
        raise OutputExistsError(
            f"{option} {path} already exists; pass --force to overwrite it or choose another path"
        )
    folder = _folder(path)
    if not folder.is_dir():
        raise OutputNotWritableError(
            f"{option} {path} cannot be written: the folder {folder} does not exist; create it first or "
            "choose another path"
        )
    try:
        handle, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=folder)
    except OSError as exc:
        raise OutputNotWritableError(
            f"{option} {path} cannot be written: {exc.strerror or exc} in {folder}; choose a folder you can "
            "write"
        ) from None
    os.close(handle)
    Path(probe).unlink(missing_ok=True)


def check_outputs(
    outputs: dict[str, Path | None], *, force: bool = False, source: Path | None = None
) -> None:
    """:func:`check_output` on each ``{option: path}``; also a :class:`UsageError` when two options name one
    file, or one names the benchmark's input ``source``."""
    seen: dict[Path, str] = {}
    for option, path in outputs.items():
        if path is None or is_stdout(path):
            continue
        resolved = path.resolve()
        if source is not None and resolved == source.resolve():
            raise UsageError(f"{option} {path} is the benchmark's input; choose another output path")
        if resolved in seen:
            raise UsageError(f"{seen[resolved]} and {option} both write {path}; give each its own path")
        seen[resolved] = option
    for option, path in outputs.items():
        check_output(option, path, force=force)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write the whole file to, renamed over ``path`` (and synced) when
    the block ends without an exception, deleted when it raises (:func:`lipsync_tools._atomic.atomic_output`).
    The exception goes on; an :class:`OSError` (disk full, ...) becomes :class:`OutputNotWritableError`
    naming ``path``."""
    from .._atomic import atomic_output

    try:
        with atomic_output(path) as temp:
            yield temp
    except OSError as exc:
        raise OutputNotWritableError(
            f"cannot write {path}: {exc.strerror or exc}; nothing was written there"
        ) from exc


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``data`` (text: UTF-8) to ``path`` atomically (see :func:`atomic_path`)."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as temp:
        _fill(temp, payload)


def write_outputs(
    result: dict[str, Any],
    *,
    json_path: Path | None = None,
    markdown_path: Path | None = None,
    plot_path: Path | None = None,
    stdout: Callable[[str], Any] | None = None,
) -> None:
    """Write ``result`` as JSON (``-``: to ``stdout``), Markdown tables and the plot, each file atomically."""
    import json

    from .report import to_markdown

    if json_path is not None:
        text = json.dumps(result, indent=2) + "\n"
        if is_stdout(json_path):
            if stdout is None:
                raise UsageError("--json -: no standard output to write to")
            stdout(text)
        else:
            write_atomic(json_path, text)
    if markdown_path is not None:
        write_atomic(markdown_path, to_markdown(result))
    if plot_path is not None:
        from .plot import write_plot

        with atomic_path(plot_path) as temp:
            write_plot(result, temp)


def _fill(path: Path, payload: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(payload)


def _folder(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")
