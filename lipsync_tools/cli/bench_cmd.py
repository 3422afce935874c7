"""``lipsync bench --compare``: parse options, call :func:`lipsync_tools.bench.run_compare`, print/write.

Importing this module registers the command on :data:`lipsync_tools.cli.main.app`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from .main import app, run_command
from .output import (
    AudioEncoderOpt,
    FamilyOpt,
    InferenceBackendName,
    check_audio_encoder_path,
    optional_value,
    stderr,
)


def _counts(text: str) -> tuple[int, ...]:
    from ..errors import UsageError

    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"--clients {text!r}: expected comma-separated counts, e.g. 1,2,4,8") from None
    if not counts:
        raise UsageError("--clients is empty; give counts such as 1,2,4,8")
    return counts


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
    frames: Annotated[
        int | None, typer.Option("--frames", help="Measured frames per mode (default 100; --quick 12).")
    ] = None,
    clients: Annotated[
        str, typer.Option("--clients", help="Concurrency levels, comma-separated.")
    ] = "1,2,4,8",
    modes: Annotated[
        str,
        typer.Option(
            "--modes",
            help="Modes, comma-separated: original, binary, preloaded (also preloaded-crop, preloaded-lean).",
        ),
    ] = "original,binary,preloaded",
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help="Write the result document (schema: docs/benchmarks.md); - = stdout."),
    ] = None,
    markdown_out: Annotated[
        Path | None, typer.Option("--markdown", help="Write the tables as Markdown.")
    ] = None,
    plot_out: Annotated[Path | None, typer.Option("--plot", help="Write the plot (PNG).")] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="Fewer frames and repeats: under 2 minutes.")
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
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Benchmark the serving modes on this machine: per-component times, FPS, scaling, startup, memory."""

    def action() -> None:
        from ..bench import CompareOptions, check_result, parse_modes, print_report, run_compare, to_markdown
        from ..errors import UsageError

        check_audio_encoder_path(audio_encoder)
        if not compare:
            raise UsageError("say what to benchmark: lipsync bench --compare [VIDEO or PKG]")
        overrides: dict[str, Any] = {
            "input": source,
            "clients": _counts(clients),
            "modes": parse_modes(modes),
            "seed": seed,
            "backend": backend.value if backend is not None else None,
            "hd": hd,
            "family": optional_value(family),
            "audio_encoder": audio_encoder,
            "work_dir": work_dir,
        }
        if frames is not None:
            overrides["frames"] = frames
        options = CompareOptions.quick(**overrides) if quick else CompareOptions(**overrides)
        to_stdout = json_out is not None and str(json_out) == "-"

        def say(message: str) -> None:
            stderr.print(f"[bench] {message}", highlight=False, markup=False)

        result = run_compare(options, progress=say)
        check_result(result)
        if json_out is not None:
            text = json.dumps(result, indent=2)
            if to_stdout:
                sys.stdout.write(text + "\n")
            else:
                json_out.write_text(text + "\n")
        if markdown_out is not None:
            markdown_out.write_text(to_markdown(result))
        if plot_out is not None:
            from ..bench.plot import write_plot

            write_plot(result, plot_out)
        if not to_stdout:
            from rich.console import Console

            print_report(result, Console(width=max(120, Console().width)))

    run_command(debug, json_out is not None and str(json_out) == "-", action)
