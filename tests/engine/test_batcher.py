"""The batcher's rule with several keys (models): one key per batch, round robin, a shared queue bound."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from lipsync_tools.engine.batcher import Batcher
from lipsync_tools.errors import ProtocolError


class SlowModel:
    """Runs a batch in ``seconds``; records each batch's (key, items)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.batches: list[tuple[str, list[int]]] = []

    def __call__(self, items: list[tuple[str, int]]) -> list[int]:
        time.sleep(self.seconds)
        keys = {key for key, _ in items}
        assert len(keys) == 1, f"a batch mixed keys {keys}"
        self.batches.append((items[0][0], [n for _, n in items]))
        return [n for _, n in items]


def run(coro):
    return asyncio.run(coro)


def test_a_batch_holds_one_key_and_keys_take_turns():
    model = SlowModel(0.02)

    async def scenario() -> None:
        batcher: Batcher[tuple[str, int], int] = Batcher(model, max_batch=4, max_wait_s=0.01, queue_limit=100)
        await batcher.start()
        try:
            calls = [batcher.submit(("a", i), "a") for i in range(12)]
            calls += [batcher.submit(("b", i), "b") for i in range(4)]
            results = await asyncio.gather(*calls)
            assert results == list(range(12)) + list(range(4))
        finally:
            await batcher.stop()

    run(scenario())
    keys = [key for key, _ in model.batches]
    # "a" arrived first, but once "b" waits it runs before "a" runs again: a, b, a, a
    assert keys[:2] == ["a", "b"] and keys.count("b") == 1 and keys.count("a") == 3
    assert all(len(items) <= 4 for _, items in model.batches)


def test_a_flooding_model_does_not_starve_a_slow_one():
    """Key "busy" keeps 40 frames queued; key "rare" sends one frame at a time and still gets every other
    batch: its frames wait at most one batch of the busy key."""
    model = SlowModel(0.01)
    waits: list[float] = []

    async def scenario() -> None:
        batcher: Batcher[tuple[str, int], int] = Batcher(model, max_batch=4, max_wait_s=0.0, queue_limit=200)
        await batcher.start()
        try:
            busy = [asyncio.ensure_future(batcher.submit(("busy", i), "busy")) for i in range(40)]
            await asyncio.sleep(0.005)
            for i in range(5):
                t0 = time.perf_counter()
                await batcher.submit(("rare", i), "rare")
                waits.append(time.perf_counter() - t0)
            await asyncio.gather(*busy)
        finally:
            await batcher.stop()

    run(scenario())
    # each rare frame ran within two batch times (the busy batch in flight, then its own)
    assert max(waits) < 0.01 * 2 + 0.05, waits
    rare_positions = [i for i, (key, _) in enumerate(model.batches) if key == "rare"]
    assert len(rare_positions) == 5
    # between two of its frames at most one busy batch ran (the one in flight when the frame arrived)
    assert all(b - a <= 2 for a, b in itertools.pairwise(rare_positions)), rare_positions


def test_the_queue_limit_counts_every_key():
    model = SlowModel(0.05)

    async def scenario() -> None:
        batcher: Batcher[tuple[str, int], int] = Batcher(model, max_batch=1, max_wait_s=0.0, queue_limit=3)
        await batcher.start()
        try:
            first = asyncio.ensure_future(batcher.submit(("a", 0), "a"))
            await asyncio.sleep(0.01)  # running, not waiting
            waiting = [asyncio.ensure_future(batcher.submit((k, 1), k)) for k in ("a", "b", "c")]
            await asyncio.sleep(0)
            assert batcher.depth() == 3 and batcher.key_depth("b") == 1
            with pytest.raises(ProtocolError) as err:
                await batcher.submit(("d", 1), "d")
            assert err.value.code == "overloaded"
            await asyncio.gather(first, *waiting)
            assert batcher.depth() == 0 and batcher.key_depth("a") == 0
        finally:
            await batcher.stop()

    run(scenario())
