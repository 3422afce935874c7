"""Reading checkpoints of every model family: safe loading, layouts, detection, strict checks, random weights.

Accepted checkpoint layouts (what ``torch.save`` wrote in the public releases and trainers):

* a bare ``{key: tensor}`` state dict (SyncTalk_2D's and Ultralight's trainers until 2026-05 save
  ``net.state_dict()``; SyncTalk_2D's ``audio_visual_encoder.pth``);
* ``{"state_dict": {key: tensor}, ...}`` (``wav2lip.pth``, ``wav2lip_gan.pth``) or ``{"model": {key: tensor},
  ...}`` (Ultralight's trainer since 2026-05: ``{"epoch", "model", "optimizer"}``); whatever sits beside the
  weights (optimizer state, step counters) is ignored;
* keys may carry the ``module.`` prefix that ``nn.DataParallel`` adds, or the ``_orig_mod.`` prefix of a
  ``torch.compile``-d module; both are stripped;
* Ultralight's 2026-05 key names (``inc.inconv.conv.*``, ``downN.maxpool_conv.double_conv.*``) are mapped to
  the original ones (``inc.inconv.0.conv.*``, ``downN.maxpool_conv.0.double_conv.*``) that SyncTalk_2D, older
  Ultralight checkpoints and :class:`~lipsync_tools.models.unet.UNet` use. Same tensors, same order.

Files are read with ``torch.load(weights_only=True)``, which refuses arbitrary pickled objects; a file that
needs more is refused with a :class:`CheckpointError` unless the caller passes ``allow_pickle=True`` for a
file they trust.

:func:`detect_network` tells the families apart by keys and shapes alone. SyncTalk_2D's ``ave`` and
``hubert`` networks of the same size have identical shapes (their audio branches differ only in a stride),
so for those it returns ``audio_mode=None`` and the caller must say which it is.
"""

from __future__ import annotations

import io
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import nn

from lipsync_tools.errors import CheckpointError, InputNotFoundError, UsageError
from lipsync_tools.models.layers import check_seed, random_init, uninitialised, wav2lip_audio_encoder
from lipsync_tools.models.unet import UNET_FAMILIES, UNet, build_audio_branch
from lipsync_tools.models.wav2lip import Wav2Lip

CheckpointSource = str | os.PathLike[str] | bytes | Mapping[str, Any]

NETWORK_FAMILIES = ("wav2lip", *UNET_FAMILIES)
"""Every family :func:`detect_network` can return."""

_MAX_LISTED = 5  # keys shown per category in an error message; the counts give the rest
_CONTAINER_KEYS = ("state_dict", "model")  # where training checkpoints keep the weights
_KEY_PREFIXES = ("module.", "_orig_mod.")  # nn.DataParallel, torch.compile
# Ultralight's 2026-05 refactor dropped the one-element nn.Sequential around these blocks.
_ULTRALIGHT_2026_KEY = re.compile(r"^(inc\.inconv|down\d+\.maxpool_conv)\.(?=conv\.|double_conv\.)")


_Signatures = list[tuple["NetworkKind", dict[str, tuple[int, ...]]]]  # (network, {key: shape}) pairs


