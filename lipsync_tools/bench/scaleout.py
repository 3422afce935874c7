"""``lipsync bench --ray --catalog CAT``: frame latency through a Ray Serve cluster against the plain server,
and which replica served each avatar.

:func:`run_scaleout` does, in order (every wait bounded), on this one machine:

1. **servers**: the plain lipsync server (a thread of this process) and the Ray Serve application of
   ``lipsync serve --ray`` (:func:`lipsync_tools.cluster.serve.start_on_ray`: an ingress and ``replicas``
   replicas holding at most ``max_packages_per_replica`` avatars each), both with one :class:`ServerConfig`:
   the catalog, loaded at run time, and the same model options. Ray is a fresh local cluster, or the one
   already initialised in this process (left as it was found);
2. **warm-up**: ``warmup`` requests per avatar to each (the first loads the avatar and its model; Serve puts
   an avatar it has not seen on the replica holding fewest), discarded;
3. **latency**: ``requests_per_avatar`` rounds; in each, every avatar gets one ``POST /v1/frame`` on each
   target, back to back (plain then Ray, Ray then plain, alternately), so both see the same machine load;
   the two get the same request bytes (one fixed PCM window, JPEG, frames in order) over one HTTP
   keep-alive client each. Every reply is checked (status, the frame asked for, a JPEG of the avatar's size,
   the model ran); the Ray ingress's ``X-Lipsync-Replica`` header says which replica served it;
4. **after**: ``GET /v1/cluster`` and ``/v1/packages`` of the cluster, ``GET /v1/models`` of the plain server;
   both are stopped, always.

Reported, never asserted (the machine is shared; its absolute times are its own): per target the client's
latency (median, p90, p99, max), the frame server's own time (``FrameReply.timings["total"]``) and the rest
(latency minus it: transport, and for Ray the proxy, the ingress and the hop to the replica); the hop's
overhead (Ray minus plain, and Ray over plain, at the median); per avatar the replicas that served it and
the affinity (the share of its requests served by its most frequent replica: 1.0 when every repeated request
hit the replica that holds it).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

import numpy as np

from ..errors import LipsyncError, UsageError
from ..protocol import CODECS, PCM_WINDOW_SAMPLES, ErrorReply, FrameReply, FrameRequest, ImageFormat
from .machine import machine_facts
from .report import SCALEOUT_SCHEMA_VERSION

if TYPE_CHECKING:
    from ..server.config import BackendName, ModelName

KIND: Final = "scale-out"
TARGETS: Final = ("plain", "ray")
APP_NAME: Final = "lipsync-bench"
"""The bench's Serve application (not ``lipsync``: a cluster's own application is left alone)."""

MODELS: Final = (None, "random", "identity")
"""``model``: ``None`` serves each avatar with its own checkpoint (as ``lipsync serve --catalog`` does)."""

LISTED_ERRORS: Final = 20
WARMUP_TIMEOUT_SECONDS: Final = 600.0  # a first request loads the avatar and its model (an ONNX export)
REQUEST_TIMEOUT_SECONDS: Final = 60.0
READY_TIMEOUT_SECONDS: Final = 180.0

Progress = Callable[[str], None]
_BINARY = CODECS["binary"]


@dataclass
class _Tally:
    """One target's requests for one avatar: latency, the frame server's own time, outcomes, replicas."""

    latency_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)
    requests: int = 0
    errors: int = 0
    replicas: Counter[str] = field(default_factory=Counter)


def run_scaleout(
    catalog: Path,
    *,
    requests_per_avatar: int = 50,
    warmup: int = 3,
    replicas: int = 2,
    max_packages_per_replica: int = 2,
    avatars: Sequence[str] | None = None,
    model: str | None = None,
    seed: int = 0,
    backend: str | None = None,
    precision: str = "fp32",
    device: str = "cpu",
    settle_ms: float = 20.0,
    work_dir: Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Measure the plain server and the Ray Serve cluster side by side (see the module docstring) and return
    the result document (``lipsync_tools/bench/schemas/scaleout.schema.json``, ``"kind": "scale-out"``).

    ``catalog``: a JSON or TOML catalog (``serve --catalog``); ``avatars``: the ids measured (``None``: the
    catalog's first ``replicas * max_packages_per_replica``, so the cluster holds them all at once and
    affinity is not broken by evictions). ``requests_per_avatar``: measured requests per avatar and target,
    after ``warmup`` discarded ones (at least 1: the first loads the avatar). ``replicas`` /
    ``max_packages_per_replica``: the frame deployment (:class:`~lipsync_tools.cluster.serve.RayOptions`).
    ``model`` (``None``: each avatar's own checkpoint; ``"random"``: random weights from ``seed``, NOT
    lip-sync; ``"identity"``: no network), ``backend``, ``precision``, ``device``: both servers' model.
    ``settle_ms``: a pause after each request, outside the timing (ONNX Runtime's threads spin a while
    after a call and would take CPU from the other target's next request). ``work_dir``: where the shared
    ONNX export goes (``None``: a temporary folder, removed afterwards). ``progress``: one line per phase.

    Raises :class:`UsageError` for a bad option or an avatar the catalog lacks,
    ``BackendUnavailableError`` without Ray Serve (``pip install 'lipsync-tools[ray]'``),
    ``InputNotFoundError`` / ``CatalogError`` for the catalog, and :class:`LipsyncError` when a server does
    not start or an avatar cannot be served at all (its error reply quoted). Requests that fail during the
    measurement are counted and listed in the result, not raised.
    """
    _check_options(requests_per_avatar, warmup, model, backend, precision, device, settle_ms)
    catalog = Path(catalog).resolve()  # the replicas are other processes, maybe in another folder
    from ..cluster.connect import require_ray

    require_ray("lipsync bench --ray")
    import ray

    from ..cluster.serve import RayOptions, start_on_ray
    from ..server import LipsyncServer, ServerConfig
    from .runner import timed_progress, work_folder

    started = time.perf_counter()
    say = timed_progress(progress)
    facts = machine_facts()
    with ExitStack() as stack:
        work = work_folder(stack, work_dir, "lipsync-bench-scaleout-")
        # One config for both: the same catalog, model and engine options. One frame per model call and no
        # batch wait: the requests come one at a time, and a wait would add the same delay to both.
        config = ServerConfig(
            port=0, catalog=catalog, model=cast("ModelName | None", model), seed=seed,
            backend=cast("BackendName | None", backend), precision=precision, device=device, max_batch=1,
            max_wait_ms=0.0, onnx_cache_dir=work / "onnx",  # one ONNX export for every server of the run
        )
        ray_options = RayOptions(replicas=replicas, max_packages_per_replica=max_packages_per_replica,
                                 app_name=APP_NAME)
        ray_options.check()
        say("plain server: starting")
        plain = LipsyncServer(config)  # checks the config: a missing catalog fails here, before Ray starts
        stack.callback(plain.stop, join_timeout=10)
        plain.start_in_thread(ready_timeout=READY_TIMEOUT_SECONDS)

        cluster = "reused" if ray.is_initialized() else "local"  # start_on_ray starts a new local one
        say(f"Ray Serve: deploying {replicas} replicas (at most {max_packages_per_replica} avatars each) on "
            f"the {cluster} cluster")
        running = start_on_ray(config, ray_options)  # fits the replicas' CPU shares to the cluster's CPUs
        stack.callback(running.stop)  # leaves the cluster as found
        ray_url = running.url

        measured = _pick_avatars(avatars, running.packages, replicas * max_packages_per_replica)
        run = _Run(urls={"plain": plain.url, "ray": ray_url}, avatars=measured, seed=seed,
                   settle=settle_ms / 1000, say=say)
        stack.enter_context(run)
        run.wait_ready()
        run.warm(warmup)
        say(f"latency: {requests_per_avatar} requests per avatar to each target, interleaved")
        run.measure(requests_per_avatar, warmup)
        after = run.after()
        say("stopping the servers")
    result = _document(
        facts=facts, run=run, after=after, catalog=catalog, catalog_size=len(running.packages),
        settings={
            "requests_per_avatar": requests_per_avatar, "warmup": warmup, "replicas": replicas,
            "max_packages_per_replica": max_packages_per_replica, "avatars": list(measured),
            "model": model, "seed": seed, "backend": backend, "precision": precision, "device": device,
            "settle_ms": settle_ms, "max_batch": 1, "max_wait_ms": 0.0, "image": "jpeg",
            "work_dir": None if work_dir is None else str(work_dir),
        },
        ray_section={
            "cluster": cluster, "serve": "started" if running.serve_started else "reused",
            "cluster_cpus": running.cluster_cpus, "replicas": replicas,
            "max_packages_per_replica": max_packages_per_replica,
            "replica_cpus": running.replica_cpus, "ingress_cpus": ray_options.ingress_cpus,
            "version": str(getattr(ray, "__version__", "?")),
        },
    )
    result["duration_seconds"] = round(time.perf_counter() - started, 2)
    return result


