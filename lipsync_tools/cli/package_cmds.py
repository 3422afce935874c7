"""``lipsync build-package``, ``inspect``, ``validate``, ``migrate`` and ``preview``: the package commands
(registered on :data:`lipsync_tools.cli.app.app` when ``cli/main.py`` imports this module)."""

from __future__ import annotations

import contextlib
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import BuildFailedError, PackageFormatError, PackageVersionError, UsageError
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


class FaceBackendName(StrEnum):
    mediapipe = "mediapipe"
    fan = "fan"


class MissingFace(StrEnum):
    interpolate = "interpolate"
    fail = "fail"


class FrameCodec(StrEnum):
    jpeg = "jpeg"
    png = "png"


class SegmentChoice(StrEnum):
    longest = "longest"
    fail = "fail"


@app.command("build-package")
def build_package_cmd(
    videos: Annotated[
        list[Path], typer.Argument(help="Video file(s), or folder(s) of videos.", show_default=False)
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help=("Package path (default: next to the video, NAME.sanders); a folder when building several."),
        ),
    ] = None,
    audio: Annotated[
        Path | None,
        typer.Option("--audio", help="Speech/audio file to use instead of the video's own audio track."),
    ] = None,
    face_backend: Annotated[
        FaceBackendName,
        typer.Option(
            "--face-backend",
            help="Landmark backend: mediapipe (468 points, built in) or fan (68 points, needs "
            "face-alignment's 2DFAN4 weights).",
        ),
    ] = FaceBackendName.mediapipe,
    weights_dir: Annotated[
        Path | None,
        typer.Option(
            "--weights-dir", help="Folder holding backend weight files (fan: 2DFAN4-11f355bf06.pth.tar)."
        ),
    ] = None,
    crop_size: Annotated[
        int | None,
        typer.Option(
            "--crop-size", help="Crop side in pixels (default: the family's: 96, 328 or 168; only wav2lip "
            "takes another)."
        ),
    ] = None,
    padding: Annotated[
        float, typer.Option("--padding", help="Box padding per side, as a fraction of the face size.")
    ] = 0.1,
    smooth_window: Annotated[
        int, typer.Option("--smooth-window", help="Temporal smoothing window in frames (odd; 1 = off).")
    ] = 5,
    missing_face: Annotated[
        MissingFace,
        typer.Option(
            "--missing-face",
            help="Frames of the kept segment where the face was missed (at most --max-gap in a row): "
            "interpolate from neighbours, or fail the build.",
        ),
    ] = MissingFace.interpolate,
    start: Annotated[
        str | None,
        typer.Option(
            "--start", help="Analyse the video from here: seconds (2.5) or a frame number ('50 f').",
            show_default=False,
        ),
    ] = None,
    end: Annotated[
        str | None,
        typer.Option(
            "--end", help="Analyse the video up to here (excluded): seconds or 'N f'.", show_default=False
        ),
    ] = None,
    segment: Annotated[
        SegmentChoice,
        typer.Option(
            "--segment",
            help="Which stretch of one continuously present face to keep: the longest, or fail unless the "
            "whole video (or --start/--end range) is one.",
        ),
    ] = SegmentChoice.longest,
    max_gap: Annotated[
        float,
        typer.Option(
            "--max-gap", help="Seconds without the face that a segment bridges (filled); longer ends it."
        ),
    ] = 0.5,
    min_segment: Annotated[
        float,
        typer.Option("--min-segment", help="Seconds the kept segment must last at least."),
    ] = 2.0,
    frame_codec: Annotated[
        FrameCodec,
        typer.Option("--frame-codec", help="How full frames are stored: jpeg (compact) or png (lossless)."),
    ] = FrameCodec.jpeg,
    frame_quality: Annotated[
        int | None,
        typer.Option("--frame-quality", help="JPEG quality 1-100 (default 95) or PNG level 0-9 (default 1)."),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            help="Embed this checkpoint (the avatar's own SyncTalk_2D/Ultralight UNet, or a Wav2Lip "
            "fine-tune) in the package; it is checked against the family's architecture first (and gives "
            "the family when --family is not given). Servers use it unless given another.",
        ),
    ] = None,
    family: FamilyOpt = None,
    audio_mode: AudioModeOpt = None,
    audio_encoder: AudioEncoderOpt = None,
    detect_size: Annotated[
        int,
        typer.Option(
            "--detect-size", help="Longest side of the frame copy given to the face backend (0 = full frame)."
        ),
    ] = 640,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", "-j", help="Parallel worker processes when building several videos (default: cores)."
        ),
    ] = None,
    ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            help="Build several videos (or a folder) as Ray tasks, one package each, on a local Ray cluster "
            "or the one at --address; every node must see the input and output paths. Needs the ray extra.",
        ),
    ] = False,
    address: Annotated[
        str | None,
        typer.Option(
            "--address", help="With --ray: the Ray cluster to join (e.g. auto, HOST:6379, ray://HOST:10001).",
            show_default=False,
        ),
    ] = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
    force: ForceOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Build a sanders package (faces, crops, masks, audio features) from a talking-head video."""
    from ..pipeline.batch import build_packages, expand_inputs
    from ..pipeline.build import BuildOptions, build_package

    def action() -> None:
        if address is not None and not ray:
            raise UsageError("--address names the Ray cluster for --ray; add --ray, or drop --address")
        if ray and workers is not None:
            raise UsageError(
                "--workers sets local worker processes; with --ray the cluster's free CPUs set how many "
                "builds run at once, so drop --workers"
            )
        quality = (
            frame_quality if frame_quality is not None else (95 if frame_codec is FrameCodec.jpeg else 1)
        )
        chosen_family = optional_value(family)
        chosen_mode = optional_value(audio_mode)
        if checkpoint is not None:
            from ..models.families import load_network

            # refuse a wrong or damaged checkpoint before any video work; it also tells the family
            network = load_network(checkpoint, family=chosen_family, audio_mode=chosen_mode)
            chosen_family, chosen_mode = network.family.name, network.audio_mode.name
        check_audio_encoder_path(audio_encoder)
        from ..models.audio_features import AudioEncoderChoice

        encoder = AudioEncoderChoice.parse(audio_encoder)
        options = BuildOptions(
            family=chosen_family or "wav2lip",
            audio_mode=chosen_mode,
            face_backend=face_backend.value,
            weights_dir=weights_dir,
            crop_size=crop_size,
            padding=padding,
            smooth_window=smooth_window,
            missing_face=missing_face.value,
            start=start,
            end=end,
            segment=segment.value,
            max_gap=max_gap,
            min_segment=min_segment,
            frame_codec=frame_codec.value,
            frame_quality=quality,
            detect_max_side=detect_size,
        )
        inputs = expand_inputs(videos)
        single = len(inputs) == 1 and not videos[0].is_dir()
        if single and ray:
            raise UsageError(
                f"--ray builds a folder or several videos as Ray tasks; {videos[0]} is one video: build it "
                "without --ray, or pass its folder"
            )
        if single:
            show = interactive(json_output, quiet)
            with RichProgress() if show else contextlib.nullcontext() as progress:
                result = build_package(
                    inputs[0],
                    output,
                    audio=audio,
                    options=options,
                    checkpoint=checkpoint,
                    audio_encoder=encoder,
                    force=force,
                    debug=debug,
                    progress=progress,
                )
            summary = result.summary()
            if json_output:
                print_json(summary)
            elif not quiet:
                _print_build_summary(summary)
            return
        if audio is not None:
            raise UsageError(
                "--audio applies to one video; with several, each video must carry its own audio"
            )

        def done(entry: dict[str, Any]) -> None:
            if not (json_output or quiet):
                status = "built" if entry["ok"] else f"FAILED ({entry['message']})"
                stderr.print(f"{entry['video']}: {status}", highlight=False, markup=False, soft_wrap=True)

        if ray:
            from ..cluster.build import build_folder_on_ray

            report = build_folder_on_ray(
                inputs, output, options=options, checkpoint=checkpoint, audio_encoder=encoder, force=force,
                debug=debug, on_done=done, address=address,
            )
        else:
            report = build_packages(
                inputs, output, options=options, checkpoint=checkpoint, audio_encoder=encoder, force=force,
                workers=workers, debug=debug, on_done=done,
            )
        if json_output:
            print_json(report.summary())
        if report.failed:
            raise BuildFailedError(f"{len(report.failed)} of {len(report.results)} packages failed")

    run_command(debug, json_output, action)


def _print_build_summary(s: dict[str, Any]) -> None:
    stderr.print(
        f"[green]built[/] {s['output']} ({s['family']}, {s['crop_size']} px crops, {s['audio_mode']} audio"
        f"{', features stored' if s['audio_features'] != 'none' else ''}): "
        f"{s['frames']} frames {s['width']}x{s['height']} "
        f"@ {s['fps']:.3g} fps, "
        f"{s['package_bytes'] / 1e6:.1f} MB in {s['total_seconds']:.1f} s "
        f"({s['build_frames_per_second']:.1f} frames/s analysed, peak {s['peak_rss_mb']:.0f} MB RAM)",
        highlight=False,
        soft_wrap=True,
    )
    for line in footage_lines(s):
        stderr.print(line, highlight=False, soft_wrap=True)


def footage_lines(s: dict[str, Any]) -> list[str]:
    """What a package holds, for people: the kept range and what was dropped and why (loudly), face
    detection counts, crop jitter, and the package's warnings. ``s`` is a build summary or ``inspect``'s
    ``footage`` (the same keys)."""
    from ..pipeline.segments import reasons_text

    fps = s["fps"]
    lines: list[str] = []
    if "source_range" in s:
        start, end = s["source_range"]
        whole = start == 0 and end == s["source_frames"]
        whole_range = [start, end] == s["analysed_range"]
        colour = "green" if whole else "bold yellow"
        kept = next((seg for seg in s["segments"] if seg["kept"]), None)
        if whole or whole_range:
            how = "the whole video" if whole else "the whole --start/--end range"
        elif s["segments_found"] > 1:
            how = f"the longest of {s['segments_found']} segments"
        else:
            how = "its only segment"
        if kept and not whole_range:
            how += f", {reasons_text(kept['start_reason'], kept['end_reason'])}"
        lines.append(
            f"[{colour}]kept source frames {start}-{end}[/] ({start / fps:.2f}-{end / fps:.2f} s) of "
            f"{s['source_frames']}: {how}"
        )
        for drop in s["dropped"]:
            if drop["reason"] == "segment":
                seg = s["segments"][drop["segment"]]
                why = f"a shorter segment, {reasons_text(seg['start_reason'], seg['end_reason'])}"
            else:
                why = {"before_range": "before --start", "after_range": "after --end",
                       "no_face": "no face found"}[drop["reason"]]
            lines.append(
                f"  [yellow]dropped[/] frames {drop['start']}-{drop['end']} "
                f"({drop['start'] / fps:.2f}-{drop['end'] / fps:.2f} s): {why}"
            )
    detail = ""
    if "longest_fill_frames" in s:
        detail = (
            f" (longest fill {s['longest_fill_frames']} frames, {s['longest_fill_seconds']:.2f} s), "
            f"crop jitter {s['jitter_rms_px']:.2f} px RMS"
        )
    lines.append(f"faces: {s['detected_frames']} frames detected, {s['filled_frames']} filled{detail}")
    lines.extend(f"[bold red]warning:[/] {warning}" for warning in s.get("warnings", []))
    return lines


@app.command("inspect")
def inspect_cmd(
    package: Annotated[Path, typer.Argument(help="A .sanders package.", show_default=False)],
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Summarise a package: frames, fps, size, face backend, filled frames, datasets and sizes."""
    from ..package.inspect import describe_package

    def action() -> None:
        info = describe_package(package)
        if json_output:
            print_json(info)
        else:
            _print_description(info)

    run_command(debug, json_output, action)


