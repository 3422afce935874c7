"""cluster/connect.py: a mistyped --address is refused in seconds, not retried by Ray for minutes."""

from __future__ import annotations

import socket
import time

import pytest

from lipsync_tools.cluster.connect import check_reachable
from lipsync_tools.errors import UsageError


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends: nothing listens there


def test_an_address_nothing_answers_at_is_refused_quickly_naming_it():
    port = _closed_port()
    started = time.monotonic()
    message = rf"--address '127.0.0.1:{port}': nothing answers at 127.0.0.1:{port}"
    with pytest.raises(UsageError, match=message):
        check_reachable(f"127.0.0.1:{port}", timeout=2.0)
    assert time.monotonic() - started < 2.5
    with pytest.raises(UsageError, match=r"nothing answers at 127.0.0.1:\d+ .*ray start --head"):
        check_reachable(f"ray://127.0.0.1:{port}", timeout=2.0)


def test_a_listening_address_passes_and_discovery_is_left_to_ray():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        check_reachable(f"127.0.0.1:{port}")
        check_reachable(f"ray://127.0.0.1:{port}")
    check_reachable(None)
    check_reachable("auto")


def test_a_port_that_is_not_a_number_is_refused():
    with pytest.raises(UsageError, match="the port 'x' is not a number"):
        check_reachable("head:x")
