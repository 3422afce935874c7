"""A recorder of what the model is given: wraps every backend the server and ``render`` load.

Used to check that a live session and an offline render feed the network the same audio input for the same
frame (the issue's "exact streaming features"): both paths are patched to wrap the loaded backend, and each
model call's audio rows are appended, in call order, to one list per recorder.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest


class RecordingBackend:
    """Delegates to ``inner``; keeps a copy of each audio row it is given."""

    def __init__(self, inner: Any, rows: list[np.ndarray]) -> None:
        self.inner = inner
        self.rows = rows
        self.name, self.crop_size = inner.name, inner.crop_size
        self.family, self.audio_mode = inner.family, inner.audio_mode

    def infer(self, crops: np.ndarray, audio: np.ndarray) -> np.ndarray:
        self.rows.extend(np.array(row, copy=True) for row in audio)
        return self.inner.infer(crops, audio)


def record_model_inputs(monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    """Patch the model loaders of the server's model store and of ``render``; returns the list of rows."""
    from lipsync_tools import render
    from lipsync_tools.engine import model_loader, model_store

    rows: list[np.ndarray] = []
    original = model_loader.load_model

    def recording_load(*args: Any, **kwargs: Any) -> Any:
        loaded = original(*args, **kwargs)
        return dataclasses.replace(loaded, backend=RecordingBackend(loaded.backend, rows))

    monkeypatch.setattr(model_store, "load_model", recording_load)
    monkeypatch.setattr(render, "load_model", recording_load)
    return rows
