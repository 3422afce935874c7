"""Loading Wav2Lip weights: public checkpoints (strictly checked) and deterministic random weights.

Accepted checkpoint layouts (what ``torch.save`` wrote in the public release and in common fine-tunes):

* ``{"state_dict": {key: tensor}, ...}`` (``wav2lip.pth``, ``wav2lip_gan.pth``; the optimizer state and
  step counters beside ``state_dict`` are ignored), or a bare ``{key: tensor}`` mapping;
* keys may carry the ``module.`` prefix that ``nn.DataParallel`` adds; it is stripped.

Files are read with ``torch.load(weights_only=True)``, which refuses arbitrary pickled objects; a file that
needs more is refused with a :class:`CheckpointError` unless the caller passes ``allow_pickle=True`` for a
file they trust.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import nn

from lipsync_tools.errors import CheckpointError, InputNotFoundError, UsageError
from lipsync_tools.models.wav2lip import ConvBlock, Wav2Lip

CheckpointSource = str | os.PathLike[str] | bytes | Mapping[str, Any]

_MAX_LISTED = 5  # keys shown per category in an error message; the counts give the rest


def load_wav2lip(
    source: CheckpointSource,
    *,
    allow_pickle: bool = False,
    name: str | None = None,
) -> Wav2Lip:
    """Build a :class:`Wav2Lip` in eval mode from a checkpoint, checking every key and shape first.

    ``source`` is a file path, the raw bytes of a ``.pth`` file (e.g. a checkpoint embedded in an avatar
    package), or an already-loaded checkpoint mapping. ``name`` is how error messages refer to the source
    (defaults to the path, or ``"<bytes>"``/``"<dict>"``). ``allow_pickle=True`` falls back to a full
    unpickling load; only use it for files you trust.

    Raises :class:`InputNotFoundError` when the path does not exist, and :class:`CheckpointError` when the
    data is not a readable checkpoint or its state dict does not match the architecture (missing keys,
    unexpected keys, shape mismatches, all listed in one message).
    """
    label = name or _label(source)
    checkpoint = _read(source, label, allow_pickle)
    state = extract_state_dict(checkpoint, label)
    model = Wav2Lip()
    check_state_dict(model, state, label)
    # Our own check above already proved keys and shapes agree; strict=True is a second, cheap guard.
    model.load_state_dict(state, strict=True)
    return model.eval()


def extract_state_dict(checkpoint: Any, label: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Return the ``{key: tensor}`` state dict of a loaded checkpoint, ``module.`` prefixes stripped.

    Raises :class:`CheckpointError` when ``checkpoint`` is not a mapping or holds non-tensor values.
    """
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(
            f"{label}: expected a dict of tensors (or a dict with a 'state_dict' entry), "
            f"found {type(checkpoint).__name__}"
        )
    state: dict[str, torch.Tensor] = {}
    for key, value in checkpoint.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{label}: entry {key!r} is a {type(value).__name__}, expected a tensor; "
                "is this a training checkpoint without a 'state_dict' entry?"
            )
        state[key.removeprefix("module.")] = value
    return state


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], label: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` unless ``state`` has exactly ``model``'s keys with the same shapes.

    The message lists the first few missing keys, unexpected keys and shape mismatches with their counts,
    and names what the checkpoint looks like when it is recognisably another network.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if not (missing or unexpected or mismatched):
        return
    arch = getattr(model, "architecture", type(model).__name__)
    parts = [f"{label} does not match the {arch} architecture ({len(expected)} tensors expected)"]
    for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
        if items:
            shown = ", ".join(items[:_MAX_LISTED])
            more = f", ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
            parts.append(f"{len(items)} {title}: {shown}{more}")
    hint = _guess_kind(state)
    if hint:
        parts.append(hint)
    raise CheckpointError("; ".join(parts))


def _guess_kind(state: Mapping[str, torch.Tensor]) -> str | None:
    """Name the network a foreign state dict most likely belongs to, to make the error actionable."""
    keys = set(state)
    if any(k.startswith("binary_pred.") for k in keys):
        return (
            "this looks like the Wav2Lip visual-quality discriminator (disc checkpoint); "
            "use the generator checkpoint wav2lip.pth or wav2lip_gan.pth"
        )
    if any(k.startswith("face_encoder.") for k in keys) and not any(
        k.startswith("face_decoder_blocks.") for k in keys
    ):
        return (
            "this looks like a SyncNet (lip-sync expert) checkpoint; "
            "use the generator checkpoint wav2lip.pth or wav2lip_gan.pth"
        )
    first = state.get("face_encoder_blocks.0.0.conv_block.0.weight")
    if first is not None and tuple(first.shape) != (16, 6, 7, 7):
        return (
            f"its first face layer has shape {tuple(first.shape)}, not (16, 6, 7, 7): "
            "this looks like a modified Wav2Lip (e.g. a higher-resolution variant), which is not supported"
        )
    return None


def _label(source: CheckpointSource) -> str:
    if isinstance(source, bytes):
        return "<bytes>"
    if isinstance(source, Mapping):
        return "<dict>"
    return str(source)


def _read(source: CheckpointSource, label: str, allow_pickle: bool) -> Any:
    if isinstance(source, Mapping):
        return source
    if isinstance(source, bytes):
        return _torch_load(io.BytesIO(source), label, allow_pickle)
    path = Path(source)
    if not path.is_file():
        raise InputNotFoundError(f"checkpoint {label} does not exist (or is not a file)")
    with path.open("rb") as f:
        return _torch_load(f, label, allow_pickle)


# torch.save writes a zip archive since PyTorch 1.6; older releases (wav2lip.pth is one) wrote a raw pickle
# stream, which starts with the PROTO opcode 0x80.
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"


def _torch_load(f: IO[bytes], label: str, allow_pickle: bool) -> Any:
    head = f.read(4)
    f.seek(0)
    if not (head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_PROTO)):
        raise CheckpointError(
            f"{label} is not a PyTorch checkpoint: it starts with {head!r}, expected a zip archive or a "
            "pickle stream as written by torch.save"
        )
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not allow_pickle:
            # torch's message is long; its "WeightsUnpickler error:" line names the offending object.
            lines = [ln.strip() for ln in str(exc).splitlines() if "WeightsUnpickler error" in ln]
            detail = lines[0].split(". ")[0] if lines else str(exc).splitlines()[0]
            raise CheckpointError(
                f"{label} holds pickled objects other than tensors and plain containers ({detail}); "
                "weights_only loading refuses them. Re-save it as {'state_dict': model.state_dict()} or, "
                "for a file you trust, pass allow_pickle=True"
            ) from exc
    except Exception as exc:  # torch raises RuntimeError, EOFError, zipfile errors... for broken files
        raise CheckpointError(f"{label} is not a readable PyTorch checkpoint: {_first_line(exc)}") from exc
    f.seek(0)
    try:
        return torch.load(f, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"{label} is not a readable PyTorch checkpoint: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def random_wav2lip(seed: int) -> Wav2Lip:
    """Return a :class:`Wav2Lip` in eval mode with deterministic random weights.

    The same ``seed`` gives bit-identical tensors on every machine: values come from NumPy's PCG64 stream
    (uniform doubles, scaled in float64, then rounded to float32), not from torch's RNG, whose output
    depends on the CPU's vector path. Batch-norm running statistics are randomised too, so the output is
    not trivially flat. Such a model moves pixels in a face-dependent way but does not lip-sync; it is
    meant for demos, tests and benchmarks.

    Raises :class:`UsageError` when ``seed`` is not a non-negative integer.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UsageError(f"random model seed must be a non-negative integer, got {seed!r}")
    rng = np.random.Generator(np.random.PCG64(seed))
    model = Wav2Lip()

    def uniform(shape: torch.Size | int, low: float, high: float) -> torch.Tensor:
        values = low + (high - low) * rng.random(shape)
        return torch.from_numpy(values.astype(np.float32))

    # Residual branches get a smaller gain so that activations do not grow block after block when the batch
    # norms (random running statistics, no real normalisation) cannot rein them in.
    gains: dict[str, float] = {}
    for name, module in model.named_modules():
        if isinstance(module, ConvBlock):
            gains[f"{name}.conv_block.0"] = _RESIDUAL_GAIN if module.residual else _RELU_GAIN

    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                kh, kw = module.kernel_size
                fan_in = module.in_channels * kh * kw
                if isinstance(module, nn.ConvTranspose2d):
                    fan_in //= module.stride[0] * module.stride[1]  # each output sees 1/stride² of the taps
                bound = gains.get(name, 1.0) * float(np.sqrt(3.0 / fan_in))
                module.weight.copy_(uniform(module.weight.shape, -bound, bound))
                if module.bias is not None:
                    module.bias.copy_(uniform(module.bias.shape, -0.1, 0.1))
            elif isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(uniform(n, 0.8, 1.2))
                module.bias.copy_(uniform(n, -0.1, 0.1))
                assert module.running_mean is not None and module.running_var is not None  # affine BN
                module.running_mean.copy_(uniform(n, -0.1, 0.1))
                module.running_var.copy_(uniform(n, 0.5, 1.5))
    return model.eval()


_RELU_GAIN = float(np.sqrt(2.0))  # He initialisation for layers followed by ReLU
_RESIDUAL_GAIN = 0.5
