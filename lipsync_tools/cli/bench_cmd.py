"""``lipsync bench --compare`` / ``--live`` / ``--soak SECONDS`` / ``--ray --catalog CAT``: parse options,
check every output path, call :func:`lipsync_tools.bench.run_compare`, :func:`~lipsync_tools.bench.run_live`,
:func:`~lipsync_tools.bench.run_soak` or :func:`~lipsync_tools.bench.run_scaleout`, print the report and write
the outputs (each file atomically).

Importing this module registers the command on :data:`lipsync_tools.cli.app.app`.
"""

from __future__ import annotations

import contextlib
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from .app import ForceOpt, app, run_command
from .output import (
    AudioEncoderOpt,
    FamilyOpt,
    InferenceBackendName,
    PrecisionName,
    RichProgress,
    check_audio_encoder_path,
    interactive,
    optional_value,
    stderr,
)


class LiveModel(StrEnum):
    random = "random"
    identity = "identity"


def _counts(text: str, option: str = "--clients") -> tuple[int, ...]:
    from ..errors import UsageError

    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"{option} {text!r}: expected comma-separated counts, e.g. 1,2,4,8") from None
    if not counts:
        raise UsageError(f"{option} is empty; give counts such as 1,2,4,8")
    return counts


def _refuse_other(mode: str, given: dict[str, bool]) -> None:
    from ..errors import UsageError

    wrong = [name for name, present in given.items() if present]
    if wrong:
        verb = "does" if len(wrong) == 1 else "do"
        raise UsageError(f"{', '.join(wrong)} {verb} not apply to {mode}; drop it")