def _print_description(info: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Console(highlight=False, soft_wrap=True)
    v = info["video"]
    out.print(
        f"[bold]{info['path']}[/]  sanders {info['format_version']} (lipsync-tools {info['tool_version']})"
    )
    out.print(
        f"  frames {v['frame_count']} @ {v['fps']:.3f} fps ({info['duration_seconds']:.2f} s), "
        f"{v['width']}x{v['height']}, rotation {v['rotation']}"
    )
    faces = info["faces"]
    out.print(f"  faces  {faces['backend']} ({faces['scheme']}), crop {info['crop']['size']} px")
    for line in footage_lines({**info["footage"], "warnings": info["warnings"]}):
        out.print(f"  {line}")
    model = info["model"]
    encoder = model["audio_encoder"]
    if encoder == "random":
        encoder = f"random (seed {model['audio_encoder_seed']}), NOT lip-sync"
    checkpoint = "embedded checkpoint" if "model/checkpoint" in info["datasets"] else "no checkpoint"
    out.print(
        f"  model  {model['family']}, {model['audio_mode']} audio, features {model['features']}, "
        f"audio encoder {encoder}, {checkpoint}, box rule {info['crop'].get('box_rule', 'padded')}"
    )
    out.print(
        f"  audio  {info['audio_seconds']:.2f} s, "
        f"mel {info['audio']['mel_bands']}x{info['audio']['mel_columns']}"
    )
    out.print(f"  source {info['source_video']['name']} sha256 {info['source_video']['sha256'][:16]}...")
    table = Table("dataset", "shape", "dtype", "stored", "bytes")
    for name, d in info["datasets"].items():
        table.add_row(name, "x".join(map(str, d["shape"])), d["dtype"], d["storage"], f"{d['bytes']:,}")
    out.print(table)


@app.command("validate")
def validate_cmd(
    packages: Annotated[
        list[Path], typer.Argument(help="One or more .sanders packages.", show_default=False)
    ],
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Check version, layout, shapes, dtypes and every checksum; exit non-zero naming each problem."""
    from ..package.validate import validate_package

    def action() -> None:
        report = {}
        bad = 0
        codes: set[int] = set()
        for path in packages:
            problems = validate_package(path)
            report[str(path)] = [{"dataset": p.dataset, "message": p.message} for p in problems]
            codes.update(p.exit_code for p in problems)
            if problems:
                bad += 1
                if not json_output:
                    for p in problems:
                        sys.stdout.write(f"{path}: {p}\n")
            elif not json_output:
                sys.stdout.write(f"{path}: ok\n")
        if json_output:
            print_json({"ok": bad == 0, "packages": report})
        if bad:
            # 12 when the only trouble is a newer major format version (upgrade lipsync-tools), else 11
            version_only = codes == {PackageVersionError.exit_code}
            raise typer.Exit(PackageVersionError.exit_code if version_only else PackageFormatError.exit_code)

    run_command(debug, json_output, action)


@app.command("migrate")
def migrate_cmd(
    package: Annotated[Path, typer.Argument(help="A .sanders package of an older format version.",
                                            show_default=False)],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the migrated package here (default: in place)."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would change; write nothing.")
    ] = False,
    json_output: JsonOpt = False,
    force: ForceOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Rewrite a package in the current format version (only the manifest changes; the copy is validated
    and renamed into place atomically)."""
    from ..package.migrate import migrate_package

    def action() -> None:
        result = migrate_package(package, output, dry_run=dry_run, force=force)
        if json_output:
            print_json(result.to_dict())
            return
        if not result.needed:
            stderr.print(f"{package}: already format {result.from_version}; nothing to do", highlight=False,
                         markup=False, soft_wrap=True)
            return
        verb = "would migrate" if dry_run else "migrated"
        stderr.print(f"{verb} {package} from format {result.from_version} to {result.to_version}"
                     + ("" if dry_run or result.output == package else f" into {result.output}"),
                     highlight=False, markup=False, soft_wrap=True)
        for change in result.changes:
            stderr.print(f"  {change}", highlight=False, markup=False, soft_wrap=True)

    run_command(debug, json_output, action)


@app.command("preview")
def preview_cmd(
    package: Annotated[Path, typer.Argument(help="A .sanders package.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the PNG contact sheet.")],
    frames: Annotated[int, typer.Option("--frames", "-n", help="How many frames to sample.")] = 6,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Draw a contact sheet: sampled frames with boxes, landmarks and masks, and the crops beside them."""
    from ..pipeline.preview import make_contact_sheet

    def action() -> None:
        path = make_contact_sheet(package, output, frames=frames, force=force)
        if not quiet:
            from ..package.inspect import package_warnings

            stderr.print(f"wrote {path}", highlight=False, markup=False, soft_wrap=True)
            for warning in package_warnings(package):
                stderr.print(f"[bold red]warning:[/] {warning}", highlight=False, soft_wrap=True)

    run_command(debug, False, action)
