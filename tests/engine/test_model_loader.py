"""Which weights the engine runs: precedence, the random-weights flag, refusals."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from lipsync_tools.engine import RANDOM_WEIGHTS_WARNING, load_inference_backend
from lipsync_tools.errors import CheckpointError, InputNotFoundError, UsageError
from lipsync_tools.models import random_wav2lip


def test_identity():
    backend, info = load_inference_backend("identity", backend="torch")
    assert (info.name, info.source, info.is_random, info.backend) == ("identity", "built-in", False, "torch")
    crops = np.random.default_rng(0).integers(0, 255, (2, 96, 96, 3), dtype=np.uint8)
    assert np.array_equal(backend.infer(crops, np.zeros((2, 1, 80, 16), np.float32)), crops)
    assert info.load_seconds >= 0 and info.warmup_seconds >= 0


@pytest.fixture(scope="module")
def checkpoint_bytes() -> bytes:
    """A public-layout checkpoint ({"state_dict": ...} with DataParallel's module. prefix) as bytes."""
    state = {f"module.{k}": v for k, v in random_wav2lip(3).state_dict().items()}
    buffer = io.BytesIO()
    torch.save({"state_dict": state, "global_step": 1}, buffer)
    return buffer.getvalue()


def test_random_is_flagged_and_beats_an_embedded_checkpoint(checkpoint_bytes: bytes):
    _, info = load_inference_backend("random", seed=5, backend="torch", package_checkpoint=checkpoint_bytes,
                                     warmup_batches=())
    assert (info.name, info.source, info.is_random) == ("random", "seed 5", True)
    assert "NOT lip-sync" in RANDOM_WEIGHTS_WARNING


def test_embedded_checkpoint_is_used_by_default(checkpoint_bytes: bytes, tmp_path: Path):
    _, info = load_inference_backend(None, backend="torch", package_checkpoint=checkpoint_bytes,
                                     package_label="alice.sanders", warmup_batches=())
    assert (info.name, info.source, info.is_random) == ("wav2lip", "embedded in alice.sanders", False)
    path = tmp_path / "w.pth"
    path.write_bytes(checkpoint_bytes)
    _, info = load_inference_backend(None, checkpoint=path, backend="torch",
                                     package_checkpoint=checkpoint_bytes, warmup_batches=())
    assert (info.name, info.source) == ("wav2lip", str(path))  # an explicit file beats the embedded one


def test_refusals(tmp_path: Path):
    with pytest.raises(UsageError, match="unknown model 'gan'"):
        load_inference_backend("gan")
    with pytest.raises(UsageError, match="cannot be combined with --model random"):
        load_inference_backend("random", checkpoint=tmp_path / "w.pth")
    with pytest.raises(UsageError, match=r"no model weights given .* --model random --seed 0"):
        load_inference_backend(None)
    with pytest.raises(UsageError, match="--model wav2lip needs --checkpoint"):
        load_inference_backend("wav2lip")
    with pytest.raises(InputNotFoundError):
        load_inference_backend("wav2lip", checkpoint=tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"nope")
    with pytest.raises(CheckpointError):
        load_inference_backend(None, checkpoint=junk)
    with pytest.raises(UsageError, match="unknown inference backend"):
        load_inference_backend("identity", backend="tensorrt")