@dataclass(frozen=True)
class NetworkKind:
    """What network a state dict is: its family and, when the shapes tell, its audio mode.

    ``family`` is one of :data:`NETWORK_FAMILIES`. ``audio_mode`` is ``"mel"`` for Wav2Lip, one of the
    family's modes (see :data:`~lipsync_tools.models.unet.UNET_FAMILIES`) for a UNet, or ``None`` when
    several modes share every shape (SyncTalk_2D's ``ave`` and ``hubert``): the caller must then pass it.
    """

    family: str
    audio_mode: str | None

    def __post_init__(self) -> None:
        if self.family not in NETWORK_FAMILIES:
            raise UsageError(f"unknown network family {self.family!r}; known: {', '.join(NETWORK_FAMILIES)}")
        modes = ("mel",) if self.family == "wav2lip" else UNET_FAMILIES[self.family][1]
        if self.audio_mode is not None and self.audio_mode not in modes:
            raise UsageError(
                f"family {self.family} takes audio modes {', '.join(modes)}; got {self.audio_mode!r}"
            )

    def __str__(self) -> str:
        return self.family if self.audio_mode is None else f"{self.family} ({self.audio_mode})"


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
    label = name or source_label(source)
    state = read_state_dict(source, allow_pickle=allow_pickle, name=label)
    model = uninitialised(Wav2Lip)
    check_state_dict(model, state, label)
    # Our own check above already proved keys and shapes agree; strict=True is a second, cheap guard.
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_unet(
    source: CheckpointSource,
    *,
    family: str | None = None,
    audio_mode: str | None = None,
    allow_pickle: bool = False,
    name: str | None = None,
) -> tuple[UNet, NetworkKind]:
    """Build a SyncTalk_2D/Ultralight :class:`UNet` in eval mode from a checkpoint, strictly checked.

    ``source``, ``allow_pickle`` and ``name`` are as for :func:`load_wav2lip`. The family and audio mode are
    detected from the checkpoint (:func:`detect_network`); ``family`` and ``audio_mode``, when given, must
    agree with what was detected. ``audio_mode`` is required when the shapes cannot tell the modes apart
    (SyncTalk_2D's ``ave`` and ``hubert``). Returns the network and its :class:`NetworkKind` (audio mode
    resolved).

    Raises :class:`UsageError` for an unknown family or mode, or a missing ``audio_mode`` that detection
    cannot supply; :class:`InputNotFoundError` for a missing file; :class:`CheckpointError` for an unreadable
    file, a checkpoint of another family or mode than asked for (naming the right one), or a state dict that
    matches no known network (against ``family`` when given, else against the closest one).
    """
    label = name or source_label(source)
    if family == "wav2lip":
        raise UsageError("load_unet loads the UNet families; load a wav2lip checkpoint with load_wav2lip")
    if family is not None and family not in UNET_FAMILIES:
        raise UsageError(f"unknown UNet family {family!r}; known: {', '.join(UNET_FAMILIES)}")
    if family is not None and audio_mode is not None:
        NetworkKind(family, audio_mode)  # raises UsageError for a mode the family does not take
    state = read_state_dict(source, allow_pickle=allow_pickle, name=label)

    signatures = _signatures()
    matches = _exact_matches(state, signatures)
    if not matches:
        if family is None:
            raise _no_match_error(state, label, signatures)
        # Compare against the requested family's closest mode, so the listed differences make sense.
        candidates = [
            (kind, signature)
            for kind, signature in signatures
            if kind.family == family and audio_mode in (None, kind.audio_mode)
        ]
        closest, _ = _closest(state, candidates)
        with torch.device("meta"):
            expected = UNet(family=family, audio_mode=str(closest.audio_mode))
        check_state_dict(expected, state, label)  # raises: no network matched exactly
        raise _no_match_error(state, label, signatures)  # unreachable; keeps the flow explicit
    detected = matches[0].family
    if detected == "wav2lip":
        raise CheckpointError(f"{label} is a wav2lip checkpoint, not a UNet: pass --family wav2lip")
    if family is not None and detected != family:
        raise CheckpointError(f"{label} is a {detected} checkpoint, not {family}: pass --family {detected}")
    modes = [kind.audio_mode for kind in matches if kind.audio_mode is not None]
    if audio_mode is None:
        if len(modes) > 1:
            raise UsageError(
                f"{label} is a {detected} checkpoint whose shapes are the same for {' and '.join(modes)} "
                f"audio features: pass --audio-mode {' or --audio-mode '.join(modes)}"
            )
        audio_mode = modes[0]
    elif audio_mode not in modes:
        raise CheckpointError(
            f"{label} is a {detected} checkpoint for {' or '.join(modes)} audio features, not {audio_mode}: "
            f"pass --audio-mode {modes[0]}"
        )
    model = uninitialised(lambda: UNet(family=detected, audio_mode=str(audio_mode)))
    check_state_dict(model, state, label)
    model.load_state_dict(state, strict=True)
    return model.eval(), NetworkKind(detected, audio_mode)


