"""``lipsync render``: a lip-synced mp4 from a package and a speech file (registered when ``cli/main.py``
imports it)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .app import DebugOpt, ForceOpt, JsonOpt, QuietOpt, app, run_command
from .output import (
    AudioEncoderOpt,
    BlendName,
    BlendOpt,
    DeviceOpt,
    FamilyOpt,
    ForcePrecisionOpt,
    InferenceBackendName,
    PrecisionName,
    PrecisionOpt,
    RichProgress,
    check_audio_encoder_path,
    interactive,
    optional_value,
    print_json,
    stderr,
)

if TYPE_CHECKING:
    from ..engine.model_loader import ModelInfo


class ModelName(StrEnum):
    random = "random"
    wav2lip = "wav2lip"


@app.command("render")
def render_cmd(
    package: Annotated[Path, typer.Argument(help="A .sanders package.", show_default=False)],
    audio: Annotated[
        Path, typer.Option("--audio", help="Speech file (any format FFmpeg reads).", show_default=False)
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="The mp4 to write.", show_default=False)],
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            help="Network weights: Wav2Lip (wav2lip.pth / wav2lip_gan.pth) or the avatar's own SyncTalk_2D / "
            "Ultralight checkpoint (family detected from it).",
        ),
    ] = None,
    model: Annotated[
        ModelName | None,
        typer.Option(
            "--model",
            help="random: deterministic random weights (NOT lip-sync, for demos); wav2lip: needs "
            "--checkpoint or a package with embedded weights. Default: --checkpoint, else the package's "
            "embedded weights.",
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of --model random.")] = 0,
    backend: Annotated[
        InferenceBackendName | None,
        typer.Option("--backend", help="Inference runtime (default: the faster one on CPU, onnx)."),
    ] = None,
    server: Annotated[
        str | None,
        typer.Option(
            "--server", help="Render through a running `lipsync serve` at this URL instead of locally."
        ),
    ] = None,
    batch: Annotated[int, typer.Option("--batch", help="Frames per model call.")] = 8,
    family: FamilyOpt = None,
    audio_encoder: AudioEncoderOpt = None,
    blend: BlendOpt = BlendName.feather,
    precision: PrecisionOpt = PrecisionName.fp32,
    device: DeviceOpt = "cpu",
    force_precision: ForcePrecisionOpt = False,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
    force: ForceOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Render a lip-synced mp4 (speech muxed in) from a package and a speech file."""
    from ..engine.engine import EngineOptions
    from ..engine.model_loader import RuntimeChoice
    from ..render import render_video

    def announce(info: ModelInfo) -> None:
        if not quiet:  # stderr: --json output on stdout stays clean
            for warning in info.warnings:
                stderr.print(f"[bold yellow]{warning}[/]", highlight=False, soft_wrap=True)

    def action() -> None:
        check_audio_encoder_path(audio_encoder)
        kwargs: dict[str, Any] = {
            "family": optional_value(family),
            "audio_encoder": audio_encoder,
            "model": model.value if model is not None else None,
            "checkpoint": checkpoint,
            "seed": seed,
            "backend": backend.value if backend is not None else None,
            "server_url": server,
            "options": EngineOptions(max_batch=batch, blend=blend.value),
            "runtime": None if (precision, device, force_precision) == (PrecisionName.fp32, "cpu", False)
            else RuntimeChoice(precision=precision.value, device=device, force_precision=force_precision),
            "force": force,
            "on_model": announce,
        }
        if interactive(json_output, quiet):
            with RichProgress() as progress:
                result = render_video(package, audio, output, progress=progress, **kwargs)
        else:
            result = render_video(package, audio, output, **kwargs)
        summary = result.summary()
        if json_output:
            print_json(summary)
        elif not quiet:
            info = result.model
            model_text = f"{info.family} {info.name} ({info.backend}, {info.precision} on {info.device})" \
                if info else "server"
            stderr.print(
                f"[green]rendered[/] {result.output}: {result.frames} frames {result.width}x{result.height} "
                f"@ {result.fps:.5g} fps, {result.video_seconds:.2f} s with {result.audio_seconds:.2f} s of "
                f"audio, model {model_text}, {result.frames_per_second:.1f} frames/s "
                f"({summary['seconds']['total']:.1f} s total)",
                highlight=False,
                soft_wrap=True,
            )

    run_command(debug, json_output, action)
