"""Download one file over HTTP(S): size-capped, SHA-256 verified, resumable, and atomic.

What a caller can rely on:

* Only ``http://`` and ``https://`` URLs are fetched; any other scheme, given or reached through a redirect,
  is refused. Redirects are followed up to ``max_redirects``; a loop is recognised as one.
* The file appears at its destination only complete and verified: bytes go to ``DEST.part`` in the same
  folder, are fsync-ed, checked against the size cap, the length the server announced and the SHA-256, and
  only then renamed over ``DEST`` (atomic on one file system). Nothing is written outside DEST's folder.
* Size: a ``Content-Length`` (or ``Content-Range`` total) above ``max_bytes`` is refused before any byte is
  read, and the count is checked again while streaming, for servers that send no length. A length the server
  announced is enforced: a shorter body is a truncated transfer.
* Resume: beside ``DEST.part`` sits ``DEST.part.json``, recording the URL, the expected SHA-256 and the
  server's validator (a strong ``ETag``, else ``Last-Modified``). A rerun with the same URL and SHA-256 asks
  for the rest with ``Range`` (plus ``If-Range``, so a file that changed on the server is sent whole). A 206
  answer appends; a 200 (the server ignores ranges, or the file changed) restarts from byte 0 on the same
  answer; a 416 or a ``Content-Range`` that does not start where the part ends restarts once from byte 0.
  Without a SHA-256 a part is resumed only when the server gave a validator; with one, the whole file's
  hash is checked after resuming, and a mismatch discards the part and downloads once more from byte 0.
* Slow servers: ``timeout_s`` bounds connecting and every wait for data (a stall); a server that keeps
  sending but averages under ``min_speed_bytes_s`` over ``speed_window_s`` is given up on too (the trickle
  that a per-read timeout never catches; curl's ``--speed-limit``/``--speed-time``).

What stays behind after a failure (every failure is one :class:`DownloadError` line, or
:class:`OutputExistsError`/:class:`OutputNotWritableError`/:class:`UsageError` for the destination and the
arguments; DEST itself is only ever replaced by a complete, verified file):

* transient (``truncated``, ``stalled``, ``too_slow``, ``connect``, ``network``, ``server_error`` for HTTP
  5xx, or Ctrl-C): ``DEST.part`` and ``DEST.part.json`` stay when ``resume`` is on and bytes had arrived, so
  a rerun resumes; otherwise nothing stays.
* permanent (``checksum``, ``too_large``, ``http_status`` for 4xx and other statuses, ``bad_redirect``,
  ``redirect_loop``, ``too_many_redirects``, ``bad_response``, a local write error, a bad argument):
  nothing stays. A wrong SHA-256 in particular never leaves a byte behind.
* ``busy`` (another process is downloading into the same ``DEST.part``): that process's files, untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any, Final
from urllib.parse import unquote, urlsplit

from .._atomic import fsync_folder
from ..errors import DownloadError, OutputExistsError, OutputNotWritableError, UsageError
from .sizes import format_size

if sys.platform != "win32":
    import fcntl

if TYPE_CHECKING:
    import httpx

DEFAULT_MAX_BYTES: Final = 8 << 30
"""Largest file :func:`pull` accepts unless told otherwise (8 GiB: a long 1080p package with a checkpoint)."""
DEFAULT_TIMEOUT_S: Final = 30.0
DEFAULT_MIN_SPEED_BYTES_S: Final = 1024.0
DEFAULT_SPEED_WINDOW_S: Final = 30.0
DEFAULT_MAX_REDIRECTS: Final = 5

PART_SUFFIX: Final = ".part"
"""The download in progress: ``DEST.part``."""
META_SUFFIX: Final = ".part.json"
"""What a rerun needs to resume ``DEST.part`` safely: ``DEST.part.json``."""

MAX_URL_LEN: Final = 8192
MAX_FILE_NAME_LEN: Final = 200
"""Longest file name taken from a URL (file systems allow 255 bytes; room is left for ``.part.json``)."""

RESUMABLE_REASONS: Final = frozenset(
    {"truncated", "stalled", "too_slow", "connect", "network", "server_error"}
)
"""Failures after which ``DEST.part`` is kept for a rerun to resume (when ``resume`` is on)."""

SHA256_PATTERN: Final = re.compile(r"[0-9a-fA-F]{64}")

ProgressCallback = Callable[[int, int | None], None]
"""``progress(bytes_so_far, total_or_None)``: called once before the body (with the resumed offset, or 0)
and after every chunk; ``bytes_so_far`` drops back to 0 when a download restarts."""

_MAX_META_BYTES = 64 << 10
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_SAFE_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,16}")


@dataclass(frozen=True, kw_only=True)
class PullResult:
    """What :func:`pull` did.

    ``bytes`` is the file's size; ``resumed_from`` how many of them came from an earlier ``.part`` (0 for a
    fresh download); ``skipped`` is true when DEST already held the expected SHA-256 and nothing was
    fetched; ``url`` is where the bytes came from after redirects; ``seconds`` the wall time of the call.
    """

    path: Path
    bytes: int
    sha256: str
    resumed_from: int
    seconds: float
    url: str
    skipped: bool = False

    def summary(self) -> dict[str, Any]:
        """A JSON-ready dict (``lipsync pull --json``)."""
        return {
            "ok": True,
            "path": str(self.path),
            "bytes": self.bytes,
            "sha256": self.sha256,
            "skipped": self.skipped,
            "resumed_from": self.resumed_from,
            "url": display_url(self.url),
            "seconds": round(self.seconds, 3),
            "bytes_per_second": round((self.bytes - self.resumed_from) / self.seconds)
            if self.seconds > 0 and not self.skipped
            else None,
        }


# --- URLs, names, cache -------------------------------------------------------------------------------------
def url_problem(url: object) -> str | None:
    """Why ``url`` cannot be downloaded (a phrase to follow "URL ..."), or ``None`` when it is a usable
    http(s) URL."""
    if not isinstance(url, str) or not url:
        return "is empty" if url == "" else f"must be a string, not {type(url).__name__}"
    if len(url) > MAX_URL_LEN:
        return f"is {len(url)} characters long; the limit is {MAX_URL_LEN}"
    if any(ch <= " " or ch == "\x7f" for ch in url):
        return "contains spaces or control characters; percent-encode them"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme.lower() not in ("http", "https"):
        scheme = parts.scheme or "none"
        return f"has scheme {scheme!r}; only http:// and https:// URLs are downloaded"
    if not parts.hostname:
        return "has no host name"
    return None


def display_url(url: str) -> str:
    """``url`` safe to print: without user:password@ and with the query (often a signed token) elided."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return url[:200]
    query = "?…" if parts.query else ""
    return f"{parts.scheme}://{host}{port}{parts.path}{query}"


