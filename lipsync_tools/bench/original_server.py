"""A server that runs the benchmark's original path (``lipsync serve --original``, ``bench --compare``).

The original per-frame path lives in :mod:`lipsync_tools.baseline`, which the server package does not import;
this module hands it to a server as :class:`~lipsync_tools.server.components.Components` (same endpoints and
codecs as a package server).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lipsync_tools.errors import UsageError
from lipsync_tools.server.components import Components, StoreLike
from lipsync_tools.server.config import ServerConfig
from lipsync_tools.server.metrics import Metrics


def original_components(audio: Path | None = None) -> Components:
    """The original per-frame path: startup "packages" are raw videos, every stage runs per request.

    ``lipsync serve --original VIDEO`` and ``lipsync bench --compare`` use it (same endpoints and codecs;
    see :mod:`lipsync_tools.baseline.original`). ``audio``: the file replay requests are cut from. One model
    renders every video: ``--model``/``--checkpoint`` of ``--family`` (default Wav2Lip).
    """
    from lipsync_tools.baseline.original import OriginalEngine, OriginalOptions, VideoStore
    from lipsync_tools.engine.model_loader import AudioEncoderChoice, load_model

    def load(config: ServerConfig, store: StoreLike) -> tuple[Any, Any]:
        if config.precision == "int8":
            raise UsageError(
                "--precision int8 is calibrated on a package's own frames; the original path (--original) "
                "serves a raw video and has none: use fp32 there, or serve a package"
            )
        loaded = load_model(
            config.model, config.checkpoint, config.seed, config.backend, config.onnx_cache_dir,
            family=config.family, audio_mode=config.audio_mode,
            audio_encoder=AudioEncoderChoice.parse(config.audio_encoder, config.seed),
            warmup_batches=tuple(sorted({1, config.max_batch or 1})),  # it renders one frame per call
            runtime=config.runtime(),
        )
        return loaded, loaded.info

    def make_engine(store: StoreLike, loaded: Any, config: ServerConfig, metrics: Metrics) -> Any:
        options = OriginalOptions(jpeg_quality=config.jpeg_quality, silence_dbfs=config.silence_dbfs)
        return OriginalEngine(store, loaded.backend, options, metrics,  # type: ignore[arg-type]
                              audio_encoder=loaded.audio_encoder)

    return Components(make_store=lambda: VideoStore(audio=audio), load_model=load, make_engine=make_engine)

__all__ = ["original_components"]
