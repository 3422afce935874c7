"""How the server makes its engine parts: the real engine, the benchmark's original path, or fakes in tests.

:class:`Components` is the seam: ``server/app.py`` builds a :class:`~lipsync_tools.server.app.ServerState`
from one and never imports the engine itself; :func:`engine_components` (the default) imports the engine
lazily, when a server starts, so importing the server package loads no torch. The original per-frame path
(``lipsync serve --original``, ``bench --compare``) brings its own: it lives in ``baseline/``, which the
server does not import (:func:`lipsync_tools.bench.original_server.original_components`). The protocols say
what the server reads of the parts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from lipsync_tools.errors import UsageError
from lipsync_tools.server.config import ServerConfig
from lipsync_tools.server.metrics import Metrics
from lipsync_tools.server.sessions import EngineLike, PackageInfoLike

if TYPE_CHECKING:
    from lipsync_tools.engine.capacity import Capacity


class StoreLike(Protocol):
    """What the server needs from :class:`lipsync_tools.engine.PackageStore`."""

    def load(self, package_id: str, path: str | Path) -> PackageInfoLike: ...

    def unload(self, package_id: str) -> None: ...

    def get(self, package_id: str) -> Any: ...

    def infos(self) -> list[Any]: ...

    def __contains__(self, package_id: object) -> bool: ...


class ManagedEngine(EngineLike, Protocol):
    """An engine with a lifecycle (:class:`lipsync_tools.engine.Engine`)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class ModelInfoLike(Protocol):
    """What the server reads of :class:`lipsync_tools.engine.ModelInfo`."""

    @property
    def name(self) -> str: ...

    @property
    def is_random(self) -> bool: ...

    @property
    def warnings(self) -> list[str]: ...

    @property
    def load_seconds(self) -> float: ...

    def to_dict(self) -> dict[str, object]: ...


@dataclass(frozen=True, kw_only=True)
class Components:
    """How the server makes its engine parts (the real ones by default; tests may pass fakes).

    ``make_store()`` → an empty package store; ``load_model(config, store)`` → (model, model info), run
    in a worker thread after the startup packages are loaded (a package may carry the checkpoint);
    ``make_engine(store, model, config, observer)`` → an engine, started by the server (``model`` is
    whatever ``load_model`` returned first: the server only hands it over; ``config`` carries the batch
    size and wait chosen at startup). ``startup_capacity(model, store)`` → the key and measured
    :class:`~lipsync_tools.engine.capacity.Capacity` of the model the batch size is chosen from (``None``:
    nothing measured, the defaults apply); without it (``None``) the engine does not batch by measurement
    and the server reports no batching.
    """

    make_store: Callable[[], StoreLike]
    load_model: Callable[[ServerConfig, StoreLike], tuple[Any, ModelInfoLike]]
    make_engine: Callable[[StoreLike, Any, ServerConfig, Metrics], ManagedEngine]
    startup_capacity: Callable[[Any, StoreLike], tuple[str, Capacity] | None] | None = None


def default_components() -> Components:
    """The real engine's parts (:func:`engine_components`)."""
    return engine_components()


def engine_components() -> Components:
    """The real engine parts: :class:`PackageStore`, a :class:`ModelStore` of many models, :class:`Engine`.

    Each package is served by its own model (docs/engine.md, *Models*): startup packages have theirs loaded
    and warmed before the server is ready; a package loaded later is admitted only when a model can serve
    it, and that model loads with its first frame. The engine batches as the first startup package's model
    was measured (``ServerConfig.batching``; docs/engine.md, *Batch size by measurement*).
    """
    from lipsync_tools.engine import Engine, PackageStore
    from lipsync_tools.engine.model_store import ModelStore
    from lipsync_tools.engine.store import MemoryBudget

    def load(config: ServerConfig, store: StoreLike) -> tuple[Any, Any]:
        models = ModelStore(config.model_defaults())
        if isinstance(store, PackageStore):
            store.budget = MemoryBudget(max_bytes=config.max_memory, max_packages=config.max_packages)
            store.model_bytes = models.weight_bytes
            store.model_need = models.need_bytes
            store.free_models = models.free_idle
            check_startup_budget(store, models, config)
            for info in store.infos():  # loaded before the models: check them now
                models.register(info.id, store.get(info.id).package)
            # From now on a run-time load is admitted only when a model can serve the package.
            store.admit = models.register
            store.on_unload = models.forget
            for info in store.infos():
                models.ensure(info.id, store.get(info.id).package)  # load and warm every startup model
        return models, models.summary()

    def make_engine(store: StoreLike, models: Any, config: ServerConfig, metrics: Metrics) -> Any:
        return Engine(store, models, config.engine_options(), metrics)  # type: ignore[arg-type]

    def startup_capacity(models: Any, store: StoreLike) -> tuple[str, Capacity] | None:
        # The first startup package's model: the batch size is chosen from its measured speed.
        infos = store.infos()
        served = models.get(models.key_of(infos[0].id) or "") if infos else None
        return (served.key, served.capacity) if served is not None else None

    return Components(make_store=PackageStore, load_model=load, make_engine=make_engine,
                      startup_capacity=startup_capacity)


def check_startup_budget(store: Any, models: Any, config: ServerConfig) -> None:
    """The startup packages load before the budget applies: refuse to start when they exceed it."""
    if config.max_packages is not None and len(store) > config.max_packages:
        raise UsageError(f"{len(store)} startup packages but --max-packages {config.max_packages}")
    if config.max_memory is not None:
        need = store.frames_bytes() + sum(
            models.need_bytes(info.id, store.get(info.id).package) for info in store.infos()
        )
        if need > config.max_memory:
            raise UsageError(
                f"the startup packages need about {need / 2**20:.0f} MiB (decoded frames and models), more "
                f"than --max-memory {config.max_memory / 2**20:.0f} MiB; raise it or start with fewer"
            )