def url_file_name(url: str) -> str | None:
    """A safe file name for what ``url`` points at, or ``None`` when its path names no usable file.

    The last path segment, percent-decoded; anything before a ``/`` or ``\\`` it decodes to is dropped (no
    traversal), characters outside ``A-Za-z0-9._-`` become ``_``, leading dots and dashes are removed (no
    hidden names, nothing that reads as an option), and it is cut to :data:`MAX_FILE_NAME_LEN` keeping its
    suffix. A result without a single letter or digit counts as no name.
    """
    try:
        path = urlsplit(url).path
    except ValueError:
        return None
    name = unquote(path.rsplit("/", 1)[-1]).replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE_NAME_CHARS.sub("_", name).lstrip(".-").rstrip(".")
    if not any(ch.isalnum() for ch in name):
        return None
    if len(name) > MAX_FILE_NAME_LEN:
        suffix = PurePosixPath(name).suffix
        suffix = suffix if _SAFE_SUFFIX.fullmatch(suffix) else ""
        name = name[: MAX_FILE_NAME_LEN - len(suffix)] + suffix
    return name


def check_sha256(sha256: str | None) -> str | None:
    """``sha256`` in lower case, or ``None``; raises :class:`UsageError` unless it is 64 hex digits."""
    if sha256 is None:
        return None
    if not isinstance(sha256, str) or SHA256_PATTERN.fullmatch(sha256) is None:
        raise UsageError(f"sha256 {sha256!r} is not 64 hexadecimal digits (as `sha256sum FILE` prints)")
    return sha256.lower()


