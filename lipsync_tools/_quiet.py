"""Keep third-party log noise (TensorFlow Lite / absl lines from MediaPipe, numba, warnings) off the terminal.

MediaPipe's C++ code writes straight to file descriptor 2, below Python's ``sys.stderr``, so silencing it
means pointing fd 2 somewhere else for the duration of the noisy call. ``--debug`` turns all of this off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator

# Read once by the native libraries at import time; setting them early is cheap and harmless.
_NATIVE_LOG_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "GLOG_minloglevel": "3",
    "ABSL_MIN_LOG_LEVEL": "3",
}

_NOISY_LOGGERS = ("absl", "numba", "jax", "matplotlib", "PIL", "h5py", "face_alignment")


def quiet_third_party(debug: bool) -> None:
    """Configure environment, logging and warnings so that only our own messages reach the user."""
    if debug:
        logging.basicConfig(level=logging.DEBUG)
        return
    for key, value in _NATIVE_LOG_ENV.items():
        os.environ.setdefault(key, value)
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"(?!lipsync_tools)")


@contextlib.contextmanager
def native_stderr_silenced(enabled: bool = True) -> Iterator[None]:
    """Point file descriptor 2 at /dev/null while the block runs (a no-op when ``enabled`` is false).

    Not thread safe with respect to other writers of fd 2; use it around construction and calls of native
    libraries that log on their own (MediaPipe), never around code that reports errors to the user.
    """
    if not enabled:
        yield
        return
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # pytest capture or an embedded interpreter
        fd = 2
    sys.stderr.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), fd)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, fd)
    finally:
        os.close(saved)