def _check_options(requests_per_avatar: int, warmup: int, model: str | None, backend: str | None,
                   precision: str, device: str, settle_ms: float) -> None:
    from .modes import check_runtime

    if not 1 <= requests_per_avatar <= 100_000:
        raise UsageError(f"--frames is {requests_per_avatar}; expected 1..100000 requests per avatar")
    if not 1 <= warmup <= 100:
        raise UsageError(f"warmup is {warmup}; expected 1..100 (the first request loads the avatar)")
    if model not in MODELS:
        raise UsageError(f"--model {model!r}: expected random or identity (or none: each avatar's own model)")
    if backend not in (None, "torch", "onnx"):
        raise UsageError(f"backend {backend!r}: expected torch or onnx")
    if not 0 <= settle_ms <= 1000:
        raise UsageError(f"settle_ms is {settle_ms:g}; expected 0..1000 ms")
    check_runtime(precision, device, backend)


def _pick_avatars(asked: Sequence[str] | None, catalog_ids: Sequence[str], held: int) -> tuple[str, ...]:
    if asked is None:
        return tuple(catalog_ids[:held])
    unknown = [a for a in asked if a not in catalog_ids]
    if unknown or not asked or len(set(asked)) != len(asked):
        raise UsageError(
            f"avatars {', '.join(asked) or '(none)'}: expected distinct ids of the catalog "
            f"({', '.join(catalog_ids[:10])}{' ...' if len(catalog_ids) > 10 else ''})"
        )
    return tuple(asked)


