"""Many models in one engine: each package is served by its own model, models are shared by content.

Which model serves a package (documented in docs/engine.md, *Models*):

1. a catalog entry's ``checkpoint`` (a model kept outside the package) serves that package;
2. ``--model random`` / ``identity``: random weights (or the identity network) of the package's own family,
   even over an embedded checkpoint (a demo says so); one model per (family, audio mode);
3. the package's embedded checkpoint, identified by the SHA-256 its manifest records: packages embedding the
   same checkpoint share one loaded model;
4. ``--checkpoint PATH``, the server's default: it serves the packages of its family that embed none;
5. a package that none of these covers is refused when it is loaded (``bad_package``), naming what to pass.

AVE families also need an AVE encoder (``--audio-encoder``, else the package's embedded one, else the random
seed the package recorded); it is part of the model's identity, so two packages share a model only when
network *and* encoder agree. Models load on first use, one load per model however many callers wait for it,
in the calling thread (the engine calls it from a worker thread). At most ``max_models`` stay loaded: when
one more is needed the least recently used model that no package in the store needs is unloaded first.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError, PackageFormatError, UsageError
from ..models import InferenceBackend
from ..package.reader import Package
from .capacity import Capacity
from .features import FeatureComputer
from .model_loader import (
    AudioEncoderChoice,
    LoadedModel,
    ModelInfo,
    PackageModelHints,
    RuntimeChoice,
    load_model,
)


@dataclass(frozen=True, kw_only=True)
class ModelDefaults:
    """The server's model options (``lipsync serve``): see the module docstring for how they apply.

    ``model``: ``None``/``"wav2lip"`` (checkpoints), ``"random"`` or ``"identity"``; ``checkpoint``: a file
    that serves every package of its family (``family``, when given, must be the checkpoint's); ``seed``:
    of random weights; ``backend``/``cache_dir``: the inference runtime and ONNX cache; ``audio_encoder``:
    AVE families' encoder (path or ``"random"``); ``use_package_checkpoint``: whether embedded checkpoints
    may be used; ``max_models``: most models loaded at once; ``warmup_batches``: batch sizes each model
    runs once when loaded; ``capacity_batches``: batch sizes timed when a model loads (its
    :class:`~lipsync_tools.engine.capacity.Capacity`, for admission and session deadlines); ``runtime``:
    device and precision of every model (int8 is calibrated on the package whose request loads the model).
    """

    model: str | None = None
    checkpoint: Path | None = None
    family: str | None = None
    seed: int = 0
    backend: str | None = None
    cache_dir: Path | None = None
    audio_encoder: str | None = None
    use_package_checkpoint: bool = True
    max_models: int = 8
    warmup_batches: tuple[int, ...] = (1,)
    capacity_batches: tuple[int, ...] = ()
    runtime: RuntimeChoice | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.max_models <= 1024:
            raise UsageError(f"max_models is {self.max_models}; expected 1..1024")


@dataclass(eq=False)
class ServedModel:
    """One loaded model and what the engine keeps beside it (feature computer, batch buffers, counters)."""

    key: str
    loaded: LoadedModel
    features: FeatureComputer
    load_seconds: float
    last_used: float = field(default_factory=time.monotonic)
    frames: int = 0
    batches: int = 0
    inference_seconds: float = 0.0
    _buffers: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    @property
    def backend(self) -> InferenceBackend:
        return self.loaded.backend

    @property
    def info(self) -> ModelInfo:
        return self.loaded.info

    @property
    def capacity(self) -> Capacity:
        """Seconds per model call by batch size (measured at load, updated by every batch served)."""
        return self.loaded.capacity

    def buffers(self, max_batch: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch input buffers (crops, audio), allocated once per model and reused by every call."""
        if self._buffers is None or self._buffers[0].shape[0] < max_batch:
            s = self.backend.crop_size
            self._buffers = (
                np.empty((max_batch, s, s, 3), np.uint8),
                np.empty((max_batch, *self.backend.audio_mode.network_shape), np.float32),
            )
        return self._buffers

    def to_dict(self, packages: list[str]) -> dict[str, Any]:
        return {
            "key": self.key, **self.info.to_dict(), "packages": sorted(packages), "frames": self.frames,
            "batches": self.batches, "inference_seconds": round(self.inference_seconds, 6),
            "capacity": self.capacity.to_dict(),
            "idle_seconds": round(time.monotonic() - self.last_used, 3),
        }


@dataclass(frozen=True)
class _Recipe:
    key: str
    checkpoint: Path | None
    model: str | None


class ModelStore:
    """Models by key, loaded on demand and shared by content; safe to use from threads."""

    def __init__(self, defaults: ModelDefaults | None = None) -> None:
        self.defaults = defaults or ModelDefaults()
        self._models: dict[str, ServedModel] = {}
        self._by_package: dict[str, str] = {}  # package id -> model key
        self._recipes: dict[str, _Recipe] = {}  # package id -> how to load its model
        self._external: dict[str, Path] = {}  # package id -> a checkpoint kept outside the package
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self.loads = 0
        self.evictions = 0
        self._checkpoint_family: str | None = None
        self._checkpoint_key: str | None = None
        if self.defaults.checkpoint is not None:
            from ..models import detect_network, read_state_dict

            path = self.defaults.checkpoint
            self._checkpoint_family = detect_network(read_state_dict(path), label=str(path)).family
            self._checkpoint_key = f"sha256:{_file_sha256(path)}"
            wanted = self.defaults.family
            if wanted is not None and wanted != self._checkpoint_family:
                raise CheckpointError(
                    f"{path} is a {self._checkpoint_family} checkpoint, not {wanted}: pass --family "
                    f"{self._checkpoint_family} (or leave --family out to detect it)"
                )

    @classmethod
    def fixed(cls, loaded: LoadedModel) -> ModelStore:
        """A store holding one already-loaded model that serves every package of its family (render,
        tests, the original path)."""
        store = cls()
        key = f"fixed:{loaded.backend.family.name}:{loaded.backend.audio_mode.name}"
        store._models[key] = ServedModel(
            key=key, loaded=loaded, features=_features(loaded), load_seconds=loaded.info.load_seconds
        )
        store._fixed = key
        return store

    _fixed: str | None = None

    # -- which model serves a package ----------------------------------------------------------------
    def register(self, package_id: str, package: Package) -> str:
        """Decide (without loading) which model serves ``package``; returns its key.

        Raises :class:`PackageFormatError` when no model can serve it (its family's checkpoint is not
        given and it embeds none), so a run-time load is refused with ``bad_package``.
        """
        recipe = self._recipe(package, self._external.get(package_id))
        with self._lock:
            self._recipes[package_id] = recipe
            self._by_package[package_id] = recipe.key
        return recipe.key

    def set_checkpoint(self, package_id: str, checkpoint: Path) -> None:
        """Serve ``package_id`` (registered next) with ``checkpoint``, a file kept outside the package (a
        catalog entry's ``checkpoint``); it must be of the package's family."""
        with self._lock:
            self._external[package_id] = checkpoint

    def forget(self, package_id: str) -> None:
        """The package was unloaded: its model may now be evicted when room is needed."""
        with self._lock:
            self._external.pop(package_id, None)
            self._recipes.pop(package_id, None)
            self._by_package.pop(package_id, None)

    def key_of(self, package_id: str) -> str | None:
        """The key of the model serving ``package_id`` (``None`` before it was registered)."""
        return self._by_package.get(package_id)

    def _recipe(self, package: Package, external: Path | None = None) -> _Recipe:
        d = self.defaults
        family, mode = package.family, package.audio_mode
        from ..models import get_family

        try:
            takes = get_family(family).crop_size
        except UsageError as exc:
            raise PackageFormatError(f"{package.path}: manifest model.family: {exc}") from None
        if package.crop_size != takes:
            raise PackageFormatError(
                f"{package.path}: dataset 'crops' holds {package.crop_size}-pixel crops but the {family} "
                f"network takes {takes}; rebuild the package for it (lipsync build-package --family {family})"
            )
        if self._fixed is not None:
            served = self._models[self._fixed]
            if (family, mode) != (served.backend.family.name, served.backend.audio_mode.name):
                raise PackageFormatError(
                    f"{package.path}: built for {family} with {mode} audio, but this engine runs "
                    f"{served.backend.family.name} with {served.backend.audio_mode.name} audio"
                )
            return _Recipe(self._fixed, None, None)
        encoder = self._encoder_key(package)
        if external is not None:
            from ..models import detect_network, read_state_dict

            found = detect_network(read_state_dict(external), label=str(external)).family
            if found != family:
                raise PackageFormatError(
                    f"{external} is a {found} checkpoint but {package.path} is a {family} package"
                )
            return _Recipe(f"sha256:{_file_sha256(external)}{encoder}", external, None)
        if d.model in ("random", "identity"):
            seed = f":seed{d.seed}" if d.model == "random" else ""
            return _Recipe(f"{d.model}:{family}:{mode}{seed}{encoder}", None, d.model)
        embedded = package.manifest.datasets.get("model/checkpoint")
        if embedded is not None and d.use_package_checkpoint:
            return _Recipe(f"sha256:{embedded.sha256}{encoder}", None, None)
        if d.checkpoint is not None and self._checkpoint_family == family:
            return _Recipe(f"{self._checkpoint_key}{encoder}", d.checkpoint, None)
        given = ""
        if d.checkpoint is not None:
            given = f"; --checkpoint is a {self._checkpoint_family} checkpoint"
        raise PackageFormatError(
            f"{package.path}: a {family} package that embeds no checkpoint, and this server has no {family} "
            f"model{given}: start it with --checkpoint PATH of that family, or --model random (not lip-sync)"
        )

    def _encoder_key(self, package: Package) -> str:
        if package.audio_mode != "ave":
            return ""
        if self.defaults.audio_encoder == "random":
            return f"+ave:random{self.defaults.seed}"
        if self.defaults.audio_encoder is not None:
            return f"+ave:{self.defaults.audio_encoder}"
        embedded = package.manifest.datasets.get("model/audio_encoder")
        if embedded is not None:
            return f"+ave:sha256:{embedded.sha256}"
        meta = package.manifest.model
        if meta is not None and meta.audio_encoder == "random":
            return f"+ave:random{meta.audio_encoder_seed}"
        return "+ave:none"

    # -- loading ---------------------------------------------------------------------------------------
    def ensure(self, package_id: str, package: Package) -> ServedModel:
        """The model serving ``package_id``, loaded now if it is not (blocking: call from a worker thread).

        Concurrent callers for one model share one load. Raises what the loader raises
        (:class:`~lipsync_tools.errors.CheckpointError`, ...) and :class:`PackageFormatError` (see
        :meth:`register`).
        """
        key = self.key_of(package_id) or self.register(package_id, package)
        served = self._models.get(key)
        if served is None:
            with self._lock:
                key_lock = self._key_locks.setdefault(key, threading.Lock())
            with key_lock:
                served = self._models.get(key)
                if served is None:
                    served = self._load(key, self._recipes.get(package_id) or self._recipe(package), package)
        served.last_used = time.monotonic()
        return served

    def _load(self, key: str, recipe: _Recipe, package: Package) -> ServedModel:
        d = self.defaults
        with self._lock:
            self._make_room()  # before the load: a model that cannot be kept is not loaded at all
        # The package's bytes are read here, once per model load: the embedded checkpoint only when it is
        # the weights, the embedded AVE encoder only when no --audio-encoder replaces it.
        embedded_weights = recipe.model is None and recipe.checkpoint is None
        hints = PackageModelHints.from_package(
            package, label=str(package.path), with_checkpoint=embedded_weights,
            with_audio_encoder=d.audio_encoder is None,
        )
        encoder = AudioEncoderChoice.parse(d.audio_encoder, d.seed) if package.audio_mode == "ave" else None
        started = time.perf_counter()
        loaded = load_model(
            recipe.model, recipe.checkpoint, d.seed, d.backend, d.cache_dir, family=package.family,
            audio_mode=package.audio_mode, audio_encoder=encoder, hints=hints,
            warmup_batches=d.warmup_batches, capacity_batches=d.capacity_batches, runtime=d.runtime,
        )
        served = ServedModel(
            key=key, loaded=loaded, features=_features(loaded), load_seconds=time.perf_counter() - started
        )
        with self._lock:
            self._models[key] = served
            self.loads += 1
        return served

    def _make_room(self) -> None:
        """Unload least recently used models nobody registered needs until one more fits (lock held)."""
        while len(self._models) >= self.defaults.max_models:
            needed = set(self._by_package.values())
            idle = [m for m in self._models.values() if m.key not in needed]
            if not idle:
                raise PackageFormatError(
                    f"{len(self._models)} models are loaded and every one serves a loaded package "
                    f"(--max-models {self.defaults.max_models}); unload a package or raise --max-models"
                )
            victim = min(idle, key=lambda m: m.last_used)
            del self._models[victim.key]
            self.evictions += 1

    # -- memory ----------------------------------------------------------------------------------------
    def weight_bytes(self) -> int:
        """The loaded models' weights (network and AVE encoder, float32): what the budget counts for them."""
        return sum(m.info.weight_bytes for m in list(self._models.values()))

    def need_bytes(self, package_id: str, package: Package) -> int:
        """What serving ``package`` would add: 0 when its model is loaded, else an estimate of its weights
        (the checkpoint's size, or the family's parameter count for random weights)."""
        key = self.key_of(package_id)
        if key is not None and key in self._models:
            return 0
        recipe = self._recipes.get(package_id)
        embedded = package.manifest.datasets.get("model/checkpoint")
        if recipe is not None and recipe.checkpoint is not None:
            return recipe.checkpoint.stat().st_size
        if recipe is not None and recipe.model is None and embedded is not None:
            return int(embedded.shape[0])
        return _FAMILY_WEIGHT_BYTES.get(package.family, 0)

    def free_idle(self) -> int:
        """Unload every model no registered package needs; returns the weight bytes freed."""
        with self._lock:
            needed = set(self._by_package.values())
            idle = [m for m in self._models.values() if m.key not in needed and m.key != self._fixed]
            for m in idle:
                del self._models[m.key]
                self.evictions += 1
            return sum(m.info.weight_bytes for m in idle)

    # -- views -----------------------------------------------------------------------------------------
    def summary(self) -> ModelsSummary:
        """What the server reports at startup: every loaded model (see :class:`ModelsSummary`)."""
        return ModelsSummary([m.info for m in self.loaded()], self.infos())

    def get(self, key: str) -> ServedModel | None:
        return self._models.get(key)

    def loaded(self) -> list[ServedModel]:
        return list(self._models.values())

    def infos(self) -> list[dict[str, Any]]:
        """Every loaded model: what it is, which packages use it, its counters (``GET /v1/models``)."""
        with self._lock:
            users: dict[str, list[str]] = {}
            for package_id, key in self._by_package.items():
                users.setdefault(key, []).append(package_id)
            return [m.to_dict(users.get(m.key, [])) for m in self._models.values()]


@dataclass(frozen=True)
class ModelsSummary:
    """The startup report's ``model``: the first loaded model's facts (one model: exactly its
    :class:`ModelInfo`), ``models`` listing all of them, and every model's warnings."""

    infos: list[ModelInfo]
    models: list[dict[str, Any]]

    @property
    def name(self) -> str:
        if len(self.infos) == 1:
            return self.infos[0].name
        return f"{len(self.infos)} models" if self.infos else "none loaded yet"

    @property
    def is_random(self) -> bool:
        return any(info.is_random for info in self.infos)

    @property
    def load_seconds(self) -> float:
        return sum(info.load_seconds for info in self.infos)

    @property
    def warnings(self) -> list[str]:
        seen: list[str] = []
        for info in self.infos:
            seen += [w for w in info.warnings if w not in seen]
        return seen

    def to_dict(self) -> dict[str, Any]:
        first = self.infos[0].to_dict() if self.infos else {}
        return {**first, "name": self.name, "is_random": self.is_random, "models": self.models}


_FAMILY_WEIGHT_BYTES = {  # float32 parameters and buffers, measured on our networks (tests pin the counts)
    "wav2lip": 36_298_035 * 4,
    "synctalk2d-328": 12_186_935 * 4,
    "synctalk2d-160": 12_163_591 * 4,
    "ultralight-160": 12_159_591 * 4,
}


def _features(loaded: LoadedModel) -> FeatureComputer:
    return FeatureComputer(loaded.backend.family, loaded.backend.audio_mode, loaded.audio_encoder)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
