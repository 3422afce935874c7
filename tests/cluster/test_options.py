"""--replicas N or MIN-MAX: a fixed frame deployment or Serve's autoscaling bounds (no cluster needed)."""

from __future__ import annotations

import pytest

from lipsync_tools.cluster.serve import AUTOSCALE_TARGET_REQUESTS, RayOptions, parse_replicas
from lipsync_tools.errors import UsageError

pytest.importorskip("ray")


def test_replicas_parse_as_a_count_or_bounds():
    assert parse_replicas("3") == (3, None)
    assert parse_replicas("2-6") == (2, 6)
    with pytest.raises(UsageError, match=r"--replicas 'many': expected a number of replicas \(2\)"):
        parse_replicas("many")
    with pytest.raises(UsageError, match="the most replicas must not be fewer than the fewest"):
        RayOptions(replicas=4, max_replicas=2).check()


def test_bounds_become_serve_autoscaling_and_a_count_a_fixed_size():
    from ray import serve

    from lipsync_tools.cluster.replica import AvatarReplica
    from lipsync_tools.cluster.serve import _replica_count

    assert _replica_count(RayOptions(replicas=3)) == {"num_replicas": 3}
    bounds = _replica_count(RayOptions(replicas=2, max_replicas=5))
    assert bounds == {"autoscaling_config": {"min_replicas": 2, "max_replicas": 5,
                                             "target_ongoing_requests": AUTOSCALE_TARGET_REQUESTS}}
    scaled = serve.deployment(AvatarReplica, **bounds)  # Serve checks the bounds here, before any cluster
    assert scaled.num_replicas == 1  # Serve's placeholder: the autoscaler decides
