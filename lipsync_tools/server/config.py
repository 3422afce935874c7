"""Everything ``lipsync serve`` can be told, as one frozen dataclass (uvicorn's ``Config``, minus the magic).

The CLI builds a :class:`ServerConfig` from its options and calls :func:`lipsync_tools.server.run`; tests and
the benchmark build one directly. Validation happens in :meth:`ServerConfig.check`, before anything is
loaded or bound, so a typo costs milliseconds, not a model load.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, get_args

from lipsync_tools.errors import InputNotFoundError, ProtocolError, UsageError
from lipsync_tools.protocol import MAX_AUDIO_CHUNK_BYTES, check_package_id
from lipsync_tools.protocol.limits import MAX_CLIENT_BINARY_MESSAGE_BYTES, MAX_CLIENT_JSON_MESSAGE_BYTES

if TYPE_CHECKING:
    from lipsync_tools.engine import EngineOptions
    from lipsync_tools.engine.capacity import Batching, Capacity
    from lipsync_tools.engine.model_loader import RuntimeChoice
    from lipsync_tools.engine.model_store import ModelDefaults

MAX_BINARY_REQUEST_BYTES: Final = MAX_CLIENT_BINARY_MESSAGE_BYTES
"""Largest binary message the server reads from a client (1 MiB + 32 B): the largest *valid* one, a full
audio_chunk. A longer WebSocket message is answered ``oversize``, a longer ``POST /v1/frame`` body 413."""

MAX_JSON_REQUEST_BYTES: Final = MAX_CLIENT_JSON_MESSAGE_BYTES
"""Largest JSON message the server reads from a client (1,463,640 B): base64 of a full audio_chunk plus 64 KiB
of keys and whitespace. It is also the WebSocket ``max_size`` (the transport cannot tell text from binary
before the frame arrives), so nothing larger is ever buffered or decoded. (Until issue 11 both caps came from
the protocol's 16 MiB request payload limit: 16 MiB binary, 21.4 MiB JSON, which no valid message needs.)
"""

WS_MAX_MESSAGE_BYTES: Final = max(MAX_BINARY_REQUEST_BYTES, MAX_JSON_REQUEST_BYTES)
"""uvicorn's ``ws_max_size``: a WebSocket message over it is refused by the transport (close 1009) from its
frame header, before its payload is read."""

OFFLOAD_CODEC_BYTES: Final = 64 << 10
"""JSON messages with a payload (encoding) or a text (decoding) larger than this are encoded or decoded in
the server's codec threads, not on the event loop: base64 + JSON of a raw 720p frame (2.7 MB) takes 3.5-7 ms,
which every other connection would wait; below 64 KiB the thread hop costs more than it saves."""

MAX_PACKAGE_API_BODY: Final = 64 << 10
"""Largest body of ``POST /v1/packages`` (a small JSON object)."""

ModelName = Literal["random", "wav2lip", "identity"]
BackendName = Literal["torch", "onnx"]
MODEL_NAMES: Final = get_args(ModelName)
BACKEND_NAMES: Final = get_args(BackendName)
LOG_LEVELS: Final = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's


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
    closed with ``too_slow``; also the longest any other message (a ``frame_request``'s reply, an error,
    ``session_started``) may take to be written once it is its turn on the socket: a client that pipelines
    requests and does not read its replies is closed with ``too_slow`` after it.
    ``idle_timeout_seconds``: a session that receives no audio for this long without ending is closed with
    ``idle_timeout`` (a live avatar's client sends silence between utterances).
    ``max_inflight_requests``: ``frame_request`` messages on one socket being processed at once, counted
    until their reply is written to the socket; beyond it the server stops reading that socket until one
    finishes, so a client that does not read its replies makes the server hold at most this many.
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

    @property
    def stalled_connection_seconds(self) -> float:
        """How long the kernel lets a connection's unsent data wait for a peer that takes none before it
        resets the connection (``TCP_USER_TIMEOUT`` on the listening socket, inherited by every connection).

        The server's own ``too_slow`` close comes first (``slow_client_seconds``, then up to two
        ``close_timeout_seconds`` for the error and the close); this backstop frees what a client that never
        reads again would otherwise hold for ever after that close: asyncio flushes a closed transport's
        buffer before it lets go of it, and a zero TCP window is probed indefinitely. It covers HTTP too.
        """
        return self.slow_client_seconds + 2 * self.close_timeout_seconds + 5.0


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
    Engine: ``max_batch`` (frames per model call) and ``max_wait_ms`` (how long a batch waits to fill), each
    ``None`` by default: chosen at startup from the startup model's measured speed (:meth:`batching`;
    docs/engine.md, *Batch size by measurement*); ``queue_limit`` (pending frames before ``overloaded``),
    ``jpeg_quality`` (default for sessions), ``silence_dbfs`` (RMS level below which a window is silence).
    Live sessions: ``min_session_fps`` (a session is refused when the admitted ones could no longer each get
    this many frames per second, or their package's fps if lower; docs/engine.md, *Live sessions*),
    ``max_sessions`` (most sessions at once), ``max_sessions_per_ip`` (most live sessions of one client
    address, so one client cannot take every session; behind a reverse proxy every client has the proxy's
    address: raise it to ``max_sessions`` there), ``sessions`` (per-session limits, incl. the idle timeout).
    Connections: ``max_connections`` (open WebSockets plus HTTP requests being answered, ``/healthz``,
    ``/readyz`` and ``/metrics`` aside; one more is refused with ``overloaded``: HTTP 503, WebSocket close
    1013).
    Safety: ``token`` (bearer token, ``None`` = open; required when ``host`` is not a loopback address unless
    ``insecure``), ``package_dir`` (run-time loads by path only inside it; ``None``: none by path),
    ``allow_urls`` (run-time loads of ``{"id", "url", "sha256"}``), ``allow_runtime_loading`` (off: no
    run-time load or unload at all; catalog ids still load on demand).
    Precision: ``precision`` (``fp32``; ``int8``: ONNX Runtime static quantization calibrated on each
    package's own frames, served only above the quality gate unless ``force_precision``; ``fp16``: GPU),
    ``device`` (``cpu``, ``cuda``, ``cuda:N``).
    Memory: ``heap_trim_seconds`` (how often free C heap memory is handed back to the OS, and after every
    unload; 0 = never; :mod:`lipsync_tools.server.memory`), ``freeze_startup_objects`` (``gc.freeze()`` what
    startup made, so the garbage collector collects sessions' reference cycles promptly: for a server that
    owns its process, ``lipsync serve``; off by default, as it would freeze an embedding program's objects).
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
    max_batch: int | None = None
    max_wait_ms: float | None = None
    queue_limit: int = 64
    jpeg_quality: int = 90
    silence_dbfs: float = -50.0
    min_session_fps: float = 20.0
    max_sessions: int = 32
    max_sessions_per_ip: int = 8
    max_connections: int = 256
    token: str | None = None
    package_dir: Path | None = None
    allow_runtime_loading: bool = True
    sessions: SessionLimits = field(default_factory=SessionLimits)
    precision: str = "fp32"
    device: str = "cpu"
    force_precision: bool = False
    warmup_frames: int = 2
    heap_trim_seconds: float = 10.0
    freeze_startup_objects: bool = False
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
        if self.model not in (None, *MODEL_NAMES):
            raise UsageError(f"model is {self.model!r}; expected one of {', '.join(MODEL_NAMES)}")
        if self.backend not in (None, *BACKEND_NAMES):
            raise UsageError(f"backend is {self.backend!r}; expected one of {', '.join(BACKEND_NAMES)}")
        if not 0 <= self.seed < 2**32:
            raise UsageError(f"seed is {self.seed}; expected 0..{2**32 - 1}")
        if self.frames not in ("all", "none"):
            raise UsageError(f"frames must be all or none, got {self.frames!r}")
        if self.max_memory is not None and self.max_memory < 1:
            raise UsageError(f"max_memory must be a positive size, got {self.max_memory}")
        if self.max_packages is not None and self.max_packages < 1:
            raise UsageError(f"max_packages must be >= 1, got {self.max_packages}")
        if self.catalog is not None and not self.catalog.is_file():
            raise InputNotFoundError(f"catalog {self.catalog} does not exist; check --catalog")
        if self.package_dir is not None and not self.package_dir.is_dir():
            raise InputNotFoundError(f"package folder {self.package_dir} does not exist")
        if not 0 <= self.port <= 65535:
            raise UsageError(f"port must be in [0, 65535], got {self.port}")
        # The engine's and the model store's own rules, applied now rather than after a model has loaded:
        # one place checks each option (EngineOptions, ModelDefaults), whoever builds them.
        self.engine_options()
        self.model_defaults()  # also the runtime: precision and device
        if not 0 < self.min_session_fps <= 240:
            raise UsageError(f"min_session_fps must be in (0, 240] frames/s, got {self.min_session_fps}")
        if not 1 <= self.max_sessions <= 10_000:
            raise UsageError(f"max_sessions must be in [1, 10000], got {self.max_sessions}")
        if not 1 <= self.max_sessions_per_ip <= 10_000:
            raise UsageError(f"max_sessions_per_ip must be in [1, 10000], got {self.max_sessions_per_ip}")
        if not 1 <= self.max_connections <= 100_000:
            raise UsageError(f"max_connections must be in [1, 100000], got {self.max_connections}")
        if not 0 <= self.warmup_frames <= 1000:
            raise UsageError(f"warmup_frames must be in [0, 1000], got {self.warmup_frames}")
        if not (self.heap_trim_seconds == 0 or 1 <= self.heap_trim_seconds <= 86_400):
            raise UsageError(
                f"heap_trim_seconds must be 0 (off) or in [1, 86400] seconds, got {self.heap_trim_seconds}"
            )
        if self.log_level not in LOG_LEVELS:
            raise UsageError(f"log_level is {self.log_level!r}; expected one of {', '.join(LOG_LEVELS)}")
        if self.token is not None and not self.token.strip():
            raise UsageError("the bearer token is empty; give a real token or none")
        if self.token is None and not self.insecure and not is_loopback(self.host):
            raise UsageError(
                f"--host {self.host} exposes the server beyond this machine without a token: pass --token "
                "(or set LIPSYNC_TOKEN), or --insecure if the network is trusted"
            )
        self.sessions.check()

    @property
    def on_gpu(self) -> bool:
        """Whether the model runs on a GPU (``device`` cuda): there the batch sizes measured go up to 16."""
        return self.device != "cpu"

    def runtime(self) -> RuntimeChoice:
        """The models' device and precision (raises :class:`UsageError` for a bad value)."""
        from lipsync_tools.engine.model_loader import RuntimeChoice

        return RuntimeChoice(precision=self.precision, device=self.device,
                             force_precision=self.force_precision)

    def batching(self, capacity: Capacity | None, measured_on: str | None = None) -> Batching:
        """The batch size and wait the engine runs with: ``max_batch`` / ``max_wait_ms`` when given, else
        chosen from ``capacity`` (the startup model's, ``measured_on`` its key) by
        :func:`~lipsync_tools.engine.capacity.choose_batching`; the defaults when nothing was measured."""
        from lipsync_tools.engine.capacity import Capacity, choose_batching

        chosen = choose_batching(capacity or Capacity(), gpu=self.on_gpu, max_batch=self.max_batch,
                                 max_wait_ms=self.max_wait_ms)
        return replace(chosen, measured_on=measured_on) if chosen.batch_ms else chosen

    def with_batching(self, batching: Batching) -> ServerConfig:
        """These options with the batch size and wait of ``batching`` (what the engine is made from)."""
        return replace(self, max_batch=batching.max_batch, max_wait_ms=batching.max_wait_ms)

    def engine_options(self) -> EngineOptions:
        """The engine's options from these (raises the engine's :class:`UsageError` for a bad value).

        ``max_batch`` / ``max_wait_ms`` left to measurement (``None``) take ``EngineOptions``' defaults here:
        the server makes its engine from :meth:`with_batching`, after the startup model was measured.
        """
        from lipsync_tools.engine import EngineOptions

        batching: dict[str, Any] = {}
        if self.max_batch is not None:
            batching["max_batch"] = self.max_batch
        if self.max_wait_ms is not None:
            batching["max_wait_ms"] = self.max_wait_ms
        return EngineOptions(
            queue_limit=self.queue_limit,
            jpeg_quality=self.jpeg_quality,
            silence_dbfs=self.silence_dbfs,
            blend=self.blend,
            **batching,
        )

    def model_defaults(self) -> ModelDefaults:
        """The model store's defaults from these (``--model``, ``--checkpoint``, ``--max-models``, ...)."""
        from lipsync_tools.engine.capacity import capacity_batches, measured_max_batch
        from lipsync_tools.engine.model_store import ModelDefaults

        # Measured up to the largest size the batch may be chosen from (the measurement warms every size).
        largest = measured_max_batch(self.on_gpu) if self.max_batch is None else self.max_batch
        return ModelDefaults(
            model=self.model,
            checkpoint=self.checkpoint,
            family=self.family,
            seed=self.seed,
            backend=self.backend,
            cache_dir=self.onnx_cache_dir,
            audio_encoder=self.audio_encoder,
            use_package_checkpoint=self.use_package_checkpoint,
            max_models=self.max_models,
            warmup_batches=tuple(sorted({1, largest})),
            capacity_batches=capacity_batches(largest),
            runtime=self.runtime(),
        )


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine only: localhost, 127.0.0.0/8 or ::1."""
    import ipaddress

    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
