"""Choosing and loading the lip-sync model for the engine: real weights, embedded weights, random, identity.

The family (``wav2lip``, ``synctalk2d-328``, ...) is ``family`` when given, else detected from
``checkpoint``, else the package's (``package_family``), else Wav2Lip. Weights, in this order (documented
in docs/engine.md):

1. ``checkpoint`` given: that file, strictly checked against the family (``model`` must be ``None`` or the
   family's name / ``"wav2lip"``);
2. ``model == "random"``: deterministic random weights of the family from ``seed`` (even if the package
   embeds a checkpoint: that is "told otherwise"). This is NOT lip-sync; callers must say so loudly;
3. ``model == "identity"``: returns the input crop (tests of everything around the model);
4. otherwise: the checkpoint embedded in the package, if there is one;
5. else a :class:`UsageError` saying which option to pass.

Families that take AVE audio also need the AVE encoder: ``audio_encoder`` when given, else the one the
package embeds, else the random seed the package recorded; without any, requests must replay the
package's own audio.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from ..models import (
    DEFAULT_BACKEND,
    BackendOptions,
    InferenceBackend,
    create_backend,
)
from ..models.audio_features import AudioEncoderChoice
from ..models.backends import IdentityNetwork
from ..models.devices import PRECISIONS, parse_device

__all__ = ["PRECISIONS", "AudioEncoderChoice", "LoadedModel", "ModelInfo", "PackageModelHints",
           "RuntimeChoice", "load_inference_backend", "load_model"]
from ..models.families import get_family, load_network, random_network
from .capacity import Capacity, measure_capacity
from .precision import QualityCheck

MODEL_NAMES: tuple[str, ...] = ("random", "wav2lip", "identity")

RANDOM_WEIGHTS_WARNING = (
    "WARNING: the model has RANDOM weights (--model random): its output is NOT lip-sync. Use it for demos, "
    "tests and benchmarks only; pass --checkpoint wav2lip.pth (or a package with an embedded checkpoint) for "
    "real lip-sync."
)

RANDOM_ENCODER_WARNING = (
    "WARNING: the AVE audio encoder has RANDOM weights (--audio-encoder random): the audio features are "
    "NOT speech features and the output does NOT lip-sync. Pass --audio-encoder audio_visual_encoder.pth "
    "for real lip-sync."
)
"""What servers and ``render`` print when :attr:`ModelInfo.is_random` is true."""


NO_ENCODER_WARNING = (
    "WARNING: no AVE audio encoder (the package embeds none and --audio-encoder was not given): new speech "
    "cannot be turned into features, only replay works. Pass --audio-encoder audio_visual_encoder.pth."
)


@dataclass(frozen=True, kw_only=True)
class ModelInfo:
    """Which model the engine runs and what loading it cost.

    ``name``: ``"random"``, ``"wav2lip"`` or ``"identity"``. ``source``: where the weights came from
    (``"seed 0"``, a checkpoint path, ``"embedded in PATH"``, ``"built-in"``). ``backend``: the inference
    backend's name (``"torch"``, ``"onnx"``). ``load_seconds``: weights plus backend construction (ONNX
    export included); ``warmup_seconds``: the first model calls made before serving.
    """

    name: str
    source: str
    is_random: bool
    backend: str
    load_seconds: float
    warmup_seconds: float = 0.0
    family: str = "wav2lip"
    audio_mode: str = "mel"
    audio_encoder: str = "none"  # "none", a path, "embedded in PKG" or "random (seed N)"
    audio_encoder_is_random: bool = False
    weight_bytes: int = 0  # parameters and buffers of the network (and its AVE encoder), float32
    precision: str = "fp32"  # what runs: fp32, int8 or fp16
    precision_requested: str = "fp32"  # what was asked for (int8 falls back to fp32 below the quality gate)
    device: str = "cpu"
    quality: dict[str, Any] | None = None  # int8 against fp32 on the package's held-out frames (QualityCheck)
    notes: tuple[str, ...] = ()  # further warnings of this load (an int8 model refused by the gate, ...)

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name, "source": self.source, "is_random": self.is_random, "backend": self.backend,
            "family": self.family, "audio_mode": self.audio_mode, "audio_encoder": self.audio_encoder,
            "audio_encoder_is_random": self.audio_encoder_is_random, "weight_bytes": self.weight_bytes,
            "precision": self.precision, "precision_requested": self.precision_requested,
            "device": self.device, "quality": self.quality,
            "load_seconds": round(self.load_seconds, 6), "warmup_seconds": round(self.warmup_seconds, 6),
        }

    @property
    def warnings(self) -> list[str]:
        """The loud warnings a server or render must print for this model."""
        out = [RANDOM_WEIGHTS_WARNING] if self.is_random else []
        if self.audio_encoder_is_random:
            out.append(RANDOM_ENCODER_WARNING)
        if self.audio_mode == "ave" and self.audio_encoder == "none":
            out.append(NO_ENCODER_WARNING)
        elif self.audio_mode in ("hubert", "wenet"):
            out.append(
                f"{self.audio_mode} features cannot be computed here (nothing is downloaded): only requests "
                "that replay a package's own imported audio work"
            )
        return out + [note for note in self.notes if note not in out]


@dataclass(frozen=True, kw_only=True)
class PackageModelHints:
    """What a package says about its model: family, audio mode, embedded checkpoint and AVE encoder."""

    family: str | None = None
    audio_mode: str | None = None
    checkpoint: bytes | None = field(default=None, repr=False)
    audio_encoder: bytes | None = field(default=None, repr=False)
    audio_encoder_seed: int | None = None
    label: str = "the package"
    package: Any | None = field(default=None, repr=False)  # the opened Package: int8 calibrates on its frames

    @classmethod
    def from_package(
        cls,
        package: Any,
        *,
        with_checkpoint: bool = True,
        with_audio_encoder: bool = True,
        label: str | None = None,
    ) -> PackageModelHints:
        """Read the hints of an opened :class:`~lipsync_tools.package.reader.Package`; the embedded checkpoint
        and AVE encoder are read from the file only when asked for."""
        meta = package.manifest.model
        return cls(
            family=package.family,
            audio_mode=package.audio_mode,
            checkpoint=package.read_checkpoint() if with_checkpoint else None,
            audio_encoder=package.read_checkpoint("model/audio_encoder") if with_audio_encoder else None,
            audio_encoder_seed=meta.audio_encoder_seed if meta is not None and meta.audio_encoder == "random"
            else None,
            label=label or str(package.path),
            package=package,
        )

    @classmethod
    def for_weights(
        cls, package: Any, model: str | None, checkpoint: Path | None, label: str
    ) -> PackageModelHints:
        """:meth:`from_package`, reading the embedded checkpoint only when :func:`load_model` will use it
        (no ``checkpoint`` given and ``model`` is ``None`` or ``"wav2lip"``): ``render`` and
        ``models quantize`` choose their weights as a server does."""
        use_embedded = checkpoint is None and model in (None, "wav2lip")
        return cls.from_package(package, with_checkpoint=use_embedded, label=label)


@dataclass(frozen=True, kw_only=True)
class RuntimeChoice:
    """Where and how precisely the model runs (``--device``, ``--precision``, ``--force-precision``).

    ``int8`` is ONNX Runtime static quantization calibrated on the package's own frames and checked against
    fp32 on other frames of it (:mod:`lipsync_tools.engine.precision`): below the quality gate the model
    runs fp32 with a warning unless ``force_precision``. ``fp16`` needs a GPU (``device="cuda[:N]"``).
    """

    precision: str = "fp32"
    device: str = "cpu"
    force_precision: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UsageError(f"precision is {self.precision!r}; expected one of {', '.join(PRECISIONS)}")
        parse_device(self.device)  # UsageError for a malformed device


@dataclass(frozen=True, kw_only=True)
class LoadedModel:
    """The engine's model: the inference backend, what it is, and the AVE encoder if the family needs one."""

    backend: InferenceBackend
    info: ModelInfo
    audio_encoder: Any | None = None
    capacity: Capacity = field(default_factory=Capacity)