class _Run:
    """The two keep-alive clients and what they measured."""

    def __init__(self, *, urls: dict[str, str], avatars: tuple[str, ...], seed: int, settle: float,
                 say: Progress) -> None:
        import httpx

        from ..cluster.ingress import REPLICA_HEADER

        self.urls = urls
        self.avatars = avatars
        self.settle = settle
        self.say = say
        self.replica_header = REPLICA_HEADER
        self.clients = {t: httpx.Client(base_url=urls[t], timeout=REQUEST_TIMEOUT_SECONDS) for t in TARGETS}
        # One fixed window of loud noise (never silence, so every request runs the model), the same bytes
        # to both targets.
        self.window = np.random.default_rng(seed).integers(-8000, 8000, PCM_WINDOW_SAMPLES, dtype=np.int16)
        self.tallies = {t: {a: _Tally() for a in avatars} for t in TARGETS}
        self.warmup_replicas: dict[str, list[str]] = {a: [] for a in avatars}
        self.packages: dict[str, dict[str, Any]] = {}
        self.errors: list[dict[str, Any]] = []
        self.error_total = 0

    def __enter__(self) -> _Run:
        return self

    def __exit__(self, *_: object) -> None:
        for client in self.clients.values():
            client.close()

    def wait_ready(self) -> None:
        """Both answer ``GET /readyz`` with 200 (the cluster: once a replica answers the ingress)."""
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        for target in TARGETS:
            while True:
                with contextlib.suppress(Exception):
                    if self.clients[target].get("/readyz").status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise LipsyncError(f"the {target} server at {self.urls[target]} is not ready after "
                                       f"{READY_TIMEOUT_SECONDS:g} s")
                time.sleep(0.2)

    def request(self, avatar: str, frame_index: int, request_id: int) -> bytes:
        encoded = _BINARY.encode(FrameRequest.from_pcm(
            self.window, request_id=request_id, package_id=avatar, frame_index=frame_index,
            image=ImageFormat.JPEG))
        return encoded if isinstance(encoded, bytes) else encoded.encode("ascii")

    def post(self, target: str, body: bytes, timeout: float = REQUEST_TIMEOUT_SECONDS) -> tuple[Any, float]:
        t0 = time.perf_counter()
        response = self.clients[target].post("/v1/frame", content=body, timeout=timeout,
                                             headers={"Content-Type": _BINARY.content_type})
        return response, time.perf_counter() - t0

    def warm(self, warmup: int) -> None:
        """``warmup`` requests per avatar to each target, one avatar after the other; a failure is raised (the
        avatar cannot be served at all), with the server's answer."""
        for avatar in self.avatars:
            self.say(f"warm-up: {avatar}")
            for k in range(warmup):
                body = self.request(avatar, 0, k + 1)
                for target in TARGETS:
                    try:
                        response, _ = self.post(target, body, WARMUP_TIMEOUT_SECONDS)
                    except Exception as exc:
                        raise LipsyncError(f"warm-up of {avatar!r} on the {target} server: {exc}") from None
                    problem = _problem(response, 0, None)
                    if problem is not None:
                        raise LipsyncError(
                            f"the {target} server cannot serve {avatar!r}: {problem}"
                            + ("; packages that embed no checkpoint need --model random" if
                               "embeds no checkpoint" in problem else "")
                        )
                    if target == "ray":
                        self.warmup_replicas[avatar].append(response.headers.get(self.replica_header, "?"))
                    time.sleep(self.settle)
        listed = self.clients["plain"].get("/v1/packages").json()["packages"]
        self.packages = {p["id"]: p for p in listed if p.get("id") in self.avatars}
        missing = [a for a in self.avatars if a not in self.packages]
        if missing:
            raise LipsyncError(f"the plain server does not list {', '.join(missing)} after serving them")

    def measure(self, rounds: int, first_request_id: int) -> None:
        """``rounds`` rounds: every avatar once on each target, the order alternating."""
        request_id = first_request_id
        for k in range(rounds):
            for i, avatar in enumerate(self.avatars):
                package = self.packages[avatar]
                index = k % int(package["n_frames"])
                size = (int(package["width"]), int(package["height"]))
                request_id += 1
                body = self.request(avatar, index, request_id)
                order = TARGETS if (k + i) % 2 == 0 else TARGETS[::-1]
                for target in order:
                    self._one(target, avatar, body, index, size, k)
                    time.sleep(self.settle)
            if (k + 1) % max(1, rounds // 5) == 0 and k + 1 < rounds:
                self.say(f"latency: {k + 1} of {rounds} rounds")

    def _one(self, target: str, avatar: str, body: bytes, index: int, size: tuple[int, int], k: int) -> None:
        tally = self.tallies[target][avatar]
        tally.requests += 1
        try:
            response, elapsed = self.post(target, body)
        except Exception as exc:  # a timeout or a dropped connection: counted, the run goes on
            self._error(target, avatar, k, None, f"{type(exc).__name__}: {exc}")
            tally.errors += 1
            return
        problem = _problem(response, index, size)
        replica = response.headers.get(self.replica_header) if target == "ray" else None
        if problem is None and target == "ray" and not replica:
            problem = f"no {self.replica_header} header"
        if problem is not None:
            self._error(target, avatar, k, response.status_code, problem)
            tally.errors += 1
            return
        reply = _BINARY.decode(response.content)
        assert isinstance(reply, FrameReply)  # _problem checked it
        tally.latency_ms.append(elapsed * 1000)
        tally.server_ms.append(reply.timings.get("total", 0) / 1000)
        if replica:
            tally.replicas[replica] += 1

    def _error(self, target: str, avatar: str, k: int, status: int | None, detail: str) -> None:
        self.error_total += 1
        if len(self.errors) < LISTED_ERRORS:
            self.errors.append({"target": target, "avatar": avatar, "round": k, "status": status,
                                "detail": detail[:300]})

    def after(self) -> dict[str, Any]:
        """What the cluster holds, and the plain server's models, once the load is over."""
        ray = self.clients["ray"]
        cluster = ray.get("/v1/cluster").json()
        held = {p["id"]: list(p["replicas"]) for p in ray.get("/v1/packages").json()["packages"]}
        models = self.clients["plain"].get("/v1/models").json()["models"]
        return {"cluster": cluster, "held": held, "models": models}


def _problem(response: Any, frame_index: int, size: tuple[int, int] | None) -> str | None:
    """What is wrong with a ``POST /v1/frame`` answer (``None``: the frame asked for, a JPEG of ``size``,
    made by the model)."""
    import cv2

    try:
        message = _BINARY.decode(response.content)
    except Exception as exc:
        return f"HTTP {response.status_code}, a body that is not a reply ({exc})"
    if isinstance(message, ErrorReply):
        return f"HTTP {response.status_code}, {message.code}: {message.message}"
    if response.status_code != 200 or not isinstance(message, FrameReply):
        return f"HTTP {response.status_code}, {type(message).__name__}"
    if message.frame_index != frame_index:
        return f"frame {message.frame_index} instead of {frame_index}"
    if message.silence or "inference" not in message.timings:
        return "the model did not run"
    if size is not None:
        image = cv2.imdecode(np.frombuffer(message.payload, np.uint8), cv2.IMREAD_COLOR)
        shown = None if image is None else (image.shape[1], image.shape[0])
        if shown != size or (message.width, message.height) != size:
            found = "undecodable" if shown is None else f"{shown[0]}x{shown[1]}"
            return f"an image of {found}, expected {size[0]}x{size[1]}"
    return None


# --- the document -----------------------------------------------------------------------------------------


def _stats(values_ms: list[float]) -> dict[str, float | None]:
    from .live import lag_stats

    return lag_stats(values_ms)


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 2)


