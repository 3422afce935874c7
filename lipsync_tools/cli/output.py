"""Terminal output for the CLI: Rich progress bars on a terminal, nothing in CI or when piped."""

from __future__ import annotations

import json
import os
import sys
from enum import StrEnum
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

stderr = Console(stderr=True, highlight=False)


class InferenceBackendName(StrEnum):
    """``--backend`` of ``serve``, ``render`` and ``bench``: the inference runtime."""

    torch = "torch"
    onnx = "onnx"


def interactive(json_output: bool, quiet: bool) -> bool:
    """Progress bars only for a person at a terminal: not with --json/--quiet, not in CI, not when piped."""
    return not (json_output or quiet) and sys.stderr.isatty() and not os.environ.get("CI")


class RichProgress:
    """A :class:`lipsync_tools.pipeline.progress.Progress` drawing one Rich bar per stage."""

    def __init__(self) -> None:
        self._progress = Progress(
            TextColumn("{task.description:<24}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=stderr,
            transient=False,
        )
        self._task: Any = None

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def start(self, stage: str, total: int | None) -> None:
        self._task = self._progress.add_task(stage, total=total)

    def advance(self, steps: int = 1) -> None:
        if self._task is not None:
            self._progress.advance(self._task, steps)

    def finish(self) -> None:
        if self._task is not None:
            task = self._progress.tasks[-1]
            self._progress.update(self._task, total=task.completed)
        self._task = None


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def error_line(message: str) -> None:
    """One line on stderr, no markup interpretation (messages may contain brackets)."""
    line = Text("error: ", style="bold red")
    line.append(message)
    stderr.print(line, soft_wrap=True)