def cache_path(url: str, sha256: str, cache_dir: Path) -> Path:
    """Where a catalog URL is cached: ``cache_dir/<sha256><suffix>``, named by content, so two catalog
    entries (or two servers sharing the folder) with the same file share one copy.

    The suffix (``.sanders``, ``.pth``) is the URL's file name's, when it has a short alphanumeric one. The
    folder is not created. As :func:`pull` renames a file into place only after checking its SHA-256, a file
    at this path is already verified; a server may trust it without hashing it again.
    """
    expected = check_sha256(sha256)
    if expected is None:
        raise UsageError("cache_path needs the file's sha256")
    name = url_file_name(url)
    suffix = PurePosixPath(name).suffix if name else ""
    return Path(cache_dir) / f"{expected}{suffix if _SAFE_SUFFIX.fullmatch(suffix) else ''}"


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The user's cache folder for downloads: ``$LIPSYNC_CACHE_DIR`` when set, else
    ``$XDG_CACHE_HOME/lipsync-tools`` (when absolute, as the XDG spec requires), else
    ``~/.cache/lipsync-tools``. ``environ`` defaults to :data:`os.environ`. Not created here."""
    env = os.environ if environ is None else environ
    explicit = env.get("LIPSYNC_CACHE_DIR", "").strip()
    if explicit:
        return Path(explicit).expanduser()
    xdg = env.get("XDG_CACHE_HOME", "").strip()
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "lipsync-tools"
    home = env.get("HOME", "").strip()
    return (Path(home) if home else Path.home()) / ".cache" / "lipsync-tools"


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of the file at ``path``, read in blocks."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


# --- pull ---------------------------------------------------------------------------------------------------
def pull(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    min_speed_bytes_s: float = DEFAULT_MIN_SPEED_BYTES_S,
    speed_window_s: float = DEFAULT_SPEED_WINDOW_S,
    max_redirects: int = DEFAULT_MAX_REDIRECTS,
    progress: ProgressCallback | None = None,
    resume: bool = True,
    force: bool = False,
) -> PullResult:
    """Download ``url`` to ``dest`` (a file path, or an existing folder: then the URL's file name, or the
    SHA-256 when the URL names no file) and return what was done. See the module docstring for the rules.

    ``sha256``: the expected hex digest; when given, a DEST already holding it is kept and reported as
    ``skipped``, and a download that does not match it is deleted. ``max_bytes``: the size cap.
    ``timeout_s``: the longest wait to connect or for any data. ``min_speed_bytes_s`` over
    ``speed_window_s``: the slowest average speed accepted (0 turns it off). ``resume``: continue a
    ``.part`` left by an earlier run, and keep one after a transient failure. ``force``: replace a DEST
    that exists (without a ``sha256``, or with another content); otherwise that is an error.

    Raises :class:`DownloadError` (``.reason`` says which failure), :class:`UsageError` for a bad argument
    (a non-http(s) URL, a malformed ``sha256``), :class:`OutputExistsError` and
    :class:`OutputNotWritableError` for the destination.
    """
    started = time.monotonic()
    problem = url_problem(url)
    if problem is not None:
        raise UsageError(f"cannot download {display_url(str(url))}: URL {problem}")
    expected = check_sha256(sha256)
    _check_limits(max_bytes, timeout_s, min_speed_bytes_s, speed_window_s, max_redirects)
    target = _target_path(url, Path(dest), expected)

    if target.exists():
        if target.is_dir():
            raise OutputExistsError(f"{target} is a folder; pass a file path or a folder to download into")
        if expected is not None:
            actual = file_sha256(target)
            if actual == expected:
                return PullResult(
                    path=target,
                    bytes=target.stat().st_size,
                    sha256=actual,
                    resumed_from=0,
                    seconds=time.monotonic() - started,
                    url=url,
                    skipped=True,
                )
            if not force:
                raise OutputExistsError(
                    f"{target} exists with sha256 {actual}, not the expected {expected}; pass --force to "
                    "replace it"
                )
        elif not force:
            raise OutputExistsError(f"{target} already exists; pass --force to download it again")

    part = target.with_name(target.name + PART_SUFFIX)
    transfer = _Transfer(
        url=url,
        part=part,
        meta=target.with_name(target.name + META_SUFFIX),
        expected=expected,
        max_bytes=max_bytes,
        timeout_s=timeout_s,
        min_speed=min_speed_bytes_s,
        speed_window_s=speed_window_s,
        max_redirects=max_redirects,
        progress=progress,
        resume=resume,
    )
    with _locked_part(part) as fh:
        transfer.fh = fh
        try:
            transfer.run()
            transfer.write_local(lambda: os.replace(part, target), target)
        except BaseException as exc:
            transfer.clean_up(exc)
            raise
        transfer.meta.unlink(missing_ok=True)  # while still locked: a new download may write its own
    fsync_folder(target.parent)  # the part was fsync-ed before the rename (end of _Transfer._stream)
    return PullResult(
        path=target,
        bytes=transfer.size,
        sha256=transfer.digest,
        resumed_from=transfer.resumed_from,
        seconds=time.monotonic() - started,
        url=transfer.final_url,
    )


def _check_limits(
    max_bytes: int, timeout_s: float, min_speed: float, speed_window_s: float, max_redirects: int
) -> None:
    if max_bytes <= 0:
        raise UsageError(f"the size limit (max_bytes, --max-size) must be positive, got {max_bytes}")
    if not timeout_s > 0:
        raise UsageError(f"timeout must be a positive number of seconds, got {timeout_s}")
    if not (min_speed >= 0 and speed_window_s > 0):
        raise UsageError(
            f"min_speed_bytes_s must be >= 0 and speed_window_s > 0, got {min_speed} and {speed_window_s}"
        )
    if max_redirects < 0:
        raise UsageError(f"max_redirects must be >= 0, got {max_redirects}")


def _target_path(url: str, dest: Path, expected: str | None) -> Path:
    if dest.is_dir():
        name = url_file_name(url) or expected
        if name is None:
            raise UsageError(
                f"{display_url(url)} names no file to save as; pass a file path with -o, or the sha256 "
                "(the file is then named by it)"
            )
        target = dest / name
    else:
        target = dest
    folder = target.parent
    if not folder.is_dir():
        raise OutputNotWritableError(f"output folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputNotWritableError(f"output folder {folder} is not writable; choose another -o")
    return target


@contextmanager
def _locked_part(part: Path) -> Iterator[IO[bytes]]:
    """Open (creating) ``part`` for reading and writing, holding an exclusive lock on it (POSIX).

    The lock keeps two processes (two servers sharing a cache folder, or ``lipsync pull`` twice) from
    writing the same part; the second gets a ``busy`` error and touches nothing.
    """
    busy = DownloadError("busy", f"another download into {part} is in progress; wait for it to finish")
    for _ in range(3):
        try:
            fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputNotWritableError(f"cannot create {part}: {exc.strerror}") from exc
        with os.fdopen(fd, "r+b") as fh:
            if sys.platform != "win32":
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise busy from None
                # The holder may have renamed the part into place (or deleted it) between our open and our
                # lock: then this fd is the finished file, which must not be touched. Open the path again.
                try:
                    same = os.path.samestat(os.fstat(fd), os.stat(part))
                except FileNotFoundError:
                    same = False
                if not same:
                    continue
            yield fh
            return
    raise busy


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


class _Restart(Exception):
    """The resumed part cannot be continued (416, a mismatched Content-Range, a wrong hash): start over."""


class _Transfer:
    """The state of one download into an open, locked ``.part`` file."""

    def __init__(
        self,
        *,
        url: str,
        part: Path,
        meta: Path,
        expected: str | None,
        max_bytes: int,
        timeout_s: float,
        min_speed: float,
        speed_window_s: float,
        max_redirects: int,
        progress: ProgressCallback | None,
        resume: bool,
    ) -> None:
        self.url = url
        self.shown = display_url(url)
        self.part = part
        self.meta = meta
        self.expected = expected
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.min_speed = min_speed
        self.speed_window_s = speed_window_s
        self.max_redirects = max_redirects
        self.progress = progress
        self.resume = resume
        self.fh: IO[bytes]
        self.hash = hashlib.sha256()
        self.size = 0
        self.resumed_from = 0
        self.validator: str | None = None
        self.final_url = url

    @property
    def digest(self) -> str:
        return self.hash.hexdigest()

    # -- the whole download ------------------------------------------------------------------------------
    def run(self) -> None:
        import httpx

        offset = self._resume_offset()
        timeout = httpx.Timeout(self.timeout_s)
        # identity: the bytes on the wire are the file's bytes, so Range offsets, Content-Length and the
        # SHA-256 all describe the same thing
        headers = {"Accept-Encoding": "identity", "User-Agent": "lipsync-tools"}
        with httpx.Client(timeout=timeout, headers=headers, follow_redirects=False) as client:
            try:
                self._attempt(client, offset)
            except _Restart:
                # at most once: a fresh download never raises _Restart
                self._truncate()
                self._attempt(client, 0)

    def clean_up(self, exc: BaseException) -> None:
        """After a failure: keep the part for a rerun when that makes sense, else delete it and its record."""
        transient = isinstance(exc, KeyboardInterrupt) or (
            isinstance(exc, DownloadError) and exc.reason in RESUMABLE_REASONS
        )
        try:
            kept = self.resume and transient and self.fh.tell() > 0 and self.meta.exists()
        except (OSError, ValueError):
            kept = False
        if kept:
            self.fh.flush()
            return
        self.part.unlink(missing_ok=True)
        self.meta.unlink(missing_ok=True)

    def _resume_offset(self) -> int:
        """Bytes of an earlier part that can be continued (hashing them), or 0 after emptying the part."""
        size = self.fh.seek(0, os.SEEK_END)
        record = self._read_meta() if self.resume and size > 0 else None
        usable = (
            record is not None
            and record.get("url") == self.url
            and record.get("sha256") == self.expected
            and (self.expected is not None or bool(record.get("validator")))
            and (not isinstance(record.get("length"), int) or size < record["length"])
        )
        if not usable or record is None:
            self._truncate()
            return 0
        validator = record.get("validator")
        self.validator = validator if isinstance(validator, str) else None
        self.fh.seek(0)
        remaining = size
        while remaining:
            block = self.fh.read(min(remaining, 1 << 20))
            if not block:
                break
            self.hash.update(block)
            remaining -= len(block)
        self.fh.seek(size)
        self.resumed_from = self.size = size
        return size

    def _read_meta(self) -> dict[str, Any] | None:
        try:
            with open(self.meta, "rb") as fh:
                data = fh.read(_MAX_META_BYTES + 1)
            record = json.loads(data) if len(data) <= _MAX_META_BYTES else None
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def _write_meta(self, response: httpx.Response, total: int | None) -> None:
        etag = response.headers.get("ETag")
        validator = etag if etag and not etag.startswith("W/") else response.headers.get("Last-Modified")
        record = {"url": self.url, "sha256": self.expected, "validator": validator, "length": total}
        self.write_local(lambda: self.meta.write_text(json.dumps(record) + "\n"), self.meta)

    def _truncate(self) -> None:
        self.write_local(lambda: self.fh.truncate(0), self.part)
        self.fh.seek(0)
        self.hash = hashlib.sha256()
        self.size = self.resumed_from = 0
        self.validator = None

    def write_local(self, write: Callable[[], object], path: Path) -> None:
        try:
            write()
        except OSError as exc:
            raise OutputNotWritableError(f"cannot write {path}: {exc.strerror or exc}") from exc

    # -- one request and its body ------------------------------------------------------------------------
    def _attempt(self, client: httpx.Client, offset: int) -> None:
        headers = {}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if self.validator:
                headers["If-Range"] = self.validator
        response = self._open(client, headers)
        try:
            status = response.status_code
            if offset and status == 416:
                raise _Restart
            if status == 200:
                if offset:  # the server ignores Range, or the file changed (If-Range): start over
                    self._truncate()
                    offset = 0
                total = _content_length(response)
            elif status == 206 and offset:
                total = self._range_total(response, offset)
            else:
                raise self._status_error(response)
            encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise DownloadError(
                    "bad_response",
                    f"{self.shown} was sent {encoding}-encoded although identity was asked; its bytes would "
                    "not be the file's",
                )
            if total is not None and total > self.max_bytes:
                raise DownloadError(
                    "too_large",
                    f"{self.shown} is {format_size(total)} ({total} bytes), over the "
                    f"{format_size(self.max_bytes)} limit; raise it (--max-size) if the file is meant to be "
                    "this large",
                )
            if total is not None:
                self._check_space(total - offset)
            if offset == 0:
                self._write_meta(response, total)
            self._stream(response, offset, total)
        finally:
            response.close()
        if self.expected is not None and self.digest != self.expected:
            if self.resumed_from:
                raise _Restart  # the old part was from another file: its bytes are gone, fetch it whole
            raise DownloadError(
                "checksum",
                f"{self.shown} has sha256 {self.digest}, not the expected {self.expected}; the download was "
                "deleted (check the URL and the sha256)",
            )

    def _open(self, client: httpx.Client, headers: dict[str, str]) -> httpx.Response:
        """Send the GET, following up to ``max_redirects`` redirects to http(s) URLs, never in a loop."""
        request = client.build_request("GET", self.url, headers=headers)
        seen = {str(request.url)}
        for _ in range(self.max_redirects + 1):
            response = self._send(client, request)
            if not response.has_redirect_location:
                self.final_url = str(request.url)
                return response
            response.close()
            location = response.headers.get("Location", "")
            next_request = response.next_request
            problem = url_problem(str(next_request.url)) if next_request is not None else "is missing"
            if next_request is None or problem is not None:
                raise DownloadError(
                    "bad_redirect",
                    f"{display_url(str(request.url))} redirects to {location[:200]!r}, whose URL {problem}",
                )
            target = str(next_request.url)
            if target in seen:
                raise DownloadError(
                    "redirect_loop",
                    f"{self.shown} redirects in a loop ({display_url(str(request.url))} -> "
                    f"{display_url(target)} was seen before); the server is misconfigured",
                )
            seen.add(target)
            request = next_request
        raise DownloadError(
            "too_many_redirects",
            f"{self.shown} redirected more than {self.max_redirects} times "
            f"(last to {display_url(str(request.url))})",
        )

    def _send(self, client: httpx.Client, request: httpx.Request) -> httpx.Response:
        import httpx

        host = request.url.host
        try:
            return client.send(request, stream=True, follow_redirects=False)
        except httpx.ConnectTimeout:
            raise DownloadError(
                "connect",
                f"could not connect to {host} within {self.timeout_s:g} s; check the URL and network",
            ) from None
        except httpx.ConnectError as exc:
            raise DownloadError("connect", f"could not connect to {host}: {_one_line(exc)}") from None
        except httpx.TimeoutException:
            raise DownloadError(
                "stalled",
                f"{host} sent no answer within {self.timeout_s:g} s for {self.shown}; try again later",
            ) from None
        except httpx.HTTPError as exc:
            raise DownloadError("network", f"request for {self.shown} failed: {_one_line(exc)}") from None

    def _status_error(self, response: httpx.Response) -> DownloadError:
        code = response.status_code
        what = f"HTTP {code}{' ' + response.reason_phrase if response.reason_phrase else ''}"
        shown = display_url(str(response.request.url))
        if code in (404, 410):
            return DownloadError("http_status", f"{shown} was not found ({what}); check the URL")
        if code in (401, 403):
            return DownloadError(
                "http_status",
                f"{shown} refused access ({what}); the URL may need a token or may have expired",
            )
        if code >= 500:
            return DownloadError(
                "server_error", f"{shown} answered with a server error ({what}); try again later"
            )
        if code == 206:
            return DownloadError(
                "bad_response", f"{shown} sent part of the file ({what}) though all was asked"
            )
        return DownloadError("http_status", f"{shown} answered {what} instead of the file")

    def _range_total(self, response: httpx.Response, offset: int) -> int | None:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        if match is None or int(match.group(1)) != offset:
            raise _Restart  # not the rest of our part: fetch the whole file instead
        total = None if match.group(3) == "*" else int(match.group(3))
        if total is not None and int(match.group(2)) + 1 != total:
            raise _Restart  # a range that stops short of the end: unusual enough not to piece together
        return total

    def _check_space(self, needed: int) -> None:
        try:
            free = shutil.disk_usage(self.part.parent).free
        except OSError:
            return
        if needed > free:
            raise OutputNotWritableError(
                f"not enough free space in {self.part.parent}: {self.shown} needs {format_size(needed)} "
                f"more, {format_size(free)} is free"
            )

    def _stream(self, response: httpx.Response, offset: int, total: int | None) -> None:
        import httpx

        received = offset
        of_total = f" of {total}" if total is not None else ""
        if self.progress is not None:
            self.progress(received, total)
        window_start, window_bytes = time.monotonic(), 0
        try:
            # no chunk_size: every network read is handed over as it comes, so the speed rule sees a trickle
            for chunk in response.iter_raw():
                received += len(chunk)
                if received > self.max_bytes:
                    raise DownloadError(
                        "too_large",
                        f"{self.shown} sent more than the {format_size(self.max_bytes)} limit (no length was "
                        "announced); the download was deleted; raise --max-size if this is expected",
                    )
                if total is not None and received > total:
                    raise DownloadError(
                        "bad_response", f"{self.shown} sent more than the {total} bytes it announced"
                    )
                try:
                    self.fh.write(chunk)
                except OSError as exc:
                    raise OutputNotWritableError(f"cannot write {self.part}: {exc.strerror or exc}") from exc
                self.hash.update(chunk)
                self.size = received
                if self.progress is not None:
                    self.progress(received, total)
                window_bytes += len(chunk)
                elapsed = time.monotonic() - window_start
                if elapsed >= self.speed_window_s:
                    if window_bytes / elapsed < self.min_speed:
                        raise DownloadError(
                            "too_slow",
                            f"{self.shown} is too slow: {format_size(window_bytes / elapsed)}/s over the "
                            f"last {elapsed:.3g} s, under the {format_size(self.min_speed)}/s minimum; "
                            f"{received}{of_total} bytes are kept, run again to resume",
                        )
                    window_start, window_bytes = time.monotonic(), 0
        except httpx.TimeoutException:
            raise DownloadError(
                "stalled",
                f"{self.shown} stalled: no data for {self.timeout_s:g} s after {received}{of_total} bytes; "
                "run again to resume",
            ) from None
        except (httpx.RemoteProtocolError, httpx.ReadError):
            raise DownloadError(
                "truncated",
                f"the connection for {self.shown} closed after {received}{of_total} bytes; run again to "
                "resume",
            ) from None
        except httpx.HTTPError as exc:
            raise DownloadError(
                "network", f"download of {self.shown} failed after {received} bytes: {_one_line(exc)}"
            ) from None
        if total is not None and received < total:
            raise DownloadError(
                "truncated",
                f"the connection for {self.shown} closed after {received} of {total} bytes; run again to "
                "resume",
            )
        self.write_local(self.fh.flush, self.part)
        self.write_local(lambda: os.fsync(self.fh.fileno()), self.part)


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("Content-Length")
    if value is None or "chunked" in response.headers.get("Transfer-Encoding", "").lower():
        return None
    if not value.strip().isdigit():
        raise DownloadError(
            "bad_response", f"{display_url(str(response.request.url))} sent Content-Length {value[:40]!r}"
        )
    return int(value)
