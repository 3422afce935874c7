"""Everything ``lipsync serve`` can be told, as one frozen dataclass (uvicorn's ``Config``, minus the magic).

The CLI builds a :class:`ServerConfig` from its options and calls :func:`lipsync_tools.server.run`; tests and
the benchmark build one directly. Validation happens in :meth:`ServerConfig.check`, before anything is
loaded or bound, so a typo costs milliseconds, not a model load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from lipsync_tools.errors import InputNotFoundError, ProtocolError, UsageError
from lipsync_tools.protocol import (
    BINARY_HEADER_SIZE,
    MAX_AUDIO_CHUNK_BYTES,
    MAX_PACKAGE_ID_LEN,
    MAX_REQUEST_PAYLOAD,
    check_package_id,
)
from lipsync_tools.protocol.limits import MAX_FIELDS_LEN

MAX_BINARY_REQUEST_BYTES: Final = (
    BINARY_HEADER_SIZE + MAX_PACKAGE_ID_LEN + MAX_FIELDS_LEN + MAX_REQUEST_PAYLOAD
)
"""Largest binary message a *client* may send (16 MiB payload + header): the server's receive cap."""

MAX_JSON_REQUEST_BYTES: Final = 4 * ((MAX_REQUEST_PAYLOAD + 2) // 3) + (64 << 10)
"""Largest JSON message a client may send (base64 of 16 MiB + 64 KiB of fields): the server's receive cap.

The protocol's ``MAX_*_MESSAGE_BYTES`` bound replies (64 MiB payloads); requests are four times smaller, so
the server refuses a 30 MiB upload instead of buffering it.
"""

MAX_PACKAGE_API_BODY: Final = 64 << 10
"""Largest body of ``POST /v1/packages`` (a small JSON object)."""

ModelName = Literal["random", "wav2lip", "identity"]
BackendName = Literal["torch", "onnx"]


@dataclass(frozen=True, kw_only=True, slots=True)
class PackageSpec:
    """A package to load at startup: ``id`` is the key clients use, ``path`` the ``.sanders`` file."""

    id: str
    path: Path

    @classmethod
    def parse(cls, text: str) -> PackageSpec:
        """``ID=PATH`` or ``PATH`` (id = the file stem, e.g. ``alice`` for ``avatars/alice.sanders``).

        Raises UsageError when the id (given or derived) is not a valid package id.
        """
        ident, sep, rest = text.partition("=")
        if sep and ident and "/" not in ident and "\\" not in ident:
            path = Path(rest)
        else:
            ident, path = Path(text).stem, Path(text)
        try:
            check_package_id(ident)
        except ProtocolError as exc:
            raise UsageError(f"{text}: {exc}; name it explicitly with ID=PATH") from None
        return cls(id=ident, path=path)


@dataclass(frozen=True, kw_only=True, slots=True)
class SessionLimits:
    """Per-session bounds (see the *Sessions* section of docs/protocol.md for the rules they drive).

    ``audio_buffer_bytes``: PCM a session holds before it stops reading the socket (backpressure; default
    2 MiB, about 65 s); it is at least one chunk plus one window so a full-size chunk always fits.
    ``inflight_frames``: frames of one session being rendered or waiting to be sent at once; several let
    concurrent sessions share batched model calls, and bound what a slow reader makes the server hold.
    ``max_skipped_frames``: a REALTIME session whose frames keep expiring because the socket had not taken
    the frames before them is closed with ``too_slow`` after this many in a row.
    ``slow_client_seconds``: longest one frame may wait for the socket (any pacing) before the session is
    closed with ``too_slow``.
    ``idle_timeout_seconds``: a session that receives no audio for this long without ending is closed with
    ``idle_timeout`` (a live avatar's client sends silence between utterances).
    ``max_inflight_requests``: ``frame_request`` messages on one socket being processed at once; beyond it
    the server stops reading that socket until one finishes.
    ``close_timeout_seconds``: how long the server tries to deliver a closing error to a client that does
    not read before it drops the connection.
    """

    audio_buffer_bytes: int = 2 * MAX_AUDIO_CHUNK_BYTES
    inflight_frames: int = 4
    max_skipped_frames: int = 50
    slow_client_seconds: float = 10.0
    idle_timeout_seconds: float = 30.0
    max_inflight_requests: int = 8
    close_timeout_seconds: float = 2.0

    def check(self) -> None:
        """Raise UsageError for a limit that cannot work."""
        if self.audio_buffer_bytes < MAX_AUDIO_CHUNK_BYTES + 6400:
            raise UsageError(
                f"audio_buffer_bytes must be at least {MAX_AUDIO_CHUNK_BYTES + 6400} (one chunk plus one "
                f"window), got {self.audio_buffer_bytes}"
            )
        for name in ("inflight_frames", "max_skipped_frames", "max_inflight_requests"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("slow_client_seconds", "close_timeout_seconds", "idle_timeout_seconds"):
            if not getattr(self, name) > 0:
                raise UsageError(f"{name} must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True, kw_only=True, slots=True)
class ServerConfig:
    """How to run the server.

    Network: ``host`` (default loopback only), ``port`` (0 = any free port; the bound URL is reported).
    Model: ``model`` (``random`` = deterministic random weights from ``seed``, NOT lip-sync; ``wav2lip`` or
    ``None`` = ``checkpoint``, else the checkpoint embedded in the first startup package that has one;
    ``identity`` = returns its input, for tests), ``backend`` (``None`` = the library default),
    ``use_package_checkpoint``, ``onnx_cache_dir``; ``family`` / ``audio_mode`` (``None``: detected from the
    checkpoint or the first package, else Wav2Lip), ``audio_encoder`` (AVE families: a checkpoint path or
    ``"random"``; ``None``: the package's), ``blend`` (``feather`` or ``hard``), ``max_models`` (most models
    loaded at once; each package is served by its own, shared by checkpoint).
    On demand: ``catalog`` (a JSON/TOML file of package ids: a request for a catalog id that is not loaded
    loads it, downloading a URL first into ``cache_dir``, default the user cache folder). Budget:
    ``max_memory`` (bytes of decoded frames plus model weights) and ``max_packages``: idle packages and models
    are unloaded, least recently used first, to make room; a load that cannot fit is refused. ``frames``:
    ``"none"`` loads packages for crop-only serving (full frames not decoded; a catalog entry may say so).
    Engine: ``max_batch`` (frames per model call), ``max_wait_ms`` (how long a batch waits to fill),
    ``queue_limit`` (pending frames before ``overloaded``), ``jpeg_quality`` (default for sessions),
    ``silence_dbfs`` (RMS level below which a window is silence).
    Live sessions: ``min_session_fps`` (a session is refused when the admitted ones could no longer each get
    this many frames per second, or their package's fps if lower; docs/engine.md, *Live sessions*),
    ``max_sessions`` (most sessions at once), ``sessions`` (per-session limits, incl. the idle timeout).
    Safety: ``token`` (bearer token, ``None`` = open; required when ``host`` is not a loopback address unless
    ``insecure``), ``package_dir`` (run-time loads by path only inside it; ``None``: none by path),
    ``allow_urls`` (run-time loads of ``{"id", "url", "sha256"}``), ``allow_runtime_loading`` (off: no
    run-time load or unload at all; catalog ids still load on demand).
    """

    packages: tuple[PackageSpec, ...] = ()
    host: str = "127.0.0.1"
    port: int = 8000
    model: ModelName | None = None
    checkpoint: Path | None = None
    seed: int = 0
    backend: BackendName | None = None
    family: str | None = None
    audio_mode: str | None = None
    audio_encoder: str | None = None
    blend: str = "feather"
    max_models: int = 8
    catalog: Path | None = None
    cache_dir: Path | None = None
    max_memory: int | None = None
    max_packages: int | None = None
    frames: str = "all"
    allow_urls: bool = False
    insecure: bool = False
    use_package_checkpoint: bool = True
    onnx_cache_dir: Path | None = None
    max_batch: int = 8
    max_wait_ms: float = 4.0
    queue_limit: int = 64
    jpeg_quality: int = 90
    silence_dbfs: float = -50.0
    min_session_fps: float = 20.0
    max_sessions: int = 32
    token: str | None = None
    package_dir: Path | None = None
    allow_runtime_loading: bool = True
    sessions: SessionLimits = field(default_factory=SessionLimits)
    warmup_frames: int = 2
    log_level: str = "warning"
    access_log: bool = False

    def check(self) -> None:
        """Validate everything that can be checked without loading: raises UsageError / InputNotFoundError."""
        ids = [spec.id for spec in self.packages]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise UsageError(
                f"package id(s) {', '.join(duplicates)} given twice; name them apart with ID=PATH"
            )
        for spec in self.packages:
            if not spec.path.is_file():
                raise InputNotFoundError(f"package {spec.path} does not exist; build it with build-package")
        if self.checkpoint is not None and not self.checkpoint.is_file():
            raise InputNotFoundError(f"checkpoint {self.checkpoint} does not exist; check --checkpoint")
        if self.audio_encoder not in (None, "random") and not Path(str(self.audio_encoder)).is_file():
            raise InputNotFoundError(
                f"audio encoder {self.audio_encoder} does not exist; check --audio-encoder (or pass random)"
            )
        if self.family is not None:
            from lipsync_tools.engine.model_loader import check_family_options

            check_family_options(self.family, self.audio_mode)
        if self.frames not in ("all", "none"):
            raise UsageError(f"frames must be all or none, got {self.frames!r}")
        if self.max_memory is not None and self.max_memory < 1:
            raise UsageError(f"max_memory must be a positive size, got {self.max_memory}")
        if self.max_packages is not None and self.max_packages < 1:
            raise UsageError(f"max_packages must be >= 1, got {self.max_packages}")
        if not 1 <= self.max_models <= 1024:
            raise UsageError(f"max_models must be in [1, 1024], got {self.max_models}")
        if self.blend not in ("feather", "hard"):
            raise UsageError(f"blend must be feather or hard, got {self.blend!r}")
        if self.catalog is not None and not self.catalog.is_file():
            raise InputNotFoundError(f"catalog {self.catalog} does not exist; check --catalog")
        if self.package_dir is not None and not self.package_dir.is_dir():
            raise InputNotFoundError(f"package folder {self.package_dir} does not exist")
        if not 0 <= self.port <= 65535:
            raise UsageError(f"port must be in [0, 65535], got {self.port}")
        if not 1 <= self.max_batch <= 256:
            raise UsageError(f"max_batch must be in [1, 256], got {self.max_batch}")
        if not 0 <= self.max_wait_ms <= 1000:
            raise UsageError(f"max_wait_ms must be in [0, 1000], got {self.max_wait_ms}")
        if self.queue_limit < 1:
            raise UsageError(f"queue_limit must be >= 1, got {self.queue_limit}")
        if not 1 <= self.jpeg_quality <= 100:
            raise UsageError(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        if not 0 < self.min_session_fps <= 240:
            raise UsageError(f"min_session_fps must be in (0, 240] frames/s, got {self.min_session_fps}")
        if not 1 <= self.max_sessions <= 10_000:
            raise UsageError(f"max_sessions must be in [1, 10000], got {self.max_sessions}")
        if self.token is not None and not self.token.strip():
            raise UsageError("the bearer token is empty; give a real token or none")
        if self.token is None and not self.insecure and not is_loopback(self.host):
            raise UsageError(
                f"--host {self.host} exposes the server beyond this machine without a token: pass --token "
                "(or set LIPSYNC_TOKEN), or --insecure if the network is trusted"
            )
        self.sessions.check()


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine only: localhost, 127.0.0.0/8 or ::1."""
    import ipaddress

    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
