"""Joining a Ray cluster, for ``serve --ray`` and ``build-package --ray``: the extra's check, and an
address that answers before Ray is asked to connect to it.

``ray.init(address="host:6379")`` retries an unreachable address for minutes, logging as it goes; a user who
mistyped ``--address`` should hear so in seconds. :func:`join_ray` opens a TCP connection to an explicit
address first (``auto`` and ``None`` are Ray's own discovery and are left to it).
"""

from __future__ import annotations

import socket
from typing import Any, Final

from lipsync_tools.errors import BackendUnavailableError, UsageError

RAY_EXTRA_HINT: Final = "pip install 'lipsync-tools[ray]'"

REACH_TIMEOUT_SECONDS: Final = 5.0

_DEFAULT_PORTS: Final = {"ray://": 10001, "": 6379}  # Ray Client's port, the GCS port of `ray start --head`


def require_ray(what: str) -> None:
    """Raises :class:`BackendUnavailableError` with the install command when Ray Serve is missing."""
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailableError(
            f"{what} needs Ray, which is not installed here ({exc}); install it with: {RAY_EXTRA_HINT}"
        ) from None


def check_reachable(address: str | None, timeout: float = REACH_TIMEOUT_SECONDS) -> None:
    """UsageError unless ``address`` (``host:port`` or ``ray://host:port``) accepts a TCP connection within
    ``timeout`` seconds. ``None``, ``"auto"`` and ``"local"`` (Ray's discovery of a cluster on this machine,
    a new local cluster) are not checked."""
    if address is None or address in ("auto", "local"):
        return
    scheme = "ray://" if address.startswith("ray://") else ""
    rest = address[len(scheme):]
    host, _, port_text = rest.rpartition(":") if ":" in rest else (rest, "", "")
    try:
        port = int(port_text) if port_text else _DEFAULT_PORTS[scheme]
    except ValueError:
        raise UsageError(f"--address {address!r}: the port {port_text!r} is not a number; expected HOST:PORT "
                         "(e.g. head-node:6379) or ray://HOST:10001") from None
    try:
        socket.create_connection((host.strip("[]"), port), timeout=timeout).close()
    except OSError as exc:
        raise UsageError(
            f"--address {address!r}: nothing answers at {host}:{port} ({exc}); start the head node with "
            "`ray start --head` there, check the address it printed, or leave --address out to use a local "
            "cluster"
        ) from None


def join_ray(address: str | None, **init: Any) -> bool:
    """``ray.init(address, **init)`` unless this process already runs Ray; True when this call connected
    (the caller then shuts Ray down when done). An explicit address is checked first."""
    import ray

    if ray.is_initialized():
        return False
    check_reachable(address)
    ray.init(address=address, **init)
    return True


__all__ = ["RAY_EXTRA_HINT", "check_reachable", "join_ray", "require_ray"]
