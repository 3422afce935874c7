"""The compared server modes, and the server processes that run them on loopback.

Each mode is a real ``lipsync serve`` process started with the same model options; the benchmark talks to
it with the real client over a WebSocket (``FrameStream``), one request per frame:

* ``original``: ``lipsync serve --original VIDEO``: every stage per frame, JSON replies with base64 images;
* ``binary``: the same server, binary protocol;
* ``preloaded``: ``lipsync serve PKG`` on a package built from the same video, binary protocol;
* ``preloaded-crop`` (optional, not in the default set): the preloaded server answering ``crop_only``
  (the generated mouth crop and its rectangle; the client composites): what is left once the full-frame
  JPEG leaves the server's per-frame work;
* ``preloaded-lean`` (optional): ``crop_only`` and a mel window the client computed from the same PCM
  (outside the timing) instead of PCM: the server's floor, model plus transport.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from ..errors import LipsyncError, UsageError
from ..protocol.messages import ImageFormat

ServerKind = Literal["original", "package"]


@dataclass(frozen=True, kw_only=True)
class ModeSpec:
    """One compared mode: which server it talks to, in which encoding, asking for which image."""

    name: str
    server: ServerKind
    protocol: Literal["json", "binary"]
    image: ImageFormat = ImageFormat.JPEG
    audio: Literal["pcm16", "mel"] = "pcm16"  # mel: the client sends the mel of the same PCM window
    description: str = ""


MODES: dict[str, ModeSpec] = {
    "original": ModeSpec(
        name="original",
        server="original",
        protocol="json",
        description="raw video, every stage per frame, JSON + base64",
    ),
    "binary": ModeSpec(
        name="binary",
        server="original",
        protocol="binary",
        description="raw video, every stage per frame, binary protocol",
    ),
    "preloaded": ModeSpec(
        name="preloaded",
        server="package",
        protocol="binary",
        description="preloaded package (lipsync serve), binary protocol",
    ),
    "preloaded-crop": ModeSpec(
        name="preloaded-crop",
        server="package",
        protocol="binary",
        image=ImageFormat.CROP_ONLY,
        description="preloaded package, crop_only replies (client composites)",
    ),
    "preloaded-lean": ModeSpec(
        name="preloaded-lean",
        server="package",
        protocol="binary",
        image=ImageFormat.CROP_ONLY,
        audio="mel",
        description="preloaded package, crop_only replies, mel audio computed by the client (not timed)",
    ),
}
DEFAULT_MODES: tuple[str, ...] = ("original", "binary", "preloaded")


def parse_modes(text: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``"original,binary"`` -> ``("original", "binary")``; UsageError for an unknown or repeated name."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = [n for n in names if n not in MODES]
    if unknown or not names or len(set(names)) != len(names):
        raise UsageError(
            f"modes {','.join(names) or '(none)'}: expected distinct names from "
            f"{', '.join(MODES)} (e.g. --modes original,binary,preloaded)"
        )
    return tuple(names)


@dataclass(frozen=True, kw_only=True)
class ServerLaunch:
    """How to start one server process (``name``: the mode it serves, used for its log files): ``path`` is
    the raw video of an ``original`` server or the package of a ``package`` one."""

    name: str
    kind: ServerKind
    package_id: str
    path: Path
    seed: int = 0
    backend: str | None = None
    family: str | None = None  # original servers: the family to render (packages carry their own)
    audio_encoder: str | None = None  # original servers of AVE families: a path, or "random" (seed ``seed``)
    max_batch: int = 8
    catalog: Path | None = None  # a package server that loads ``package_id`` on demand from this catalog
    log_dir: Path
    onnx_cache: Path | None = None  # shared by the servers: one ONNX export per run, not one per server
    runtime_loading: bool = False  # POST/DELETE /v1/packages (bench --soak loads and unloads packages)
    precision: str = "fp32"  # fp32, int8 (calibrated on the package; the quality gate may refuse it), fp16
    device: str = "cpu"  # --device: cpu, cuda or cuda:N

    def command(self) -> list[str]:
        """The ``lipsync serve`` command line (run with this interpreter, so the same install).

        ``--precision`` and ``--device`` are passed only when they are not the defaults (fp32, cpu), so the
        command stays what it was for a default run.
        """
        cmd = [
            sys.executable,
            "-m",
            "lipsync_tools",
            "serve",
            "--port",
            "0",
            "--json",
            "--model",
            "random",
            "--seed",
            str(self.seed),
            "--max-batch",
            str(self.max_batch),
        ]
        if not self.runtime_loading:
            cmd.append("--no-runtime-loading")
        if self.backend is not None:
            cmd += ["--backend", self.backend]
        if self.onnx_cache is not None:
            cmd += ["--onnx-cache", str(self.onnx_cache)]
        if self.precision != "fp32":
            cmd += ["--precision", self.precision]
        if self.device != "cpu":
            cmd += ["--device", self.device]
        if self.kind == "original" and self.family is not None:
            cmd += ["--family", self.family]
        if self.kind == "original" and self.audio_encoder is not None:
            cmd += ["--audio-encoder", self.audio_encoder]
        if self.catalog is not None:
            return [*cmd, "--catalog", str(self.catalog)]
        spec = f"{self.package_id}={self.path}"
        return [*cmd, "--original", spec] if self.kind == "original" else [*cmd, spec]


@dataclass(eq=False)
class ServerProcess:
    """A running ``lipsync serve --json`` child: its URL, its startup report, and its process id.

    ``ready`` is the server's ``ready`` event (``seconds``, ``rss_bytes``, ``model``, ``packages``);
    ``process_seconds`` the wall time from spawning to that event (imports included).
    """

    launch: ServerLaunch
    process: subprocess.Popen[bytes]
    url: str
    ready: dict[str, Any]
    process_seconds: float
    _logs: list[IO[bytes]] = field(default_factory=list, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    def start(cls, launch: ServerLaunch, timeout: float = 180.0) -> ServerProcess:
        """Spawn the server and wait (at most ``timeout`` s) for its ready event.

        Raises :class:`LipsyncError` with the end of its stderr when it exits or is not ready in time.
        """
        launch.log_dir.mkdir(parents=True, exist_ok=True)
        name = f"{launch.name}-{launch.kind}"
        out_path, err_path = launch.log_dir / f"{name}.out", launch.log_dir / f"{name}.err"
        out, err = open(out_path, "wb"), open(err_path, "wb")  # noqa: SIM115  (closed in stop())
        # A file, not a pipe, takes the child's output: nothing can block on a full pipe.
        started = time.perf_counter()
        process = subprocess.Popen(
            launch.command(), stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=_same_code_env()
        )
        deadline = time.monotonic() + timeout
        while True:
            event = _ready_event(out_path)
            if event is not None:
                if event.get("event") == "ready":
                    return cls(
                        launch=launch,
                        process=process,
                        url=str(event["url"]),
                        ready=event,
                        process_seconds=time.perf_counter() - started,
                        _logs=[out, err],
                    )
                break  # an error object: fall through and report
            if process.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        _terminate(process)
        out.close()
        err.close()
        tail = err_path.read_text(errors="replace")[-2000:].strip() or out_path.read_text(errors="replace")
        raise LipsyncError(
            f"the {launch.kind} server ({launch.path}) did not become ready within "
            f"{timeout:g} s: {tail or 'no output'}"
        )

    def stop(self) -> None:
        """Ask the server to stop (SIGTERM, then SIGKILL after 10 s) and close its log files."""
        _terminate(self.process)
        for log in self._logs:
            log.close()


def runtime_of(ready: dict[str, Any]) -> dict[str, Any]:
    """What a server's ready event says runs (the result documents' ``runtime``, ``$defs/runtime``).

    ``precision`` is the one that ran: an int8 model the quality gate refused runs fp32 (and a server that
    does not say runs fp32, the default); ``precision_requested`` the one asked; ``quality`` the int8 check
    (``null`` when none ran); ``max_batch`` the engine's batch size; ``frames_per_second`` the model's
    measured capacity by batch size (``GET /v1/models``' ``capacity``: the first model's), ``{}`` when the
    server does not measure it (the ``original`` servers).
    """
    model = ready.get("model") or {}
    models = model.get("models") or []
    capacity = (models[0].get("capacity") if models else None) or model.get("capacity") or {}
    batching = ready.get("batching") or {}
    quality = model.get("quality")
    ran = str(model.get("precision") or "fp32")
    return {
        "precision": ran,
        "precision_requested": str(model.get("precision_requested") or ran),
        "device": str(model.get("device") or "cpu"),
        "quality": None if not isinstance(quality, dict) else {
            "psnr_db": quality.get("psnr_db"),
            "identical": bool(quality.get("identical", False)),
            "frames": int(quality.get("frames", 0)),
            "threshold_db": float(quality.get("threshold_db", 30.0)),
            "passed": bool(quality.get("passed", False)),
        },
        "max_batch": int(batching["max_batch"]) if batching.get("max_batch") is not None else None,
        "frames_per_second": {
            str(b): float(fps) for b, fps in (capacity.get("frames_per_second") or {}).items()
        },
    }


def check_runtime(precision: str, device: str, backend: str | None) -> None:
    """Raise :class:`UsageError` for a precision or device the servers cannot run: an unknown one, fp16 on the
    CPU, int8 with ``--backend torch`` (int8 runs on ONNX Runtime)."""
    from ..models.devices import check_precision, parse_device

    check_precision(precision, parse_device(device))
    if precision == "int8" and backend == "torch":
        raise UsageError("--precision int8 runs on ONNX Runtime: drop --backend torch")


def _same_code_env() -> dict[str, str]:
    """The environment for a server child, with this process's ``lipsync_tools`` first on its path.

    The servers must run the code the benchmark runs: an interpreter whose editable install points at
    another checkout would otherwise serve that checkout's code.
    """
    root = str(Path(__file__).resolve().parents[2])  # the folder holding this lipsync_tools
    rest = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + rest if rest else "")}


def _ready_event(path: Path) -> dict[str, Any] | None:
    for line in path.read_bytes().splitlines():
        with contextlib.suppress(ValueError):
            obj = json.loads(line)
            if isinstance(obj, dict) and ("event" in obj or obj.get("ok") is False):
                return obj
    return None


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
