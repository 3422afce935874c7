"""The ``lipsync`` Typer app, its shared options and :func:`run_command`: every command registers on it.

Import order has one direction: ``cli/main.py`` imports the command modules, and they import this module
(never ``main``), so there is no import cycle.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Annotated, TypeVar

import typer

from .._quiet import quiet_third_party
from .._version import __version__
from ..errors import BuildFailedError, LipsyncError
from .output import error_line, print_json

app = typer.Typer(
    name="lipsync",
    help="Build preprocessed avatar packages from videos and serve real-time lip-sync frames from them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

T = TypeVar("T")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON summary on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks and third-party log output.")]
ForceOpt = Annotated[bool, typer.Option("--force", "-f", help="Overwrite an existing output file.")]


def run_command(debug: bool, json_output: bool, action: Callable[[], T]) -> T:
    """Run ``action``; turn our errors into one stderr line (and a JSON error) plus the error's exit code."""
    quiet_third_party(debug)
    try:
        return action()
    except (typer.Exit, typer.Abort):
        raise
    except LipsyncError as exc:
        if debug:
            raise
        if json_output and not isinstance(exc, BuildFailedError):
            print_json(
                {"ok": False, "error": type(exc).__name__, "exit_code": exc.exit_code, "message": str(exc)}
            )
        error_line(str(exc))
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        error_line("interrupted; nothing was written")
        raise typer.Exit(130) from None
    except Exception as exc:
        if debug:
            raise
        error_line(f"internal error: {type(exc).__name__}: {exc} (run again with --debug for the traceback)")
        raise typer.Exit(1) from None


def version_callback(value: bool) -> None:
    if value:
        sys.stdout.write(f"lipsync-tools {__version__}\n")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=version_callback, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """lipsync-tools: preprocessed avatar packages and a zero-I/O lip-sync server."""
