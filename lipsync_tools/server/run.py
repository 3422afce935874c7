"""Run the server: ``run(config)`` → :class:`LipsyncServer` → uvicorn (the shape of uvicorn's own ``run``).

``lipsync serve`` is a thin shell over :func:`run`. Tests and the benchmark use :class:`LipsyncServer`
directly: :meth:`LipsyncServer.bind` binds first (port 0 gives a free port whose URL is known before
serving), :meth:`LipsyncServer.start_in_thread` serves from a background thread.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import uvicorn

from lipsync_tools.errors import LipsyncError
from lipsync_tools.server.app import ServerState, StartupReport, create_app
from lipsync_tools.server.components import Components
from lipsync_tools.server.config import WS_MAX_MESSAGE_BYTES, ServerConfig

if TYPE_CHECKING:
    pass


class LipsyncServer:
    """One server: its state, its ASGI app and the uvicorn server running it.

    Raises :class:`~lipsync_tools.errors.UsageError` / ``InputNotFoundError`` from ``config.check()`` at
    construction, before anything is loaded.
    """

    def __init__(
        self,
        config: ServerConfig,
        *,
        components: Components | None = None,
        on_ready: Callable[[StartupReport], None] | None = None,
    ) -> None:
        config.check()
        self.config = config
        self.state = ServerState(config, components)
        self.state.on_ready = on_ready
        self.state.request_shutdown = self.stop
        self.app = create_app(self.state)
        self.uvicorn = uvicorn.Server(uvicorn.Config(
            self.app,
            host=config.host,
            port=config.port,
            lifespan="on",
            log_config=None,  # leave the process's logging alone; the CLI sets levels
            log_level=config.log_level,
            access_log=config.access_log,
            # the transport cap of docs/protocol.md: nothing bigger than a valid client message is buffered
            ws_max_size=WS_MAX_MESSAGE_BYTES,
            # frames are JPEG/PNG or raw pixels: deflate costs CPU per frame and gains little
            ws_per_message_deflate=False,
            timeout_graceful_shutdown=5,
        ))
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` (the bound port once :meth:`bind` ran)."""
        return self.state.url

    def bind(self) -> socket.socket:
        """Bind and listen now (port 0: a free port), so :attr:`url` is final before serving starts."""
        if self._socket is None:
            family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
            # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
            # without it a response written as headers + body waits 40 ms for the client's delayed ACK.
            sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux; accepted connections inherit it
                # A peer that takes no data for this long is reset by the kernel: after the server's own
                # too_slow close, asyncio would otherwise keep flushing the closed transport's buffer (and
                # the kernel probe the zero window) for as long as the client stays connected.
                stalled_ms = int(self.config.sessions.stalled_connection_seconds * 1000)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, stalled_ms)
            try:
                sock.bind((self.config.host, self.config.port))
            except OSError as exc:
                sock.close()
                raise LipsyncError(f"cannot listen on {self.config.host}:{self.config.port}: {exc}; choose "
                                   "another --port or --host") from None
            sock.listen(2048)
            sock.set_inheritable(True)
            port = sock.getsockname()[1]
            host = f"[{self.config.host}]" if family == socket.AF_INET6 else self.config.host
            self.state.url = f"http://{host}:{port}"
            self._socket = sock
        return self._socket

    def run(self) -> None:
        """Serve until stopped (Ctrl-C, :meth:`stop`, or a failed startup, which is then raised)."""
        sock = self.bind()
        try:
            self.uvicorn.run(sockets=[sock])
        finally:
            sock.close()
        if self.state.startup_error is not None:
            raise self.state.startup_error

    def start_in_thread(self, ready_timeout: float | None = None) -> threading.Thread:
        """Serve from a daemon thread; with ``ready_timeout`` (seconds) wait until ready (or raise).

        Raises ``TimeoutError`` when not ready in time, or the startup error if startup failed.
        """
        self.bind()
        self._thread = threading.Thread(target=self._run_quietly, name="lipsync-server", daemon=True)
        self._thread.start()
        if ready_timeout is not None:
            deadline = time.monotonic() + ready_timeout
            while not self.state.ready:
                if self.state.startup_error is not None:
                    raise self.state.startup_error
                if time.monotonic() > deadline or not self._thread.is_alive():
                    raise TimeoutError(f"server not ready after {ready_timeout:g} s")
                time.sleep(0.01)
        return self._thread

    def _run_quietly(self) -> None:
        with contextlib.suppress(BaseException):  # kept in state.startup_error for the caller
            self.run()

    def stop(self, join_timeout: float | None = None) -> None:
        """Ask the server to stop; with ``join_timeout``, wait that long for the serving thread."""
        self.uvicorn.should_exit = True
        thread = self._thread
        if join_timeout is not None and thread is not None and thread is not threading.current_thread():
            thread.join(join_timeout)