def _target_section(url: str, tallies: dict[str, _Tally]) -> dict[str, Any]:
    latency = [v for t in tallies.values() for v in t.latency_ms]
    server = [v for t in tallies.values() for v in t.server_ms]
    requests = sum(t.requests for t in tallies.values())
    errors = sum(t.errors for t in tallies.values())
    return {
        "url": url,
        "requests": requests,
        "ok": requests - errors,
        "errors": errors,
        "latency_ms": _stats(latency),
        "server_ms": _stats(server),
        "outside_server_ms": _stats([e - s for e, s in zip(latency, server, strict=True)]),
    }


def _avatar_section(run: _Run, avatar: str, held: dict[str, list[str]]) -> dict[str, Any]:
    package = run.packages[avatar]
    per_target = {}
    for target in TARGETS:
        t = run.tallies[target][avatar]
        per_target[target] = {"requests": t.requests, "ok": t.requests - t.errors, "errors": t.errors,
                              "latency_ms": _stats(t.latency_ms)}
    counts = run.tallies["ray"][avatar].replicas
    served = sum(counts.values())
    top = counts.most_common(1)[0] if counts else None
    return {
        "id": avatar,
        "n_frames": int(package["n_frames"]),
        "width": int(package["width"]),
        "height": int(package["height"]),
        **per_target,
        "replicas": dict(sorted(counts.items())),
        "replica": top[0] if top else None,
        "affinity": round(top[1] / served, 4) if top else None,
        "warmup_replicas": run.warmup_replicas[avatar],
        "held_by_at_end": sorted(held.get(avatar, [])),
    }


