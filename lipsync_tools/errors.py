"""The errors lipsync-tools raises.

Every error is a :class:`LipsyncError`. Messages say what was found, what was expected and how to fix it;
the CLI prints ``str(error)`` as one line and exits with ``error.exit_code``, which is distinct per kind of
failure so scripts can tell them apart (the README lists them). Each subclass also derives from the closest
built-in exception so ``except FileNotFoundError`` style code keeps working.
"""

from __future__ import annotations


class LipsyncError(Exception):
    """Base class of every error raised on purpose by lipsync-tools."""

    exit_code: int = 1


class UsageError(LipsyncError, ValueError):
    """An option or argument has a value the command cannot use."""

    exit_code = 2


class InputNotFoundError(LipsyncError, FileNotFoundError):
    """An input file (video, audio, package, checkpoint) does not exist."""

    exit_code = 3


class NotAVideoError(LipsyncError, ValueError):
    """The file exists but holds no decodable video stream."""

    exit_code = 4


class CorruptMediaError(LipsyncError, ValueError):
    """A video or audio stream is truncated or damaged part-way through."""

    exit_code = 5


class EmptyVideoError(LipsyncError, ValueError):
    """The video stream decodes to zero frames."""

    exit_code = 6


class NoAudioError(LipsyncError, ValueError):
    """Neither the video nor ``--audio`` provides an audio track."""

    exit_code = 7


class NoFaceDetectedError(LipsyncError, ValueError):
    """No usable face was found (anywhere, or on a frame when the policy forbids filling)."""

    exit_code = 8


class OutputExistsError(LipsyncError, FileExistsError):
    """The output path exists and ``--force`` was not given."""

    exit_code = 9


class OutputNotWritableError(LipsyncError, PermissionError):
    """The output folder does not exist or cannot be written."""

    exit_code = 10


class PackageFormatError(LipsyncError, ValueError):
    """A file is not a valid sanders package (wrong layout, shape, dtype or checksum)."""

    exit_code = 11


class PackageVersionError(PackageFormatError):
    """The package was written by a newer, incompatible major format version."""

    exit_code = 12


class MissingWeightsError(LipsyncError, FileNotFoundError):
    """Model weights a backend needs are not on disk (nothing is ever downloaded)."""

    exit_code = 13


class BackendUnavailableError(LipsyncError, ImportError):
    """An optional dependency of the chosen backend is not installed."""

    exit_code = 14


class CheckpointError(LipsyncError, ValueError):
    """A model checkpoint does not match the architecture (missing/unexpected keys, wrong shapes)."""

    exit_code = 15


class ProtocolError(LipsyncError, ValueError):
    """A wire message is malformed, oversize, or refers to something that does not exist.

    ``code`` is the stable, machine-readable error code sent back to the client (see ``docs/protocol.md``).
    """

    exit_code = 16

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class RequestError(LipsyncError, ValueError):
    """The engine refused, or could not render, one frame request (an unknown package, a frame out of range,
    unusable audio, a full queue...).

    ``reason`` is a stable token of :class:`lipsync_tools.engine.requests.Reason`; the server maps it to its
    wire error code (a client then sees a :class:`ProtocolError`). A local ``lipsync render`` exits with it.
    """

    exit_code = 22

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class BuildFailedError(LipsyncError):
    """One or more packages of a batch build failed (the others were still built)."""

    exit_code = 17


class ImportFormatError(LipsyncError, ValueError):
    """An avatar folder made by another tool (``lipsync import``) lacks a file or holds inconsistent data."""

    exit_code = 18


class DownloadError(LipsyncError):
    """A download (``lipsync pull``, a catalog URL) failed: HTTP error, redirect loop, truncated or stalled
    transfer, too large, or a wrong SHA-256.

    ``reason`` is a stable, machine-readable word (``http_status``, ``server_error``, ``redirect_loop``,
    ``too_many_redirects``, ``bad_redirect``, ``too_large``, ``truncated``, ``checksum``, ``stalled``,
    ``too_slow``, ``connect``, ``network``, ``bad_response``, ``busy``); ``lipsync_tools/remote/pull.py`` says
    what each leaves behind.
    """

    exit_code = 19

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class CatalogError(LipsyncError, ValueError):
    """A catalog file (``lipsync serve --catalog``) is malformed: bad JSON/TOML, unknown key, bad id, URL or
    SHA-256, a missing local file, or over its limits."""

    exit_code = 20


class SegmentError(NoFaceDetectedError):
    """The video has no stretch in which one face is continuously present for long enough (``--min-segment``),
    or ``--segment fail`` was given and the video is not one such stretch. The message lists the segments."""

    exit_code = 21
