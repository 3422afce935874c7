"""``lipsync import``: an avatar folder another tool made -> a package (registered by ``cli/main.py``)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Any

import typer

from .app import DebugOpt, ForceOpt, JsonOpt, QuietOpt, app, run_command
from .output import (
    AudioEncoderOpt,
    AudioModeOpt,
    FamilyOpt,
    RichProgress,
    check_audio_encoder_path,
    interactive,
    optional_value,
    print_json,
    stderr,
)


@app.command("import")
def import_cmd(
    folder: Annotated[
        Path,
        typer.Argument(
            help="Avatar folder: a SyncTalk_2D/Ultralight dataset, an mp4 video package, or a LiveTalking "
            "avatar (detected).",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Package path (default: beside the folder, FOLDER.sanders)."),
    ] = None,
    family: FamilyOpt = None,
    audio_mode: AudioModeOpt = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            help="Embed this checkpoint instead of the folder's (checkpoint/**/N.pth, ultralight.pth); it "
            "is checked against the known networks and gives the family when --family is not given.",
        ),
    ] = None,
    audio_encoder: AudioEncoderOpt = None,
    audio: Annotated[
        Path | None,
        typer.Option(
            "--audio",
            help="Speech file to use instead of the folder's (required for LiveTalking avatars, which hold "
            "none).",
        ),
    ] = None,
    fps: Annotated[
        float | None,
        typer.Option("--fps", help="Frame rate (default: the folder's; SyncTalk_2D and LiveTalking: 25)."),
    ] = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
    force: ForceOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Import an avatar folder another tool prepared, keeping its own crops, landmarks and audio features."""
    from ..importers import ImportOptions, import_avatar
    from ..models.audio_features import AudioEncoderChoice

    def action() -> None:
        check_audio_encoder_path(audio_encoder)
        options = ImportOptions(fps=fps)
        show = interactive(json_output, quiet)
        with RichProgress() if show else contextlib.nullcontext() as progress:
            result = import_avatar(
                folder,
                output,
                family=optional_value(family),
                audio_mode=optional_value(audio_mode),
                checkpoint=checkpoint,
                audio_encoder=AudioEncoderChoice.parse(audio_encoder),
                audio=audio,
                options=options,
                force=force,
                progress=progress,
            )
        summary = result.summary()
        if json_output:
            print_json(summary)
        elif not quiet:
            _print_import_summary(summary)

    run_command(debug, json_output, action)


def _print_import_summary(s: dict[str, Any]) -> None:
    model = f"{s['family']}, {s['crop_size']} px crops, {s['audio_mode']} audio"
    if s["audio_features"] != "none":
        model += ", features stored"
    if s["checkpoint"]:
        model += f", checkpoint {s['checkpoint']}"
    stderr.print(
        f"[green]imported[/] {s['folder']} ({s['kind']}) -> {s['output']} ({model}): {s['frames']} frames "
        f"{s['width']}x{s['height']} @ {s['fps']:.3g} fps, {s['package_bytes'] / 1e6:.1f} MB in "
        f"{s['total_seconds']:.1f} s",
        highlight=False,
        soft_wrap=True,
    )