def _document(*, facts: dict[str, Any], run: _Run, after: dict[str, Any], catalog: Path, catalog_size: int,
              settings: dict[str, Any], ray_section: dict[str, Any]) -> dict[str, Any]:
    targets = {t: _target_section(run.urls[t], run.tallies[t]) for t in TARGETS}
    avatars = [_avatar_section(run, a, after["held"]) for a in run.avatars]
    plain, ray = targets["plain"], targets["ray"]
    plain_median, ray_median = plain["latency_ms"]["median"], ray["latency_ms"]["median"]
    overhead = {
        "median_ms": _difference(ray_median, plain_median),
        "ratio": round(ray_median / plain_median, 3) if ray_median is not None and plain_median else None,
        "p90_ms": _difference(ray["latency_ms"]["p90"], plain["latency_ms"]["p90"]),
        "p99_ms": _difference(ray["latency_ms"]["p99"], plain["latency_ms"]["p99"]),
        "outside_server_median_ms": _difference(ray["outside_server_ms"]["median"],
                                                plain["outside_server_ms"]["median"]),
    }
    shares = [a["affinity"] for a in avatars if a["affinity"] is not None]
    affinity = {
        "min": min(shares) if shares else None,
        "avatars": len(avatars),
        "on_one_replica": sum(1 for a in avatars if a["affinity"] == 1.0),
        "replicas_used": len({r for a in avatars for r in a["replicas"]}),
    }
    cluster = after["cluster"]
    models = [
        {**{key: str(m.get(key)) for key in ("name", "source", "backend", "family", "precision", "device")},
         "is_random": bool(m.get("is_random")), "packages": [str(p) for p in m.get("packages", [])]}
        for m in after["models"]
    ]
    return {
        "schema_version": SCALEOUT_SCHEMA_VERSION,
        "kind": KIND,
        "machine": facts,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "settings": settings,
        "catalog": {"path": str(catalog), "entries": catalog_size},
        "ray": ray_section,
        "models": models,
        "targets": targets,
        "overhead": overhead,
        "affinity": affinity,
        "avatars": avatars,
        "cluster": {
            "replicas": [{"replica": str(r["replica"]), "pid": int(r["pid"]),
                          "holding": [str(h) for h in r["holding"]]} for r in cluster["replicas"]],
            "max_packages_per_replica": int(cluster["max_packages_per_replica"]),
        },
        "errors": {"total": run.error_total, "listed": run.errors},
        "notes": _notes(facts, settings, avatars, models, catalog_size, ray_section, run.error_total),
    }


