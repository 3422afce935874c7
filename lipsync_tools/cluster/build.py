"""Build many packages as Ray tasks (CI batch builds on a Ray cluster): ``lipsync build-package DIR --ray``.

The same batch build as :func:`lipsync_tools.pipeline.batch.build_packages`, with one Ray task per video in
place of a local worker process: the same inputs, the same per-video build function, the same
:class:`~lipsync_tools.pipeline.batch.BatchReport`. Ray only moves the work; it never sees package bytes.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..pipeline.batch import BatchReport, build_one, crash_entry, plan_outputs
from ..pipeline.build import AudioEncoderChoice, BuildOptions
from .connect import join_ray, require_ray


def build_folder_on_ray(
    inputs: Sequence[str | Path],
    output_dir: str | Path | None = None,
    *,
    options: BuildOptions | None = None,
    checkpoint: str | Path | None = None,
    audio_encoder: AudioEncoderChoice | None = None,
    force: bool = False,
    debug: bool = False,
    on_done: Callable[[dict[str, Any]], None] | None = None,
    address: str | None = None,
    num_cpus: float = 1,
) -> BatchReport:
    """Build one package per video in ``inputs`` (files or folders), each in its own Ray task.

    Inputs, outputs, ``on_done`` and the report are those of the local batch build
    (:func:`~lipsync_tools.pipeline.batch.build_packages`): outputs go to ``output_dir`` (created if missing)
    or next to each video, a video that fails is recorded with its error entry and the others complete,
    results come back as they finish and the report lists them in input order.

    Every node writes its package straight to that path, so all nodes must see the same paths: run on one
    machine, or put videos and outputs on a filesystem every node mounts at the same place. Relative paths
    are resolved here, on the driver, before they are sent: the report lists them as given, but an error
    message names the resolved path.

    When this process already runs Ray (``ray.init``), that runtime is used as it is and left running.
    Otherwise ``ray.init(address)`` connects for the run and disconnects (stopping a cluster it started) at
    the end: ``address`` None joins the cluster named by ``RAY_ADDRESS`` or the latest ``ray start`` on this
    machine, else starts a local one; any other address (``"auto"``, ``"head:6379"``, ``"ray://head:10001"``)
    joins that cluster. Each task reserves ``num_cpus`` CPUs, so a cluster runs as many builds at once as it
    has CPUs to spare. A task lost with its worker or node is retried by Ray (its default, up to three times)
    before it is recorded as failed with exit code 1, as a crashed local worker is.

    Raises :class:`BackendUnavailableError` when Ray is not installed, and what
    :func:`~lipsync_tools.pipeline.batch.plan_outputs` raises for the inputs.
    """
    require_ray("build-package --ray")
    import ray

    options = options or BuildOptions()
    jobs = plan_outputs(inputs, output_dir)
    # workers on other nodes do not share this process's working directory
    if options.weights_dir is not None:
        options = dataclasses.replace(options, weights_dir=options.weights_dir.resolve())
    if audio_encoder is not None and audio_encoder.path is not None:
        audio_encoder = dataclasses.replace(audio_encoder, path=audio_encoder.path.resolve())
    ckpt = Path(checkpoint).resolve() if checkpoint is not None else None

    started = join_ray(
        address,
        include_dashboard=False,
        log_to_driver=debug,  # build logs would mix into --json on stdout; errors come back in the report
        logging_level=logging.INFO if debug else logging.ERROR,
    )
    try:
        task = ray.remote(build_one).options(num_cpus=num_cpus)
        pending = {
            task.remote(video.resolve(), out.resolve(), options, ckpt, force, debug, audio_encoder): i
            for i, (video, out) in enumerate(jobs)
        }
        ordered: list[dict[str, Any] | None] = [None] * len(jobs)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i = pending.pop(ref)
                video, out = jobs[i]
                try:
                    entry = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the worker died, or build_one raised a bug
                    entry = crash_entry(video, out, getattr(exc, "cause", None) or exc)
                # the paths as the local build reports them (the task was given them resolved)
                entry.update(video=str(video), output=str(out))
                ordered[i] = entry
                if on_done is not None:
                    on_done(entry)
    finally:
        if started:
            ray.shutdown()
    return BatchReport(results=[e for e in ordered if e is not None])
