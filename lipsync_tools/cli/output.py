"""Terminal output for the CLI: Rich progress bars on a terminal, nothing in CI or when piped."""

from __future__ import annotations

import json
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

stderr = Console(stderr=True, highlight=False)


class InferenceBackendName(StrEnum):
    """``--backend`` of ``serve``, ``render`` and ``bench``: the inference runtime."""

    torch = "torch"
    onnx = "onnx"


class ModelFamilyName(StrEnum):
    """``--family``: the registered model families (``models.families``; a test keeps them equal)."""

    wav2lip = "wav2lip"
    synctalk2d_328 = "synctalk2d-328"
    synctalk2d_160 = "synctalk2d-160"
    ultralight_160 = "ultralight-160"


class AudioModeName(StrEnum):
    """``--audio-mode``: the audio feature a family's network takes."""

    mel = "mel"
    ave = "ave"
    hubert = "hubert"
    wenet = "wenet"


class BlendName(StrEnum):
    """``--blend``: feathered blend mask, or the hard paste of SyncTalk_2D's own scripts."""

    feather = "feather"
    hard = "hard"


class PrecisionName(StrEnum):
    """``--precision``: fp32, int8 (ONNX Runtime, calibrated on the package) or fp16 (GPU)."""

    fp32 = "fp32"
    int8 = "int8"
    fp16 = "fp16"


PrecisionOpt = Annotated[
    PrecisionName,
    typer.Option(
        "--precision",
        help="Model precision: fp32; int8 (ONNX Runtime static quantization calibrated on the package's own "
        "crops and audio, cached; served only if its output stays within 30 dB PSNR of fp32); fp16 (GPU).",
    ),
]
DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device",
        help="Where the model runs: cpu, cuda or cuda:N (torch on CUDA; ONNX Runtime's TensorRT/CUDA "
        "providers when installed: pip install lipsync-tools[gpu]).",
    ),
]
ForcePrecisionOpt = Annotated[
    bool,
    typer.Option(
        "--force-precision",
        help="Run int8 even when its output departs from fp32 by more than the quality gate (PSNR < 30 dB).",
    ),
]
FamilyOpt = Annotated[
    ModelFamilyName | None,
    typer.Option(
        "--family",
        help="Model family: wav2lip, synctalk2d-328, synctalk2d-160, ultralight-160 (default: detected from "
        "the checkpoint or the package, else wav2lip).",
    ),
]
AudioModeOpt = Annotated[
    AudioModeName | None,
    typer.Option(
        "--audio-mode",
        help="Audio feature of the family's network (SyncTalk_2D: ave (default), hubert, wenet; Ultralight: "
        "hubert (default), wenet). SyncTalk_2D's ave and hubert checkpoints look alike: say which.",
    ),
]
AudioEncoderOpt = Annotated[
    str | None,
    typer.Option(
        "--audio-encoder",
        help="AVE audio encoder for SyncTalk_2D families: a checkpoint (audio_visual_encoder.pth), or "
        "'random' for deterministic random weights (NOT lip-sync). Default: the package's.",
        show_default=False,
    ),
]
BlendOpt = Annotated[
    BlendName,
    typer.Option("--blend", help="feather: blend with the package's feathered mask; hard: paste the crop."),
]


def optional_value(value: StrEnum | None) -> str | None:
    return value.value if value is not None else None


def check_audio_encoder_path(value: str | None) -> None:
    """Refuse early an --audio-encoder path that does not exist."""
    if value is not None and value != "random" and not Path(value).is_file():
        from ..errors import InputNotFoundError

        raise InputNotFoundError(
            f"audio encoder {value} does not exist; pass the path of SyncTalk_2D's audio_visual_encoder.pth "
            "or --audio-encoder random"
        )


def interactive(json_output: bool, quiet: bool) -> bool:
    """Progress bars only for a person at a terminal: not with --json/--quiet, not in CI, not when piped."""
    return not (json_output or quiet) and sys.stderr.isatty() and not os.environ.get("CI")


class RichProgress:
    """A :class:`lipsync_tools.progress.Progress` drawing one Rich bar per stage."""

    def __init__(self) -> None:
        self._progress = Progress(
            TextColumn("{task.description:<24}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=stderr,
            transient=False,
        )
        self._task: Any = None

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def start(self, stage: str, total: int | None) -> None:
        self._task = self._progress.add_task(stage, total=total)

    def advance(self, steps: int = 1) -> None:
        if self._task is not None:
            self._progress.advance(self._task, steps)

    def finish(self) -> None:
        if self._task is not None:
            task = self._progress.tasks[-1]
            self._progress.update(self._task, total=task.completed)
        self._task = None


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def error_line(message: str) -> None:
    """One line on stderr, no markup interpretation (messages may contain brackets)."""
    line = Text("error: ", style="bold red")
    line.append(message)
    stderr.print(line, soft_wrap=True)