def read_state_dict(
    source: CheckpointSource,
    *,
    allow_pickle: bool = False,
    name: str | None = None,
) -> dict[str, torch.Tensor]:
    """Read a checkpoint (path, ``.pth`` bytes or loaded mapping) and return its ``{key: tensor}`` state dict.

    Every layout in the module docstring is accepted and normalised (container unwrapped, prefixes
    stripped, Ultralight 2026-05 names mapped to the original ones); the tensors are not checked against
    any network. Raises :class:`InputNotFoundError` for a missing path and :class:`CheckpointError` for
    data that is not a readable checkpoint.
    """
    label = name or source_label(source)
    return extract_state_dict(_read(source, label, allow_pickle), label)


def extract_state_dict(checkpoint: Any, label: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Return the ``{key: tensor}`` state dict of a loaded checkpoint, normalised as :func:`read_state_dict`.

    Raises :class:`CheckpointError` when ``checkpoint`` is not a mapping or holds non-tensor values.
    """
    if isinstance(checkpoint, Mapping):
        for container in _CONTAINER_KEYS:
            if isinstance(checkpoint.get(container), Mapping):
                checkpoint = checkpoint[container]
                break
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
        clean = _canonical_key(str(key))
        if clean in state:
            raise CheckpointError(f"{label}: entries {key!r} and another both name the tensor {clean!r}")
        state[clean] = value
    return state


def _canonical_key(key: str) -> str:
    for prefix in _KEY_PREFIXES:
        key = key.removeprefix(prefix)
    return _ULTRALIGHT_2026_KEY.sub(r"\1.0.", key, count=1)


def detect_network(state: Mapping[str, torch.Tensor], *, label: str = "checkpoint") -> NetworkKind:
    """Tell which network ``state`` (a normalised state dict, see :func:`read_state_dict`) belongs to.

    A state dict is recognised only when its keys and shapes are exactly those of a known network (order
    and values are not looked at). ``audio_mode`` is ``None`` when several modes of the family share every
    shape (SyncTalk_2D's ``ave`` and ``hubert``): pass the mode explicitly then. SyncTalk_2D's 160 ``ave``
    and Ultralight's 160 ``hubert`` differ only in the audio branch's first layer; a 160 checkpoint with an
    8-frame HuBERT or WeNet branch is ``ultralight-160``.

    Raises :class:`CheckpointError` when nothing matches, naming the closest network (by the fraction of
    tensors whose key and shape agree) and its first missing, unexpected and mis-shaped keys, on one line.
    """
    signatures = _signatures()
    matches = _exact_matches(state, signatures)
    if not matches:
        raise _no_match_error(state, label, signatures)
    if len(matches) == 1:
        return matches[0]
    return NetworkKind(matches[0].family, None)


def _signatures() -> _Signatures:
    """``(kind, {key: shape})`` for every known network, built on the meta device (no memory, ~50 ms).

    The UNets of one size share everything but the audio branch, so each size is built once and each
    audio branch on its own.
    """
    with torch.device("meta"):
        signatures: _Signatures = [(NetworkKind("wav2lip", "mel"), _shapes(Wav2Lip().state_dict()))]
        trunks: dict[int, dict[str, tuple[int, ...]]] = {}
        for family, (size, modes, default) in UNET_FAMILIES.items():
            if size not in trunks:
                state = _shapes(UNet(family=family, audio_mode=default).state_dict())
                trunks[size] = {k: v for k, v in state.items() if not k.startswith("audio_model.")}
            for mode in modes:
                branch = _shapes(build_audio_branch(family, mode).state_dict())
                audio = {f"audio_model.{k}": v for k, v in branch.items()}
                signatures.append((NetworkKind(family, mode), {**audio, **trunks[size]}))
    return signatures


def _shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(tensor.shape) for key, tensor in state.items()}


def _exact_matches(state: Mapping[str, torch.Tensor], signatures: _Signatures) -> list[NetworkKind]:
    shapes = _shapes(state)
    return [kind for kind, signature in signatures if signature == shapes]


def _closest(state: Mapping[str, torch.Tensor], signatures: _Signatures) -> tuple[NetworkKind, int]:
    """The network whose tensors agree best with ``state`` (Jaccard index of ``(key, shape)`` pairs), and
    how many of its tensors agree."""
    shapes = _shapes(state)
    best: tuple[float, NetworkKind, int] | None = None
    for kind, signature in signatures:
        same = sum(1 for key, shape in shapes.items() if signature.get(key) == shape)
        score = same / (len(signature) + len(shapes) - same)
        if best is None or score > best[0]:
            best = (score, kind, same)
    if best is None:
        raise UsageError("no candidate networks to compare a checkpoint with")
    return best[1], best[2]


def _no_match_error(
    state: Mapping[str, torch.Tensor], label: str, signatures: _Signatures
) -> CheckpointError:
    if not state:
        return CheckpointError(f"{label} holds no tensors")
    kind, same = _closest(state, signatures)
    if same == 0:
        keys = list(state)
        shown = ", ".join(keys[:_MAX_LISTED]) + (", ..." if len(keys) > _MAX_LISTED else "")
        hint = _guess_kind(state, signatures=signatures)
        return CheckpointError(
            f"{label} matches no known network: none of its {len(state)} tensors has the key and shape of "
            f"a tensor of {', '.join(NETWORK_FAMILIES)} ({shown})" + (f"; {hint}" if hint else "")
        )
    signature = dict(signatures)[kind]
    parts = [
        f"{label} matches no known network ({len(state)} tensors); the closest is {kind} "
        f"with {same} of its {len(signature)} tensors",
        *_differences(signature, _shapes(state)),
    ]
    hint = _guess_kind(state, signatures=signatures)
    if hint:
        parts.append(hint)
    return CheckpointError("; ".join(parts))


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], label: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` unless ``state`` has exactly ``model``'s keys with the same shapes.

    The message lists the first few missing keys, unexpected keys and shape mismatches with their counts,
    and names what the checkpoint looks like when it is recognisably another network.
    """
    expected = _shapes(model.state_dict())
    differences = _differences(expected, _shapes(state))
    if not differences:
        return
    arch = getattr(model, "display_name", getattr(model, "architecture", type(model).__name__))
    parts = [
        f"{label} does not match the {arch} architecture ({len(expected)} tensors expected)",
        *differences,
    ]
    hint = _guess_kind(
        state, _kind_of(model), is_encoder=getattr(model, "architecture", None) == "ave-encoder"
    )
    if hint:
        parts.append(hint)
    raise CheckpointError("; ".join(parts))


def _differences(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]]) -> list[str]:
    """``"N missing: a, b, ..."``, ``"N unexpected: ..."``, ``"N wrong shape: ..."``, for those that occur."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    mismatched = [
        f"{k} {found[k]} (expected {expected[k]})" for k in expected if k in found and found[k] != expected[k]
    ]
    parts = []
    for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
        if items:
            shown = ", ".join(items[:_MAX_LISTED])
            more = f", ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
            parts.append(f"{len(items)} {title}: {shown}{more}")
    return parts


def _kind_of(model: nn.Module) -> NetworkKind | None:
    if isinstance(model, UNet):
        return NetworkKind(model.family, model.audio_mode)
    if isinstance(model, Wav2Lip):
        return NetworkKind("wav2lip", "mel")
    return None


def _guess_kind(
    state: Mapping[str, torch.Tensor],
    target: NetworkKind | None = None,
    *,
    is_encoder: bool = False,
    signatures: _Signatures | None = None,
) -> str | None:
    """Name the network a foreign state dict most likely belongs to, to make the error actionable.

    ``target`` is the network it was checked against (``None``: none, or the AVE encoder when
    ``is_encoder``); a hint that would only name the target again is not given.
    """
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
    with torch.device("meta"):
        encoder_keys = set(wav2lip_audio_encoder().state_dict())
    if keys and keys in (encoder_keys, {f"audio_encoder.{k}" for k in encoder_keys}) and not is_encoder:
        return (
            "this looks like SyncTalk_2D's AVE audio encoder (audio_visual_encoder.pth), "
            "not a lip-sync network; load it with load_ave_encoder"
        )
    matches = _exact_matches(state, _signatures() if signatures is None else signatures)
    if not matches:
        return None
    if target in matches:
        return None
    family = matches[0].family
    if is_encoder:
        return f"this is a {family} lip-sync network checkpoint, not an audio encoder"
    if target is not None and target.family == family:
        modes = " or ".join(str(kind.audio_mode) for kind in matches)
        detected_mode = matches[0].audio_mode
        return f"this is a {family} checkpoint for {modes} audio features: pass --audio-mode {detected_mode}"
    return f"this is a {family} checkpoint: pass --family {family}"


def source_label(source: CheckpointSource) -> str:
    """How error messages name ``source``: the path, ``"<bytes>"`` or ``"<dict>"``."""
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
    # torch's messages go on for several sentences of advice; the first says what is wrong
    return text.splitlines()[0].split(". ")[0] if text else type(exc).__name__


def random_wav2lip(seed: int) -> Wav2Lip:
    """Return a :class:`Wav2Lip` in eval mode with deterministic random weights.

    The same ``seed`` gives bit-identical tensors on every machine (see
    :func:`~lipsync_tools.models.layers.random_init`: NumPy's PCG64, He gains, a smaller gain closing each
    residual branch, randomised batch-norm statistics). Such a model moves pixels in a face-dependent way
    but does not lip-sync; it is meant for demos, tests and benchmarks.

    Raises :class:`UsageError` when ``seed`` is not a non-negative integer.
    """
    check_seed(seed)
    model = uninitialised(Wav2Lip)
    random_init(model, seed)
    return model.eval()


def random_unet(family: str, audio_mode: str, seed: int) -> UNet:
    """Return a :class:`UNet` of ``family`` and ``audio_mode`` in eval mode with deterministic random weights.

    Weights as for :func:`random_wav2lip`; then the output convolution is rescaled per channel (by a power
    of two) and re-biased (to a multiple of 1/64) so that on a synthetic input the pre-sigmoid output has
    mean 0 and a standard deviation between 0.7 and 1.4: without that, random offsets accumulated through
    the network push whole channels into the sigmoid's flat ends. The statistics come from one float64
    forward pass (about 0.2 s for a 160 network, 0.7 s for a 328 one on two CPU cores) and are rounded to
    that coarse grid, so the weights are the same bits on every machine unless a statistic lands within
    ~1e-12 of a grid boundary. Such a model moves pixels but does NOT lip-sync: demos, tests, benchmarks.

    Raises :class:`UsageError` for an unknown family or mode, or a bad ``seed``.
    """
    check_seed(seed)
    if family == "wav2lip":
        raise UsageError("random_unet builds the UNet families; use random_wav2lip for wav2lip")
    model = uninitialised(lambda: UNet(family=family, audio_mode=audio_mode))
    random_init(model, seed)
    _center_random_output(model, seed)
    return model.eval()


_OUTPUT_BIAS_STEP = 64  # re-biased output channels are multiples of 1/64


def _center_random_output(model: UNet, seed: int) -> None:
    """Rescale and re-bias ``model.outc`` so its output is centred with unit spread on a synthetic input."""
    rng = np.random.Generator(np.random.PCG64(seed))
    n = model.input_size
    reference = rng.random((1, 3, n, n))
    masked = reference.copy()
    masked[:, :, 5 : n - 10, 5 : n - 5] = 0.0  # the public hidden rectangle
    image = torch.from_numpy(np.concatenate([reference, masked], axis=1))
    audio = torch.from_numpy(rng.standard_normal((1, *model.audio_shape)))

    captured: list[torch.Tensor] = []
    hook = model.outc.register_forward_hook(lambda _m, _i, out: captured.append(out))
    model.eval().double()  # float32 -> float64 -> float32 is exact
    try:
        with torch.no_grad():
            model(image, audio)
    finally:
        hook.remove()
        model.float()
    pre = captured[0][0].numpy()  # (3, n, n), float64
    conv = model.outc.conv
    assert conv.bias is not None  # OutConv always has a bias
    with torch.no_grad():
        for c in range(pre.shape[0]):
            bias = float(conv.bias[c])
            scale = 2.0 ** round(float(np.log2(1.0 / max(float(pre[c].std()), 1e-6))))
            centred = -scale * (float(pre[c].mean()) - bias)
            conv.weight[c].mul_(scale)  # a power of two: exact in float32
            conv.bias[c] = round(centred * _OUTPUT_BIAS_STEP) / _OUTPUT_BIAS_STEP
