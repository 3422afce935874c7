"""``lipsync``: every command parses options, calls one library function, and maps errors to exit codes.

Errors are one line on stderr with the error's distinct exit code (see lipsync_tools/errors.py); ``--debug``
shows the traceback and third-party log output instead. The app and its shared options live in
``cli/app.py``; each command module registers on it when imported here.
"""

from __future__ import annotations

# The package commands first: `lipsync --help` lists commands in the order they register.
from . import package_cmds as _package_cmds  # noqa: F401  (registers build-package, inspect, validate, ...)

# isort: split
from . import bench_cmd as _bench_cmd  # noqa: F401  (registers `lipsync bench`)
from . import import_cmd as _import_cmd  # noqa: F401  (registers `lipsync import`)
from . import models_cmd as _models_cmd  # noqa: F401  (registers `lipsync models export|quantize`)
from . import pull_cmd as _pull_cmd  # noqa: F401  (registers `lipsync pull`)
from . import render_cmd as _render_cmd  # noqa: F401  (registers `lipsync render`)
from . import serve_cmd as _serve_cmd  # noqa: F401  (registers `lipsync serve`)
from .app import app, run_command

__all__ = ["app", "main", "run_command"]


def main() -> None:
    app()
