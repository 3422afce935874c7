"""One local Ray cluster for the cluster tests (2 CPUs, no dashboard), started once per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

if os.environ.get("CI"):
    import ray  # CI installs the ray extra (make install): these tests must run there, never skip
else:
    ray = pytest.importorskip("ray", reason="no ray extra here: pip install 'lipsync-tools[ray]'")


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """A local Ray cluster for this test session; tests delete the Serve applications they start."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="lipsync-tests",
             configure_logging=False)
    try:
        yield
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()