def load_inference_backend(
    model: str | None = None,
    checkpoint: Path | None = None,
    seed: int = 0,
    backend: str | None = None,
    package_checkpoint: bytes | None = None,
    cache_dir: Path | None = None,
    *,
    package_label: str = "the package",
    num_threads: int | None = None,
    warmup_batches: tuple[int, ...] = (1,),
) -> tuple[InferenceBackend, ModelInfo]:
    """:func:`load_model` for a Wav2Lip-or-detected model without package hints beyond its checkpoint."""
    loaded = load_model(
        model, checkpoint, seed, backend, cache_dir,
        hints=PackageModelHints(checkpoint=package_checkpoint, label=package_label),
        num_threads=num_threads, warmup_batches=warmup_batches,
    )
    return loaded.backend, loaded.info


def load_model(
    model: str | None = None,
    checkpoint: Path | None = None,
    seed: int = 0,
    backend: str | None = None,
    cache_dir: Path | None = None,
    *,
    family: str | None = None,
    audio_mode: str | None = None,
    audio_encoder: AudioEncoderChoice | None = None,
    hints: PackageModelHints | None = None,
    num_threads: int | None = None,
    warmup_batches: tuple[int, ...] = (1,),
    capacity_batches: tuple[int, ...] = (),
    runtime: RuntimeChoice | None = None,
) -> LoadedModel:
    """Build the model the options ask for; see the module docstring for the precedence.

    ``backend`` defaults to :data:`lipsync_tools.models.DEFAULT_BACKEND` (the faster one by measurement).
    ``cache_dir`` keeps ONNX exports between starts. ``warmup_batches``: batch sizes run once on zeros
    before returning, so the first real frame does not pay for lazy initialisation (empty: no warm-up).
    ``capacity_batches``: batch sizes timed once each after a warm call (``LoadedModel.capacity``; the
    server's admission and session deadlines use it); those sizes need no separate warm-up.
    ``runtime``: device and precision (:class:`RuntimeChoice`; default fp32 on the CPU). int8 needs
    ``hints.package`` (its frames calibrate the model and check it: ``ModelInfo.quality``).

    Raises :class:`UsageError` (unknown model name, conflicting options, no weights at all),
    :class:`~lipsync_tools.errors.InputNotFoundError` / :class:`~lipsync_tools.errors.CheckpointError`
    for a missing or mismatching checkpoint, and
    :class:`~lipsync_tools.errors.BackendUnavailableError` when the backend's runtime is missing.
    """
    hints = hints or PackageModelHints()
    if model is not None and model not in MODEL_NAMES:
        raise UsageError(f"unknown model {model!r}; expected one of: {', '.join(MODEL_NAMES)}")
    if checkpoint is not None and model not in (None, "wav2lip"):
        raise UsageError(
            f"--checkpoint loads a network's weights; it cannot be combined with --model {model}"
        )
    started = time.perf_counter()
    wanted_family = family
    mode_hint = audio_mode
    if wanted_family is None and checkpoint is None and hints.family is not None:
        wanted_family = hints.family
        mode_hint = mode_hint or hints.audio_mode
    if checkpoint is not None:
        net = load_network(checkpoint, family=wanted_family, audio_mode=mode_hint)
        name, source, network = "checkpoint", str(checkpoint), net
    elif model == "random":
        network = random_network(get_family(wanted_family), mode_hint, seed)
        name, source = "random", f"seed {seed}"
    elif model == "identity":
        fam = get_family(wanted_family)
        mode = fam.audio_mode(mode_hint)
        network = None
        name, source = "identity", "built-in"
    elif hints.checkpoint is not None:
        label = f"the checkpoint embedded in {hints.label}"
        network = load_network(hints.checkpoint, family=wanted_family, audio_mode=mode_hint, name=label)
        name, source = "checkpoint", f"embedded in {hints.label}"
    else:
        wanted = "--model wav2lip needs --checkpoint PATH" if model == "wav2lip" else "no model weights given"
        raise UsageError(
            f"{wanted} and {hints.label} embeds no checkpoint: pass --checkpoint PATH (wav2lip.pth, or "
            "the avatar's own SyncTalk_2D/Ultralight checkpoint) for real lip-sync, or --model random "
            "--seed 0 for a demo with random weights (not lip-sync)"
        )
    if network is not None:
        fam, mode, module = network.family, network.audio_mode, network.module
        if name == "checkpoint" and fam.name == "wav2lip":
            name = "wav2lip"
    else:
        module = IdentityNetwork(fam, mode.name)
    encoder, encoder_label, encoder_random = _audio_encoder(mode.name, audio_encoder, hints)
    weight_bytes = _tensor_bytes(module) + (_tensor_bytes(encoder) if encoder is not None else 0)
    chosen = backend or DEFAULT_BACKEND
    choice = runtime or RuntimeChoice()
    options = BackendOptions(num_threads=num_threads, onnx_cache_dir=cache_dir, device=choice.device,
                             precision=choice.precision)
    quality: QualityCheck | None = None
    notes: tuple[str, ...] = ()
    if choice.precision == "int8":
        runtime_backend, quality, notes = _int8_backend(chosen, module, options, fam, mode, encoder, hints,
                                                        choice.force_precision)
    else:
        runtime_backend = create_backend(chosen, module, options, fam)
    loaded = time.perf_counter()
    size = int(runtime_backend.crop_size)
    for batch in warmup_batches:
        if batch in capacity_batches:
            continue  # measure_capacity warms it
        runtime_backend.infer(
            np.zeros((batch, size, size, 3), np.uint8), np.zeros((batch, *mode.network_shape), np.float32)
        )
    capacity = measure_capacity(runtime_backend, capacity_batches)
    warm = time.perf_counter()
    info = ModelInfo(
        name=name, source=source, is_random=name == "random", backend=runtime_backend.name,
        load_seconds=loaded - started, warmup_seconds=warm - loaded, family=fam.name, audio_mode=mode.name,
        audio_encoder=encoder_label, audio_encoder_is_random=encoder_random, weight_bytes=weight_bytes,
        precision=str(getattr(runtime_backend, "precision", "fp32")), precision_requested=choice.precision,
        device=choice.device, quality=quality.to_dict() if quality is not None else None, notes=notes,
    )
    return LoadedModel(backend=runtime_backend, info=info, audio_encoder=encoder, capacity=capacity)


