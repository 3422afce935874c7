"""Build many packages in parallel worker processes (CI jobs that turn a folder of videos into packages).

One package per video; a failure is recorded and the other videos still complete.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputNotFoundError, LipsyncError, UsageError
from ..models.audio_features import AudioEncoderChoice
from ..package.spec import FILE_SUFFIX
from .build import BuildOptions, build_package

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")


@dataclass
class BatchReport:
    results: list[dict[str, Any]] = field(default_factory=list)  # one summary (ok) or error (not ok) each

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.results if not r["ok"]]

    def summary(self) -> dict[str, Any]:
        return {
            "ok": not self.failed,
            "built": len(self.results) - len(self.failed),
            "failed": len(self.failed),
            "packages": self.results,
        }


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Videos named directly, plus the videos (by suffix) directly inside any folder named, sorted."""
    videos: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
            if not found:
                raise InputNotFoundError(
                    f"folder {item} holds no videos; expected files ending in {', '.join(VIDEO_SUFFIXES)}"
                )
            videos.extend(found)
        else:
            videos.append(item)
    if not videos:
        raise UsageError("no input videos given; expected one or more video files or folders")
    return videos


def output_for(video: Path, output_dir: Path | None) -> Path:
    name = video.with_suffix(FILE_SUFFIX).name
    return (output_dir / name) if output_dir is not None else video.with_suffix(FILE_SUFFIX)


def plan_outputs(inputs: Sequence[str | Path], output_dir: str | Path | None) -> list[tuple[Path, Path]]:
    """The (video, package path) pairs a batch build of ``inputs`` writes, in input order.

    Creates ``output_dir`` when it is missing. Raises :class:`UsageError` when ``output_dir`` is a file or
    two videos would write the same package, and what :func:`expand_inputs` raises.
    """
    videos = expand_inputs(inputs)
    out_dir = Path(output_dir) if output_dir is not None else None
    if out_dir is not None:
        if out_dir.exists() and not out_dir.is_dir():
            raise UsageError(f"-o {out_dir} is a file; with several videos -o must name a folder")
        out_dir.mkdir(parents=True, exist_ok=True)
    names = [output_for(v, out_dir) for v in videos]
    duplicates = {str(n) for n in names if names.count(n) > 1}
    if duplicates:
        raise UsageError(f"several videos would write the same package {sorted(duplicates)[0]}; rename them")
    return list(zip(videos, names, strict=True))


def build_one(
    video: Path,
    output: Path,
    options: BuildOptions,
    checkpoint: Path | None,
    force: bool,
    debug: bool,
    audio_encoder: AudioEncoderChoice | None = None,
) -> dict[str, Any]:
    """Build one package in a worker (a local process or a Ray task): its summary, or its error entry."""
    from .._quiet import quiet_third_party

    quiet_third_party(debug)
    try:
        return build_package(
            video, output, options=options, checkpoint=checkpoint, audio_encoder=audio_encoder, force=force,
            debug=debug,
        ).summary()
    except LipsyncError as exc:
        return error_entry(video, output, exc)


def error_entry(video: Path, output: Path, exc: LipsyncError) -> dict[str, Any]:
    return {
        "video": str(video),
        "output": str(output),
        "ok": False,
        "exit_code": exc.exit_code,
        "error": type(exc).__name__,
        "message": str(exc),
    }


def crash_entry(video: Path, output: Path, exc: BaseException) -> dict[str, Any]:
    """The error entry of a worker that failed outside the build (killed, out of memory, lost node)."""
    return {
        "video": str(video),
        "output": str(output),
        "ok": False,
        "exit_code": 1,
        "error": type(exc).__name__,
        "message": f"worker failed: {exc}",
    }


def build_packages(
    inputs: Sequence[str | Path],
    output_dir: str | Path | None = None,
    *,
    options: BuildOptions | None = None,
    checkpoint: str | Path | None = None,
    audio_encoder: AudioEncoderChoice | None = None,
    force: bool = False,
    workers: int | None = None,
    debug: bool = False,
    on_done: Callable[[dict[str, Any]], None] | None = None,
) -> BatchReport:
    """Build one package per video in ``inputs`` (files or folders) using ``workers`` processes.

    ``checkpoint`` is embedded in every package. Outputs go to ``output_dir`` (created if missing) or next
    to each video. Worker processes are started with "spawn" so native libraries (MediaPipe, torch) start
    clean in each. ``on_done`` is called in the parent as each video finishes.
    """
    options = options or BuildOptions()
    jobs = plan_outputs(inputs, output_dir)
    workers = max(1, min(workers or (os.cpu_count() or 1), len(jobs)))
    ckpt = Path(checkpoint) if checkpoint is not None else None
    ordered: list[dict[str, Any] | None] = [None] * len(jobs)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures: dict[Future[dict[str, Any]], int] = {
            pool.submit(build_one, video, out, options, ckpt, force, debug, audio_encoder): i
            for i, (video, out) in enumerate(jobs)
        }
        for future in as_completed(futures):
            i = futures[future]
            try:
                entry = future.result()
            except Exception as exc:  # a worker crashed (e.g. killed): record it, keep going
                entry = crash_entry(*jobs[i], exc)
            ordered[i] = entry
            if on_done is not None:
                on_done(entry)
    return BatchReport(results=[e for e in ordered if e is not None])
