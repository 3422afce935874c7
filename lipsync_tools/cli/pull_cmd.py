"""``lipsync pull``: download a package or checkpoint over HTTP(S), size-capped and verified (registered by
``cli/main.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from ..remote.pull import DEFAULT_TIMEOUT_S, PullResult
from .app import DebugOpt, JsonOpt, QuietOpt, app, run_command
from .output import interactive, print_json, stderr


@app.command("pull")
def pull_cmd(
    url: Annotated[
        str, typer.Argument(help="http(s) URL of a package or checkpoint to download.", show_default=False)
    ],
    sha256: Annotated[
        str | None,
        typer.Option(
            "--sha256",
            help="Expected SHA-256 (64 hex digits). A download that does not match is deleted; a file "
            "that already has it is kept and nothing is downloaded.",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="File to write, or a folder to write into (default: the current folder; the file name "
            "comes from the URL, or is the SHA-256).",
        ),
    ] = None,
    max_size: Annotated[
        str, typer.Option("--max-size", help="Refuse a larger file (e.g. 512MiB, 8GiB, 1e9).")
    ] = "8GiB",
    timeout: Annotated[
        float,
        typer.Option("--timeout", help="Seconds to wait to connect, or for more data, before giving up."),
    ] = DEFAULT_TIMEOUT_S,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume/--no-resume",
            help="Continue a partial download (FILE.part) left by an interrupted run; keep one for later.",
        ),
    ] = True,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
    force: Annotated[
        bool, typer.Option("--force", "-f", help="Replace an existing file (unless it has the --sha256).")
    ] = False,
    debug: DebugOpt = False,
) -> None:
    """Download a file over HTTP(S): resumable, size-capped, checked against --sha256, renamed into place
    only when complete."""
    from ..remote import parse_size, pull, url_file_name

    def action() -> None:
        limit = parse_size(max_size)
        dest = output if output is not None else Path.cwd()
        kwargs: dict[str, Any] = {
            "sha256": sha256,
            "max_bytes": limit,
            "timeout_s": timeout,
            "resume": resume,
            "force": force,
        }
        if interactive(json_output, quiet):
            with _DownloadBar(url_file_name(url) or "download") as bar:
                result = pull(url, dest, progress=bar, **kwargs)
        else:
            result = pull(url, dest, **kwargs)
        if json_output:
            print_json(result.summary())
        elif not quiet:
            stderr.print(_summary_line(result), highlight=False, markup=False, soft_wrap=True)

    run_command(debug, json_output, action)


def _summary_line(result: PullResult) -> str:
    from ..remote import format_size

    if result.skipped:
        return f"{result.path} is already there with sha256 {result.sha256}; nothing downloaded"
    fetched = result.bytes - result.resumed_from
    speed = f", {format_size(fetched / result.seconds)}/s" if result.seconds > 0 else ""
    resumed = f", resumed after {format_size(result.resumed_from)}" if result.resumed_from else ""
    return (
        f"pulled {result.path}: {format_size(result.bytes)} in {result.seconds:.1f} s{speed}{resumed}, "
        f"sha256 {result.sha256}"
    )


class _SpeedColumn(ProgressColumn):
    """Speed in the binary units the rest of the bar and the summary use (Rich's own is decimal)."""

    def render(self, task: Task) -> Text:
        from ..remote import format_size

        speed = task.finished_speed or task.speed
        return Text(f"{format_size(speed)}/s" if speed is not None else "?", style="progress.data.speed")


class _DownloadBar:
    """A ``pull`` progress callback drawing one Rich bar: bytes, speed, time left."""

    def __init__(self, label: str) -> None:
        self._label = label
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            _SpeedColumn(),
            TimeRemainingColumn(),
            console=stderr,
            transient=False,
        )
        self._task: Any = None

    def __enter__(self) -> _DownloadBar:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def __call__(self, done: int, total: int | None) -> None:
        if self._task is None:
            self._task = self._progress.add_task(self._label, total=total, completed=done)
        else:
            self._progress.update(self._task, completed=done, total=total)
