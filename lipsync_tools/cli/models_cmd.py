"""``lipsync models ...``: model tools (registered when ``cli/main.py`` imports it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import DebugOpt, ForceOpt, JsonOpt, QuietOpt, app, run_command
from .output import AudioEncoderOpt, AudioModeOpt, FamilyOpt, optional_value, print_json, stderr

models_app = typer.Typer(
    name="models", help="Model tools: export a checkpoint to ONNX, quantize a package's model to int8.",
    no_args_is_help=True,
)
app.add_typer(models_app)


@models_app.command("export")
def export_cmd(
    checkpoint: Annotated[
        str,
        typer.Argument(
            help="A checkpoint (Wav2Lip, SyncTalk_2D or Ultralight; family detected), or 'random' with "
            "--family for random weights (NOT lip-sync).",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="The .onnx file to write.", show_default=False)
    ],
    family: FamilyOpt = None,
    audio_mode: AudioModeOpt = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of 'random' weights.")] = 0,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
    force: ForceOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Export a checkpoint to ONNX (dynamic batch axis) and report its largest difference to torch."""
    from ..models.export import export_model

    def action() -> None:
        result = export_model(
            checkpoint,
            output,
            family=optional_value(family),
            audio_mode=optional_value(audio_mode),
            seed=seed,
            force=force,
        )
        if json_output:
            print_json(result.summary())
        elif not quiet:
            shapes = ", ".join(f"{k} {v}" for k, v in {**result.inputs, **result.outputs}.items())
            stderr.print(
                f"[green]exported[/] {result.output} ({result.family}, {result.audio_mode} audio, "
                f"{result.size_bytes / 1e6:.1f} MB): {shapes}; largest difference to torch "
                f"{result.max_abs_diff:.2g}",
                highlight=False,
                soft_wrap=True,
            )
            if result.is_random:
                stderr.print("[bold yellow]WARNING: random weights: NOT lip-sync[/]", highlight=False)

    run_command(debug, json_output, action)


@models_app.command("quantize")
def quantize_cmd(
    package: Annotated[Path, typer.Argument(help="The package whose model to quantize.", show_default=False)],
    onnx_cache: Annotated[
        Path,
        typer.Option(
            "--onnx-cache",
            help="The ONNX cache folder the server is given (--onnx-cache): the int8 model is written there, "
            "and found there by every later start.",
            show_default=False,
        ),
    ],
    checkpoint: Annotated[
        Path | None,
        typer.Option("--checkpoint", help="Network weights (default: the package's embedded checkpoint)."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="random: deterministic random weights from --seed (NOT lip-sync), as lipsync serve --model "
            "random. Default: --checkpoint, else the package's embedded weights.",
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of --model random.")] = 0,
    audio_encoder: AudioEncoderOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Make a package's int8 model (ONNX Runtime static quantization calibrated on its own crops and audio)
    ahead of serving, and report its PSNR against fp32 on held-out frames."""
    from ..engine.int8 import quantize_package

    def action() -> None:
        result = quantize_package(package, onnx_cache, model=model, checkpoint=checkpoint, seed=seed,
                                  audio_encoder=audio_encoder)
        if json_output:
            print_json(result.summary())
            return
        if quiet:
            return
        q = result.quality
        shown = "identical" if q["identical"] else f"PSNR {q['psnr_db']} dB"
        verdict = "[green]passes[/]" if result.passed else "[bold yellow]is below[/]"
        stderr.print(
            f"[green]int8[/] {result.model_path} ({result.family}, {result.source}): {shown} against fp32 "
            f"on {q['frames']} held-out frames; {verdict} the {q['threshold_db']:g} dB gate "
            f"({result.seconds:.1f} s)",
            highlight=False, soft_wrap=True,
        )
        if not result.passed:
            stderr.print("a server serves fp32 for this package unless started with --force-precision",
                         highlight=False)
        if result.is_random:
            stderr.print("[bold yellow]WARNING: random weights: NOT lip-sync[/]", highlight=False)

    run_command(debug, json_output, action)