def _int8_backend(
    backend: str, module: Any, options: BackendOptions, family: Any, mode: Any, encoder: Any | None,
    hints: PackageModelHints, force: bool,
) -> tuple[InferenceBackend, QualityCheck, tuple[str, ...]]:
    """The int8 backend calibrated on ``hints.package``'s frames, or fp32 when it fails the quality gate.

    Both are built: the fp32 one is the reference int8 is checked against on held-out frames.
    """
    from dataclasses import replace

    from .precision import compare_outputs, package_samples, split_frames

    package = hints.package
    if package is None:
        raise UsageError(
            "--precision int8 calibrates the model on a package's own crops and audio, and there is no "
            "package to take them from: load one first (lipsync serve PACKAGE ..., render PACKAGE ...)"
        )
    calibration_frames, held_frames = split_frames(package.n_frames)
    calibration = package_samples(package, family, mode, encoder, calibration_frames)
    held = package_samples(package, family, mode, encoder, held_frames)
    fp32 = create_backend(backend, module, replace(options, precision="fp32"), family)
    int8 = create_backend(backend, module, replace(options, calibration=calibration.calibration(family)),
                          family)
    check = compare_outputs(fp32, int8, held)
    if check.passed:
        return int8, check, ()
    shown = f"{check.psnr_db:.1f} dB"
    if force:
        return int8, check, (
            f"WARNING: int8 output departs from fp32 on {hints.label} (PSNR {shown} on {check.frames} "
            f"held-out frames, below {check.threshold_db:g} dB); running int8 anyway (--force-precision)",
        )
    return fp32, check, (
        f"WARNING: int8 output departs from fp32 on {hints.label} (PSNR {shown} on {check.frames} held-out "
        f"frames, below {check.threshold_db:g} dB): serving fp32 instead. Pass --force-precision to run int8 "
        "anyway",
    )


def _tensor_bytes(module: Any) -> int:
    return sum(int(t.numel()) * int(t.element_size()) for t in module.state_dict().values())


def check_family_options(family: str | None, audio_mode: str | None) -> None:
    """Raise :class:`UsageError` for an unknown family or an audio mode the family does not take."""
    get_family(family).audio_mode(audio_mode)


def _audio_encoder(
    mode: str, choice: AudioEncoderChoice | None, hints: PackageModelHints
) -> tuple[Any | None, str, bool]:
    """The AVE encoder (or None), how to describe it, and whether it is random."""
    if mode != "ave":
        if choice is not None:
            raise UsageError(f"--audio-encoder gives AVE features; this model takes {mode} audio")
        return None, "none", False
    if choice is None and hints.audio_encoder is not None:
        choice = AudioEncoderChoice(data=hints.audio_encoder, label=f"embedded in {hints.label}")
    if choice is None and hints.audio_encoder_seed is not None:
        choice = AudioEncoderChoice.parse("random", hints.audio_encoder_seed)
    if choice is None:
        return None, "none", False
    return choice.load(), choice.label, choice.is_random
