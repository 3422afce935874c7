"""``lipsync serve --ray``: the plain server's API served by a Ray Serve application (docs/scale-out.md).

:func:`serve_on_ray` is what the CLI calls (it blocks until Ctrl-C); :func:`start_on_ray` starts the same
application and returns a :class:`RunningCluster` (its URL, and ``stop``), for tests and the benchmark.

The application has two deployments (:func:`build_application`):

* ``LipsyncIngress`` (:mod:`.ingress`): the HTTP and WebSocket API, routing each request by its package id
  (Ray Serve's multiplexed model id), proxying live sessions to the replica that admitted them;
* ``AvatarReplica`` (:mod:`.replica`): ``replicas`` replicas, each a real lipsync server holding at most
  ``max_packages_per_replica`` avatars of the catalog (the least recently used one is let go first).

Avatars are routed by catalog id, so a catalog is required; every node must see the catalog's paths (or
fetch its URLs) and have lipsync-tools installed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from lipsync_tools.errors import LipsyncError, UsageError
from lipsync_tools.server import ServerConfig

from .connect import join_ray, require_ray

log = logging.getLogger("lipsync.cluster")



AUTOSCALE_TARGET_REQUESTS: Final = 4
"""Frame calls in flight per replica that Serve's autoscaler aims at (``--replicas MIN-MAX``)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RayOptions:
    """How the application is laid out on the cluster.

    ``replicas``: replicas of the frame deployment, or with ``max_replicas`` the fewest it autoscales down
    to (Serve's autoscaler: ``AUTOSCALE_TARGET_REQUESTS`` frame calls in flight per replica; a live session
    is proxied straight to its replica's server, so it does not count); ``max_packages_per_replica``: avatars
    each holds at
    most (Serve's ``max_num_models_per_replica``); ``address``: an existing cluster to join (``"auto"``,
    ``"ray://host:10001"``, ``"host:6379"``; ``None`` starts a local one); ``replica_cpus`` /
    ``ingress_cpus``: the CPUs Ray reserves for each (fractions let a 2-CPU machine run 2 replicas and the
    ingress; the replicas' own servers use the threads they need regardless); ``app_name``: the Serve
    application's name.
    """

    replicas: int = 2
    max_replicas: int | None = None
    max_packages_per_replica: int = 4
    address: str | None = None
    replica_cpus: float = 0.5
    ingress_cpus: float = 0.1
    app_name: str = "lipsync"
    ray_init: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments of ``ray.init`` when this call starts or joins the cluster."""

    def check(self) -> None:
        """Raises UsageError for a value out of range."""
        if self.replicas < 1:
            raise UsageError(f"--replicas must be at least 1, got {self.replicas}")
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise UsageError(f"--replicas {self.replicas}-{self.max_replicas}: the most replicas must not be "
                             "fewer than the fewest")
        if self.max_packages_per_replica < 1:
            raise UsageError(f"--max-packages-per-replica must be at least 1, got "
                             f"{self.max_packages_per_replica}")
        if self.replica_cpus <= 0 or self.ingress_cpus <= 0:
            raise UsageError("replica_cpus and ingress_cpus must be positive")


@dataclass
class RunningCluster:
    """A started application: ``url`` (``http://host:port`` of Ray Serve's HTTP proxy) and :meth:`stop`."""

    url: str
    app_name: str
    replicas: int
    max_replicas: int | None  # autoscaling between replicas and this; None: a fixed count
    max_packages_per_replica: int
    packages: tuple[str, ...]
    replica_cpus: float  # each replica's CPU share, fitted to the cluster (RayOptions.replica_cpus at most)
    cluster_cpus: float
    _owns_ray: bool  # start_on_ray connected this process to Ray (a local cluster it started, or joined one)
    _owns_serve: bool  # Serve was not running in that cluster before

    @property
    def serve_started(self) -> bool:
        """Serve was not running in the cluster before (``stop`` shuts it down again)."""
        return self._owns_serve

    def stop(self) -> None:
        """Delete the application and leave the cluster as it was found: Serve shut down when this call
        started it, Ray disconnected (a local cluster it started stops; a joined one stays)."""
        import ray
        from ray import serve

        with contextlib.suppress(Exception):
            serve.delete(self.app_name)
        if self._owns_serve:
            with contextlib.suppress(Exception):
                serve.shutdown()
        if self._owns_ray:
            ray.shutdown()


def check_cluster_config(config: ServerConfig, options: RayOptions) -> None:
    """What ``--ray`` requires of the server options: a catalog, no package arguments. Raises UsageError."""
    options.check()
    if config.catalog is None:
        raise UsageError("--ray routes avatars to replicas by their catalog id: give --catalog FILE (a JSON "
                         "or TOML catalog of ids with their paths or URLs; docs/scale-out.md)")
    if config.packages:
        raise UsageError("--ray loads avatars from the catalog where they are asked for; put the package "
                         "arguments in the --catalog file instead")
    config.check()


def build_application(config: ServerConfig, options: RayOptions, internal_token: str) -> Any:
    """The Serve application (``ray.serve.Application``): the ingress bound to the frame deployment."""
    from ray import serve

    from .ingress import LipsyncIngress
    from .replica import INGRESS_DEPLOYMENT, REPLICA_DEPLOYMENT, AvatarReplica, ClusterSettings

    settings = ClusterSettings(
        config=config, replicas=options.replicas, max_packages_per_replica=options.max_packages_per_replica,
        internal_token=internal_token,
        # One machine: the replicas' servers listen on loopback. A joined cluster may put them on other
        # machines, so they listen on their node's address (behind the internal token).
        replica_host="127.0.0.1" if options.address is None else "",
        app_name=options.app_name,
    )
    replica: Any = serve.deployment(
        AvatarReplica, name=REPLICA_DEPLOYMENT, **_replica_count(options),
        ray_actor_options={"num_cpus": options.replica_cpus},
        # Frames queue in the replica's own server, which refuses beyond --queue-limit ('overloaded').
        max_ongoing_requests=max(16, config.queue_limit * 2),
        health_check_period_s=5, graceful_shutdown_timeout_s=5,
    )
    ingress: Any = serve.deployment(
        serve.ingress()(LipsyncIngress), name=INGRESS_DEPLOYMENT, num_replicas=1,
        ray_actor_options={"num_cpus": options.ingress_cpus},
        max_ongoing_requests=config.max_connections,  # a live session holds one for its whole life
    )
    return ingress.bind(replica.bind(settings), settings)


def _replica_count(options: RayOptions) -> dict[str, Any]:
    """The frame deployment's size: a fixed ``num_replicas``, or autoscaling bounds."""
    if options.max_replicas is None:
        return {"num_replicas": options.replicas}
    return {"autoscaling_config": {"min_replicas": options.replicas, "max_replicas": options.max_replicas,
                                   "target_ongoing_requests": AUTOSCALE_TARGET_REQUESTS}}


def parse_replicas(text: str) -> tuple[int, int | None]:
    """``--replicas``: ``"N"`` (fixed) or ``"MIN-MAX"`` (autoscaling): ``(N, None)`` or ``(MIN, MAX)``."""
    low, dash, high = text.strip().partition("-")
    try:
        return int(low), int(high) if dash else None
    except ValueError:
        raise UsageError(f"--replicas {text!r}: expected a number of replicas (2) or autoscaling bounds "
                         "(2-6)") from None


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def start_on_ray(config: ServerConfig, options: RayOptions) -> RunningCluster:
    """Start (or join) the Ray cluster, deploy the application, and return once every replica is up.

    Raises UsageError / InputNotFoundError for bad options (before Ray starts), BackendUnavailableError
    without Ray, and Ray's own errors when the cluster cannot be reached or a replica fails to start.
    """
    check_cluster_config(config, options)
    require_ray("lipsync serve --ray")
    import ray
    from ray import serve

    from lipsync_tools.remote import load_catalog

    catalog = load_catalog(config.catalog)  # type: ignore[arg-type]  # checked above
    config = _absolute_paths(config)  # replicas are other processes, started in other folders
    init: dict[str, Any] = {"configure_logging": False, "log_to_driver": False, "include_dashboard": False}
    # No --address: a new local cluster ("local"), never one a `ray start` left running on this machine,
    # whose Serve applications stopping this one must not take down.
    owns_ray = join_ray(options.address or "local", **{**init, **options.ray_init})
    serve_was_running = _serve_running()
    port = config.port or _free_port(config.host)
    try:
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        options = _fit_replicas(options, cpus)
        serve.start(http_options={"host": config.host, "port": port})
        app = build_application(config, options, secrets.token_urlsafe(32))
        serve.run(app, name=options.app_name, route_prefix="/", blocking=False)
        # serve.start keeps the HTTP port of a Serve already running and ignores ours
        url = _running_serve_url() if serve_was_running else _url(config.host, port)
    except BaseException:
        if not serve_was_running:
            with contextlib.suppress(Exception):
                serve.shutdown()
        if owns_ray:
            ray.shutdown()
        raise
    return RunningCluster(
        url=url, app_name=options.app_name, replicas=options.replicas, max_replicas=options.max_replicas,
        max_packages_per_replica=options.max_packages_per_replica, packages=tuple(catalog.ids),
        replica_cpus=options.replica_cpus, cluster_cpus=cpus, _owns_ray=owns_ray,
        _owns_serve=not serve_was_running,
    )


def _absolute_paths(config: ServerConfig) -> ServerConfig:
    """``config`` with its file and folder options (catalog, checkpoint, caches) made absolute here."""
    absolute: dict[str, Any] = {}
    for option in dataclasses.fields(config):
        value = getattr(config, option.name)
        if isinstance(value, Path):
            absolute[option.name] = value.resolve()
    return dataclasses.replace(config, **absolute)


def _fit_replicas(options: RayOptions, cpus: float) -> RayOptions:
    """``options`` with each replica's CPU share lowered so that every replica (the most, when autoscaling)
    and the ingress fit the cluster's ``cpus``; a replica the cluster cannot place would never start."""
    most = options.max_replicas or options.replicas
    share = min(options.replica_cpus, round((cpus - options.ingress_cpus) * 0.9 / most, 3))
    if share <= 0:
        raise UsageError(f"the Ray cluster has {cpus:g} CPUs: too few for {most} replicas and the ingress; "
                         "use fewer --replicas or add nodes")
    return dataclasses.replace(options, replica_cpus=share)


def _url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def _serve_running() -> bool:
    """Whether Ray Serve already runs in the connected cluster (its controller is a named actor)."""
    import ray

    return any(a.get("name") == "SERVE_CONTROLLER_ACTOR" and a.get("namespace") == "serve"
               for a in ray.util.list_named_actors(all_namespaces=True))


def _running_serve_url() -> str:
    """The HTTP proxy URL of a Serve that ran before: Ray has no public call for it, so this reads the
    controller client's config (ray.serve.context, Ray 2.60)."""
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    if client is None:
        raise LipsyncError("Ray Serve runs in this cluster but its controller cannot be reached")
    http = client.http_config
    return _url(str(http.host or ""), int(http.port))


def serve_on_ray(
    config: ServerConfig,
    *,
    replicas: int = 2,
    max_replicas: int | None = None,
    max_packages_per_replica: int = 4,
    address: str | None = None,
    on_ready: Callable[[RunningCluster], None] | None = None,
    **options: Any,
) -> None:
    """Serve ``config`` as a Ray Serve application until interrupted (Ctrl-C), then delete it.

    ``options``: further :class:`RayOptions` fields. Raises as :func:`start_on_ray`.
    """
    ray_options = RayOptions(replicas=replicas, max_replicas=max_replicas,
                             max_packages_per_replica=max_packages_per_replica, address=address, **options)
    running = start_on_ray(config, ray_options)
    previous = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (a service manager, a container stop) ends it as Ctrl-C does: the application is deleted
        # and a local cluster shut down, not left running without its driver.
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        if on_ready is not None:
            on_ready(running)
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        running.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def format_ready(running: RunningCluster) -> str:
    """The lines ``lipsync serve --ray`` prints once the application is up."""
    return "\n".join([
        f"lipsync cluster ready on {running.url} (Ray Serve application {running.app_name!r})",
        f"  replicas  {running.replicas}"
        + ("" if running.max_replicas is None else f" to {running.max_replicas} (autoscaling)")
        + f", at most {running.max_packages_per_replica} avatars each (GET "
        f"{running.url}/v1/cluster: what each holds)",
        f"  catalog   {len(running.packages)} avatars: {', '.join(running.packages[:10])}"
        + (" ..." if len(running.packages) > 10 else ""),
    ])