def _notes(facts: dict[str, Any], settings: dict[str, Any], avatars: list[dict[str, Any]],
           models: list[dict[str, Any]], catalog_size: int, ray_section: dict[str, Any],
           errors: int) -> list[str]:
    notes = []
    if any(m["is_random"] for m in models) or settings["model"] == "random":
        notes.append("random weights: the speed of the real network; they move pixels, they do not lip-sync")
    elif settings["model"] is None:
        notes.append("each avatar runs its own checkpoint: the bench cannot tell trained weights from random "
                     "ones (which move pixels and do not lip-sync); the speed is the network's either way")
    notes.append(
        f"the numbers are this machine's ({facts['cores_logical']} logical cores, shared): the clients, the "
        "plain server (a thread of this process) and the Ray cluster run on it together; compare the two "
        "targets side by side (medians, ratios), not these times with another machine's"
    )
    notes.append(
        f"server_ms is each frame server's own time (FrameReply.timings total); a replica reserves "
        f"{ray_section['replica_cpus']:g} CPU and Ray starts it with fewer model threads than the plain "
        "server may use, which shows there; outside_server_ms (latency minus it) is the transport, and for "
        "Ray the proxy, the ingress and the hop to the replica"
    )
    if len(avatars) < catalog_size:
        notes.append(f"measured {len(avatars)} of the catalog's {catalog_size} avatars")
    held = settings["replicas"] * settings["max_packages_per_replica"]
    if len(avatars) > held:
        notes.append(f"{len(avatars)} avatars on {settings['replicas']} replicas of "
                     f"{settings['max_packages_per_replica']} avatars each: some are evicted and loaded "
                     "again, so affinity is below 1 by design")
    for a in avatars:
        if a["affinity"] is not None and a["affinity"] < 1.0:
            notes.append(f"{a['id']}: served by {len(a['replicas'])} replicas ({a['replicas']})")
    if errors:
        notes.append(f"{errors} request(s) failed (see errors); the figures are over the others")
    return notes


__all__ = ["KIND", "run_scaleout"]
