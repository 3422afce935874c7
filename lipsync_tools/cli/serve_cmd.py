"""``lipsync serve``: parse options, build a :class:`~lipsync_tools.server.ServerConfig`, call ``run``.

Importing this module registers the command on :data:`lipsync_tools.cli.app.app` (main imports it at its
"commands that live in their own modules" line).
"""

from __future__ import annotations

import json
import logging
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .app import app, run_command
from .output import (
    AudioEncoderOpt,
    AudioModeOpt,
    BlendName,
    BlendOpt,
    DeviceOpt,
    FamilyOpt,
    ForcePrecisionOpt,
    InferenceBackendName,
    PrecisionName,
    PrecisionOpt,
    optional_value,
    stderr,
)

if TYPE_CHECKING:
    from ..cluster.serve import RunningCluster


class ModelChoice(StrEnum):
    random = "random"
    wav2lip = "wav2lip"
    identity = "identity"


class FramesMode(StrEnum):
    all = "all"
    none = "none"


@app.command("serve")
def serve_cmd(
    packages: Annotated[
        list[str] | None,
        typer.Argument(
            help="Package file(s) to load at startup: PATH (id = file stem) or ID=PATH.", show_default=False
        ),
    ] = None,
    port: Annotated[
        int, typer.Option("--port", help="TCP port (0: any free port, printed when ready).")
    ] = 8000,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Interface to bind. The default serves this machine only; 0.0.0.0 exposes the server "
            "to the network (use --token then).",
        ),
    ] = "127.0.0.1",
    model: Annotated[
        ModelChoice | None,
        typer.Option(
            "--model",
            help="random: deterministic random weights (NOT lip-sync; demos/benchmarks); wav2lip "
            "(default): --checkpoint, else the checkpoint embedded in the package.",
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", help="Wav2Lip checkpoint (wav2lip.pth / wav2lip_gan.pth).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of --model random.")] = 0,
    backend: Annotated[
        InferenceBackendName | None,
        typer.Option(
            "--backend", help="Inference runtime (default: the one measured faster, docs/models.md)."
        ),
    ] = None,
    max_batch: Annotated[
        int | None,
        typer.Option(
            "--max-batch",
            help="Most frames (from all clients) in one model call. Default: measured at startup, the "
            "smallest batch within 10% of the model's best time per frame (docs/engine.md).",
        ),
    ] = None,
    max_models: Annotated[
        int,
        typer.Option(
            "--max-models",
            help="Most models loaded at once (each package is served by its own checkpoint; packages "
            "sharing one share the model). Idle ones are unloaded, least recently used first.",
        ),
    ] = 8,
    max_wait_ms: Annotated[
        float | None,
        typer.Option(
            "--max-wait-ms",
            help="How long a batch waits for more frames, in milliseconds. Default: measured at startup, a "
            "quarter of one single-frame model call, at most 10 (0 when the batch is 1).",
        ),
    ] = None,
    queue_limit: Annotated[
        int,
        typer.Option("--queue-limit", help="Frames waiting for the model before requests get 'overloaded'."),
    ] = 64,
    min_session_fps: Annotated[
        float,
        typer.Option(
            "--min-session-fps",
            help="Refuse a live session ('overloaded') when the admitted ones could no longer each get this "
            "many frames per second (measured model speed; docs/engine.md, Live sessions).",
        ),
    ] = 20.0,
    max_sessions: Annotated[
        int, typer.Option("--max-sessions", help="Most live sessions at once, whatever the capacity.")
    ] = 32,
    max_sessions_per_ip: Annotated[
        int,
        typer.Option(
            "--max-sessions-per-ip",
            help="Most live sessions of one client address ('overloaded' beyond). Behind a reverse proxy "
            "every client has the proxy's address: raise it to --max-sessions there.",
        ),
    ] = 8,
    max_connections: Annotated[
        int,
        typer.Option(
            "--max-connections",
            help="Most open WebSockets plus HTTP requests being answered (/healthz, /readyz and /metrics "
            "aside); one more gets 'overloaded' (HTTP 503, WebSocket close 1013).",
        ),
    ] = 256,
    session_idle_timeout: Annotated[
        float,
        typer.Option(
            "--session-idle-timeout",
            help="Close a session ('idle_timeout') that sends no audio for this many seconds without ending.",
        ),
    ] = 30.0,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="LIPSYNC_TOKEN",
            show_envvar=True,
            help="Bearer token every request but /healthz must carry.",
        ),
    ] = None,
    package_dir: Annotated[
        Path | None,
        typer.Option(
            "--package-dir",
            help="Run-time loads by path (POST /v1/packages {id, path}) only from this folder; without it "
            "none by path.",
        ),
    ] = None,
    allow_urls: Annotated[
        bool,
        typer.Option(
            "--allow-urls", help="Allow run-time loads of {id, url, sha256} (downloaded, verified)."
        ),
    ] = False,
    insecure: Annotated[
        bool,
        typer.Option("--insecure", help="Allow a non-loopback --host without --token (a trusted network)."),
    ] = False,
    no_runtime_loading: Annotated[
        bool, typer.Option("--no-runtime-loading", help="Refuse POST/DELETE /v1/packages.")
    ] = False,
    onnx_cache: Annotated[
        Path | None,
        typer.Option(
            "--onnx-cache", help="Folder for exported ONNX models, so a second start skips the export."
        ),
    ] = None,
    json_output: Annotated[
        bool,
        typer.Option(
            "--json", help='Print one JSON line per event on stdout ({"event": "ready", "url": ...}).'
        ),
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and server logs.")] = False,
    original: Annotated[
        str | None,
        typer.Option(
            "--original",
            help="Serve a raw VIDEO (or ID=VIDEO) instead of packages, running every stage (decode, face "
            "detection, crop, masks, features) per request: the path `lipsync bench --compare` measures.",
        ),
    ] = None,
    audio: Annotated[
        Path | None,
        typer.Option("--audio", help="With --original: the file replay requests take their audio from."),
    ] = None,
    catalog: Annotated[
        Path | None,
        typer.Option(
            "--catalog",
            help="JSON or TOML catalog of package ids (path, or url + sha256, optional checkpoint): an id "
            "that is not loaded is loaded (downloaded first) by its first request.",
        ),
    ] = None,
    max_memory: Annotated[
        str | None,
        typer.Option(
            "--max-memory",
            help="Memory budget for decoded frames and model weights, e.g. 6GiB: idle packages and models "
            "are unloaded (least recently used first) to make room; a load that cannot fit is refused.",
        ),
    ] = None,
    max_packages: Annotated[
        int | None, typer.Option("--max-packages", help="Most packages loaded at once (idle ones make room).")
    ] = None,
    frames: Annotated[
        FramesMode,
        typer.Option(
            "--frames",
            help="all: decode every package's full frames into RAM; none: crop-only serving (only crops, "
            "masks and features; megabytes per avatar; clients composite crop_only replies).",
        ),
    ] = FramesMode.all,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir", help="Where catalog downloads are kept (default: the user cache folder)."
        ),
    ] = None,
    ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            help="Serve through a Ray Serve cluster: an ingress with this same API routes each request by "
            "its catalog id to replicas that hold the avatars (needs --catalog and the ray extra; "
            "docs/scale-out.md).",
        ),
    ] = False,
    replicas: Annotated[
        str,
        typer.Option(
            "--replicas",
            help="With --ray: replicas of the frame deployment (2), or autoscaling bounds (2-6: Ray Serve "
            "adds replicas while frame requests queue, and removes them when idle).",
        ),
    ] = "2",
    max_packages_per_replica: Annotated[
        int,
        typer.Option(
            "--max-packages-per-replica",
            help="With --ray: avatars one replica holds at most (the least recently used one makes room).",
        ),
    ] = 4,
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            help="With --ray: join this Ray cluster ('auto', HOST:6379, ray://HOST:10001) instead of "
            "starting a local one.",
        ),
    ] = None,
    family: FamilyOpt = None,
    audio_mode: AudioModeOpt = None,
    audio_encoder: AudioEncoderOpt = None,
    blend: BlendOpt = BlendName.feather,
    precision: PrecisionOpt = PrecisionName.fp32,
    device: DeviceOpt = "cpu",
    force_precision: ForcePrecisionOpt = False,
) -> None:
    """Serve lip-sync frames from preloaded packages over HTTP and WebSocket (docs/protocol.md)."""
    from ..server import PackageSpec, ServerConfig, SessionLimits, StartupReport, format_startup, run

    def on_ready(report: StartupReport) -> None:
        if json_output:
            # one line per event, so a supervising process (the benchmark) can read it with readline()
            sys.stdout.write(json.dumps({"event": "ready", **report.to_dict()}) + "\n")
            sys.stdout.flush()
            return
        for line in format_startup(report).splitlines():
            style = "bold red" if line.startswith("!!!") else None
            stderr.print(line, style=style, highlight=False, markup=False, soft_wrap=True)
        sys.stderr.flush()

    def on_cluster_ready(running: RunningCluster) -> None:
        from ..cluster.serve import format_ready

        if json_output:
            event = {"event": "ready", "url": running.url, "replicas": running.replicas,
                     "max_replicas": running.max_replicas,
                     "max_packages_per_replica": running.max_packages_per_replica,
                     "packages": list(running.packages)}
            sys.stdout.write(json.dumps(event) + "\n")
            sys.stdout.flush()
            return
        stderr.print(format_ready(running), highlight=False, markup=False, soft_wrap=True)
        sys.stderr.flush()

    def action() -> None:
        from ..errors import UsageError
        from ..remote import parse_size

        if original is not None and packages:
            raise UsageError("--original serves one raw video; give it without package arguments")
        if audio is not None and original is None:
            raise UsageError("--audio goes with --original VIDEO (packages carry their own audio)")
        if ray and original is not None:
            raise UsageError("--ray serves catalog avatars; --original serves one raw video on one machine")
        if not ray and (address is not None or replicas != "2" or max_packages_per_replica != 4):
            raise UsageError("--replicas, --max-packages-per-replica and --address go with --ray")
        specs = [original] if original is not None else packages or []
        logging.basicConfig(
            level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
        )
        config = ServerConfig(
            packages=tuple(PackageSpec.parse(p) for p in specs),
            host=host,
            port=port,
            model=model.value if model else None,
            checkpoint=checkpoint,
            seed=seed,
            backend=backend.value if backend else None,
            max_batch=max_batch,
            max_models=max_models,
            catalog=catalog,
            cache_dir=cache_dir,
            max_memory=parse_size(max_memory) if max_memory is not None else None,
            max_packages=max_packages,
            frames=frames.value,
            max_wait_ms=max_wait_ms,
            queue_limit=queue_limit,
            min_session_fps=min_session_fps,
            max_sessions=max_sessions,
            max_sessions_per_ip=max_sessions_per_ip,
            max_connections=max_connections,
            sessions=SessionLimits(idle_timeout_seconds=session_idle_timeout),
            token=token,
            allow_urls=allow_urls,
            insecure=insecure,
            package_dir=package_dir,
            allow_runtime_loading=not no_runtime_loading,
            onnx_cache_dir=onnx_cache,
            family=optional_value(family),
            audio_mode=optional_value(audio_mode),
            audio_encoder=audio_encoder,
            blend=blend.value,
            precision=precision.value,
            device=device,
            force_precision=force_precision,
            freeze_startup_objects=True,  # this process is the server's alone
            log_level="debug" if debug else "warning",
        )
        if ray:
            from ..cluster.serve import parse_replicas, serve_on_ray

            fewest, most = parse_replicas(replicas)
            serve_on_ray(config, replicas=fewest, max_replicas=most,
                         max_packages_per_replica=max_packages_per_replica, address=address,
                         on_ready=on_cluster_ready)
            return
        components = None
        if original is not None:
            from ..bench.original_server import original_components

            components = original_components(audio)
        run(config, components=components, on_ready=on_ready)

    run_command(debug, json_output, action)
