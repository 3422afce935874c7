"""server/memory.py: free C heap memory goes back to the OS after unloads and every heap_trim_seconds, so a
long-running server's RSS stays flat (the 10-minute soak's growth came from memory glibc kept, not leaks)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from lipsync_tools.server import app as app_module
from lipsync_tools.server.memory import MALLOC_TRIM, HeapTrimmer
from lipsync_tools.server.metrics import Metrics
from tests.server.servers import random_model_config, running_server

needs_glibc = pytest.mark.skipif(MALLOC_TRIM is None, reason="the C library has no malloc_trim (not glibc)")


def test_a_trim_calls_malloc_trim_and_counts_it_in_metrics() -> None:
    calls: list[int] = []
    metrics = Metrics()
    trimmer = HeapTrimmer(metrics, malloc_trim=lambda pad: calls.append(pad) or 1)
    assert trimmer.available
    released = trimmer.trim()
    trimmer.trim()
    assert calls == [0, 0]  # pad 0: give back every free page
    assert released >= 0 and trimmer.trims == 2
    text = metrics.render()
    assert "lipsync_heap_trims_total 2.0" in text
    assert "lipsync_heap_trim_seconds_count 2.0" in text


def test_without_malloc_trim_nothing_is_called_and_nothing_counted() -> None:
    metrics = Metrics()
    trimmer = HeapTrimmer(metrics, malloc_trim=None)
    assert not trimmer.available
    assert trimmer.trim() == 0 and trimmer.trims == 0
    assert "lipsync_heap_trims_total 0.0" in metrics.render()


@needs_glibc
def test_glibc_keeps_freed_memory_until_a_trim_gives_it_back() -> None:
    """The failure the trims fix, shown on glibc itself: 200 MB of small buffers freed under one that is
    kept stay in RSS; one trim returns them. In a child process, so this test's heap is its own."""
    script = textwrap.dedent("""
        import psutil
        from lipsync_tools.server.memory import HeapTrimmer
        rss = lambda: psutil.Process().memory_info().rss
        blocks = [bytearray(24_000) for _ in range(8_000)]  # decoded 176x144 frames are 76 KB, these 24 KB
        pin = bytearray(24_000)  # allocated last: the heap's top stays in use, so free() cannot shrink it
        before = rss()
        del blocks
        freed = rss()
        released = HeapTrimmer().trim()
        print(before, freed, rss(), released)
    """)
    command = [sys.executable, "-c", script]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    before, freed, after, released = (int(v) for v in out.stdout.split())
    mb = 2**20
    assert before - freed < 50 * mb, "free() alone gave the memory back: nothing for a trim to do"
    assert freed - after > 100 * mb and released > 100 * mb


@needs_glibc
@pytest.mark.slow
def test_the_server_trims_after_an_unload_and_periodically(
    avatar_package: Path, onnx_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frozen: list[bool] = []  # lipsync serve freezes its startup objects: recorded here, not done
    monkeypatch.setattr(app_module, "freeze_startup_objects", lambda: frozen.append(True) or 0)
    config = random_model_config(avatar_package, onnx_cache, package_dir=avatar_package.parent,
                                 heap_trim_seconds=1.0, freeze_startup_objects=True)
    with running_server(config) as server:
        assert frozen == [True]
        def trims() -> float:
            text = httpx.get(f"{server.url}/metrics", timeout=10).text
            line = next(line for line in text.splitlines() if line.startswith("lipsync_heap_trims_total "))
            return float(line.split()[1])

        at_ready = trims()
        assert at_ready >= 1  # the startup's own trim, before ready
        body = {"id": "again", "path": avatar_package.name}
        assert httpx.post(f"{server.url}/v1/packages", json=body, timeout=60).status_code == 201
        assert httpx.delete(f"{server.url}/v1/packages/again", timeout=60).status_code == 200
        deadline = time.monotonic() + 30
        while trims() < at_ready + 2 and time.monotonic() < deadline:  # the unload's, then a periodic one
            time.sleep(0.2)
        assert trims() >= at_ready + 2
    off = random_model_config(avatar_package, onnx_cache, heap_trim_seconds=0)
    with running_server(off) as server:
        assert frozen == [True]  # not asked: an embedding program's objects are left alone
        assert "lipsync_heap_trims_total 0.0" in httpx.get(f"{server.url}/metrics", timeout=10).text


def test_freezing_moves_what_is_alive_out_of_the_collector_in_a_child_process() -> None:
    script = textwrap.dedent("""
        import gc
        from lipsync_tools.server.memory import freeze_startup_objects
        kept = [[i] for i in range(10_000)]
        print(freeze_startup_objects() >= 10_000, gc.get_freeze_count() > 0)
    """)
    command = [sys.executable, "-c", script]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["True", "True"]