@app.command("bench")
def bench_cmd(
    source: Annotated[
        Path | None,
        typer.Argument(
            help="A video with speech, or a .sanders package (its source video beside it). "
            "Default: a sample talking head made locally.",
            show_default=False,
        ),
    ] = None,
    compare: Annotated[
        bool,
        typer.Option("--compare", help="Measure the original, binary and preloaded servers side by side."),
    ] = False,
    live: Annotated[
        bool,
        typer.Option(
            "--live",
            help="Measure live sessions at the speed of speech (1, 2, 4, 8 at once), then one long session "
            "for drift.",
        ),
    ] = False,
    soak: Annotated[
        float | None,
        typer.Option(
            "--soak",
            metavar="SECONDS",
            help="Run one server for SECONDS under 8 concurrent clients (live sessions, frame requests, "
            "package loads, slow readers, clients that vanish, malformed messages); report errors by kind, "
            "crashes, RSS growth and frame latency.",
            show_default=False,
        ),
    ] = None,
    ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            help="Measure frame latency through a local Ray Serve cluster (lipsync serve --ray) against the "
            "plain server, both serving --catalog, and which replica served each avatar (needs the ray "
            "extra).",
        ),
    ] = False,
    catalog: Annotated[
        Path | None,
        typer.Option("--catalog", help="--ray: the JSON or TOML catalog of the avatars to serve.",
                     show_default=False),
    ] = None,
    replicas: Annotated[
        int | None,
        typer.Option("--replicas", help="--ray: replicas of the frame deployment (default 2, at most 2 "
                     "avatars each)."),
    ] = None,
    frames: Annotated[
        int | None,
        typer.Option(
            "--frames",
            help="--compare: measured frames per mode (default 100; --quick 12); --ray: measured requests "
            "per avatar to each server (default 50).",
        ),
    ] = None,
    clients: Annotated[
        str | None,
        typer.Option("--clients", help="--compare: concurrency levels, comma-separated (default 1,2,4,8)."),
    ] = None,
    modes: Annotated[
        str | None,
        typer.Option(
            "--modes",
            help="--compare: modes, comma-separated: original, binary, preloaded (the default; also "
            "preloaded-crop, preloaded-lean).",
        ),
    ] = None,
    sessions: Annotated[
        str | None,
        typer.Option("--sessions", help="--live: session counts, comma-separated (default 1,2,4,8)."),
    ] = None,
    session_seconds: Annotated[
        float | None,
        typer.Option(
            "--session-seconds",
            help="--live: seconds of speech each session says (default 10; --quick 5); --soak: the mean "
            "length of a live session (default 3).",
        ),
    ] = None,
    drift_seconds: Annotated[
        float | None,
        typer.Option(
            "--drift-seconds",
            help="--live: length of the drift session (default 600; --quick 60; 0 skips it).",
        ),
    ] = None,
    min_session_fps: Annotated[
        float | None,
        typer.Option(
            "--min-session-fps",
            help="--live, --soak: the server's --min-session-fps (default: --live the server's, 20; "
            "--soak 5).",
        ),
    ] = None,
    max_sessions: Annotated[
        int | None,
        typer.Option(
            "--max-sessions", help="--live, --soak: the server's --max-sessions (default: the server's, 32)."
        ),
    ] = None,
    image: Annotated[
        str | None,
        typer.Option(
            "--image",
            help="--live: jpeg (full frames, default) or crop_jpeg (the mouth crop as a JPEG, composited by "
            "the client): compare their bytes per frame and encode time.",
        ),
    ] = None,
    model: Annotated[
        LiveModel | None,
        typer.Option(
            "--model",
            help="--live, --soak: random (default: random weights, the real network's speed, NOT lip-sync) "
            "or identity (no network: the serving machinery alone); --ray: the same, default each avatar's "
            "own checkpoint.",
        ),
    ] = None,
    json_out: Annotated[
        Path | None,
        typer.Option(
            "--json", help="Write the result document (schema: docs/benchmarks.md); - = stdout (no tables)."
        ),
    ] = None,
    markdown_out: Annotated[
        Path | None, typer.Option("--markdown", help="Write the tables as Markdown.")
    ] = None,
    force: ForceOpt = False,
    plot_out: Annotated[Path | None, typer.Option("--plot", help="--compare: write the plot (PNG).")] = None,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help="--compare: fewer frames and repeats (under 2 minutes); --live: 5 s sessions, 60 s drift.",
        ),
    ] = False,
    hd: Annotated[
        bool, typer.Option("--hd", help="Make the sample video 1280x720 (no input given).")
    ] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the servers' random model weights.")] = 0,
    backend: Annotated[
        InferenceBackendName | None,
        typer.Option("--backend", help="Servers' inference runtime: torch or onnx (default: library's)."),
    ] = None,
    work_dir: Annotated[
        Path | None, typer.Option("--work-dir", help="Keep the sample, package and server logs here.")
    ] = None,
    family: FamilyOpt = None,
    audio_encoder: AudioEncoderOpt = None,
    precision: Annotated[
        PrecisionName,
        typer.Option(
            "--precision",
            help="Every server's model precision: fp32; int8 (ONNX Runtime, calibrated on the package; a "
            "server whose int8 output departs from fp32 below 30 dB PSNR runs fp32, and the report says so); "
            "fp16 (GPU). --compare also measures fp32 and int8 side by side in this process.",
        ),
    ] = PrecisionName.fp32,
    device: Annotated[
        str, typer.Option("--device", help="Where every server's model runs: cpu, cuda or cuda:N.")
    ] = "cpu",
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Benchmark serving on this machine: --compare (per-component times, FPS, scaling, startup, memory),
    --live (sessions at the speed of speech: delivered fps, lag, dropped frames, refusals, drift),
    --soak SECONDS (a long mixed load: errors by kind, crashes, memory growth) or --ray --catalog CAT (frame
    latency through a Ray Serve cluster against the plain server, and each avatar's replica)."""

    def action() -> None:
        from ..bench import (
            CompareOptions,
            LiveOptions,
            SoakOptions,
            check_outputs,
            check_result,
            parse_modes,
            print_report,
            run_compare,
            run_live,
            run_scaleout,
            run_soak,
            write_outputs,
        )
        from ..errors import UsageError

        given = (("--compare", compare), ("--live", live), ("--soak", soak is not None), ("--ray", ray))
        chosen = [name for name, on in given if on]
        if len(chosen) != 1:
            both = f", one of them: {' and '.join(chosen)}, not both" if len(chosen) == 2 else ""
            both = f", one of them, not {len(chosen)} at once" if len(chosen) > 2 else both
            raise UsageError(
                "say what to benchmark: lipsync bench --compare [VIDEO or PKG] (the serving modes side by "
                "side), lipsync bench --live [VIDEO or PKG] (live sessions), lipsync bench --soak SECONDS "
                "[VIDEO or PKG] (a long mixed load) or lipsync bench --ray --catalog CAT (through a Ray "
                f"Serve cluster against the plain server){both}"
            )
        if not ray:
            _refuse_other(chosen[0], {"--catalog": catalog is not None, "--replicas": replicas is not None})
        check_audio_encoder_path(audio_encoder)
        common: dict[str, Any] = {
            "input": source,
            "seed": seed,
            "backend": backend.value if backend is not None else None,
            "hd": hd,
            "family": optional_value(family),
            "audio_encoder": audio_encoder,
            "work_dir": work_dir,
            "precision": precision.value,
            "device": device,
        }
        options: CompareOptions | LiveOptions | SoakOptions | None = None
        scaleout: dict[str, Any] = {}
        if ray:
            _refuse_other(
                "--ray",
                {"a VIDEO or PKG argument (the avatars are --catalog's)": source is not None,
                 "--clients": clients is not None, "--modes": modes is not None,
                 "--plot": plot_out is not None, "--sessions": sessions is not None,
                 "--session-seconds": session_seconds is not None,
                 "--drift-seconds": drift_seconds is not None,
                 "--min-session-fps": min_session_fps is not None, "--max-sessions": max_sessions is not None,
                 "--image": image is not None, "--quick": quick, "--hd": hd, "--family": family is not None,
                 "--audio-encoder": audio_encoder is not None},
            )
            if catalog is None:
                raise UsageError("--ray serves the avatars of a catalog: give --catalog FILE (a JSON or "
                                 "TOML catalog of ids with their package paths or URLs, as lipsync serve "
                                 "--catalog takes; docs/scale-out.md)")
            from ..cluster.connect import require_ray

            require_ray("lipsync bench --ray")  # before any work: the install command, not a traceback
            scaleout = {
                "catalog": catalog, "requests_per_avatar": 50 if frames is None else frames,
                "replicas": 2 if replicas is None else replicas, "model": model.value if model else None,
                "seed": seed, "backend": common["backend"], "precision": precision.value, "device": device,
                "work_dir": work_dir,
            }
        elif soak is not None:
            _refuse_other(
                "--soak",
                {"--frames": frames is not None, "--clients": clients is not None,
                 "--modes": modes is not None, "--plot": plot_out is not None,
                 "--sessions": sessions is not None, "--drift-seconds": drift_seconds is not None,
                 "--image": image is not None, "--quick": quick},
            )
            overrides = dict(common)
            soak_values: tuple[tuple[str, float | None], ...] = (
                ("session_seconds", session_seconds), ("min_session_fps", min_session_fps),
                ("max_sessions", max_sessions),
            )
            for key, number in soak_values:
                if number is not None:
                    overrides[key] = number
            if model is not None:
                overrides["model"] = model.value
            options = SoakOptions(seconds=soak, **overrides)
        elif live:
            _refuse_other(
                "--live",
                {"--frames": frames is not None, "--clients": clients is not None,
                 "--modes": modes is not None, "--plot": plot_out is not None},
            )
            overrides = dict(common)
            if sessions is not None:
                overrides["sessions"] = _counts(sessions, "--sessions")
            for key, value in (("session_seconds", session_seconds), ("drift_seconds", drift_seconds),
                               ("min_session_fps", min_session_fps), ("max_sessions", max_sessions),
                               ("image", image)):
                if value is not None:
                    overrides[key] = value
            if model is not None:
                overrides["model"] = model.value
            options = LiveOptions.quick(**overrides) if quick else LiveOptions(**overrides)
        else:
            _refuse_other(
                "--compare",
                {"--sessions": sessions is not None, "--session-seconds": session_seconds is not None,
                 "--drift-seconds": drift_seconds is not None,
                 "--min-session-fps": min_session_fps is not None,
                 "--max-sessions": max_sessions is not None, "--model": model is not None,
                 "--image": image is not None},
            )
            overrides = {
                **common,
                "clients": _counts(clients or "1,2,4,8"),
                "modes": parse_modes(modes or "original,binary,preloaded"),
            }
            if frames is not None:
                overrides["frames"] = frames
            options = CompareOptions.quick(**overrides) if quick else CompareOptions(**overrides)
        # Every output is checked before a run of minutes; each is written atomically after it.
        check_outputs({"--json": json_out, "--markdown": markdown_out, "--plot": plot_out}, force=force,
                      source=source)
        if plot_out is not None:
            from ..bench.plot import check_plotting

            check_plotting()  # the plot extra, before the run
        to_stdout = json_out is not None and str(json_out) == "-"

        def say(message: str) -> None:
            stderr.print(f"[bench] {message}", highlight=False, markup=False)

        if options is None:
            result = run_scaleout(**scaleout, progress=say)
        elif isinstance(options, SoakOptions):
            with RichProgress() if interactive(False, False) else contextlib.nullcontext() as ticker:
                result = run_soak(options, progress=say, ticker=ticker)
        elif isinstance(options, LiveOptions):
            result = run_live(options, progress=say)
        else:
            result = run_compare(options, progress=say)
        check_result(result)
        write_outputs(result, json_path=json_out, markdown_path=markdown_out, plot_path=plot_out,
                      stdout=sys.stdout.write)
        if not to_stdout:
            from rich.console import Console

            print_report(result, Console(width=max(120, Console().width)))

    run_command(debug, json_out is not None and str(json_out) == "-", action)