def run(
    config: ServerConfig,
    *,
    components: Components | None = None,
    on_ready: Callable[[StartupReport], None] | None = None,
) -> None:
    """Serve ``config`` until interrupted. ``on_ready`` gets the :class:`StartupReport` once ready.

    Raises ``UsageError``/``InputNotFoundError`` for a bad config and the startup error (e.g.
    ``PackageFormatError``, ``CheckpointError``) if loading failed.
    """
    LipsyncServer(config, components=components, on_ready=on_ready).run()


def format_startup(report: StartupReport) -> str:
    """The startup report as the lines ``lipsync serve`` prints (a banner first when the model is random)."""
    s = report.seconds
    model = report.model.to_dict()
    lines = []
    for warning in report.warnings:
        bar = "!" * 100
        lines += [bar, f"!!! {warning}", bar]
    lines.append(f"lipsync server ready on {report.url}")
    if "source" in model:
        lines.append(f"  model     {model['name']} ({model['source']}) on {model['backend']}")
    else:  # a catalog server with no startup package: each package's model loads when it is first asked for
        lines.append(f"  model     {model['name']}: each package's model loads with it, on first use")
    precision = model.get("precision", "fp32")
    asked = model.get("precision_requested", precision)
    if (precision, asked, model.get("device", "cpu")) != ("fp32", "fp32", "cpu"):
        quality: dict[str, Any] = model.get("quality") or {}  # type: ignore[assignment]
        gate = ""
        if quality:
            shown = "identical" if quality.get("identical") else f"PSNR {quality['psnr_db']} dB"
            gate = (f"; int8 against fp32 on {quality['frames']} held-out frames: {shown} "
                    f"({'passed' if quality['passed'] else 'below'} the {quality['threshold_db']:g} dB gate)")
        ran = precision if asked == precision else f"{precision} (asked {asked})"
        lines.append(f"  precision {ran} on {model.get('device', 'cpu')}{gate}")
    family = model.get("family", "wav2lip")
    if family != "wav2lip":
        lines.append(f"  family    {family}, {model.get('audio_mode')} audio, audio encoder "
                     f"{model.get('audio_encoder', 'none')}")
    for p in report.packages:
        lines.append(f"  package   {p['id']}: {p['n_frames']} frames {p['width']}x{p['height']} @ "
                     f"{p['fps']:.3g} fps, {p['ram_bytes'] / 1e6:.1f} MB in RAM ({p['path']})")
        lines.extend(f"  warning   {p['id']}: {warning}" for warning in p.get("warnings", ()))
    lines.append(
        f"  startup   model load {s.get('model_load', 0):.2f} s, frame preload {s['frame_preload']:.2f} s, "
        f"feature mapping {s['feature_mapping']:.2f} s, package open {s['package_open']:.2f} s, warm-up "
        f"{s.get('warmup', 0):.2f} s; total {s['total']:.2f} s"
    )
    batching = report.batching
    if batching is not None:
        lines.append(f"  batching  max batch {batching.max_batch} ({batching.max_batch_source}), max wait "
                     f"{batching.max_wait_ms:g} ms ({batching.max_wait_source}), for every model")
        if batching.batch_ms:
            curve = ", ".join(f"{b}: {ms / b:.3g}" for b, ms in batching.batch_ms.items())
            rounds = batching.measure_rounds
            calls = f"median of {rounds} calls" if rounds > 1 else "one call"
            lines.append(f"  measured  ms per frame by batch size {curve} ({calls} each, "
                         f"{batching.measure_seconds:.2f} s)")
        lines.append(f"            {batching.reason}")
    lines.append(f"  memory    {report.rss_bytes / 1e6:.0f} MB resident")
    lines.append(f"  demo      {report.url}/demo (live sessions in the browser; GET /v1/models: model speed)")
    return "\n".join(lines)
