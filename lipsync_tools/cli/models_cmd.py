"""``lipsync models ...``: model tools (registered by ``cli/main.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .main import DebugOpt, ForceOpt, JsonOpt, QuietOpt, app, run_command
from .output import AudioModeOpt, FamilyOpt, optional_value, print_json, stderr

models_app = typer.Typer(
    name="models", help="Model tools: export a checkpoint to ONNX.", no_args_is_help=True
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
