"""The batcher's rule with several keys (models): one key per batch, round robin, a shared queue bound."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from lipsync_tools.engine.batcher import Batcher
from lipsync_tools.errors import RequestError


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
    assert len(waits) == 5  # how long each took depends on the machine: the order below is the rule
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
            with pytest.raises(RequestError) as err:
                await batcher.submit(("d", 1), "d")
            assert err.value.reason == "overloaded"
            await asyncio.gather(first, *waiting)
            assert batcher.depth() == 0 and batcher.key_depth("a") == 0
        finally:
            await batcher.stop()

    run(scenario())


def test_results_may_come_later_from_a_pool_and_the_next_batch_does_not_wait_for_them():
    """``run`` may answer with futures (the engine composites in a pool): callers get their results when
    the futures finish, while the next model call already runs."""
    import concurrent.futures
    import threading

    pool = concurrent.futures.ThreadPoolExecutor(2)
    release = threading.Event()
    started_second = threading.Event()
    calls = 0

    def run_batch(items: list[int]) -> list[object]:
        nonlocal calls
        calls += 1
        if calls == 2:
            started_second.set()

        def finish(n: int) -> int:
            assert release.wait(5)
            return n * 10

        return [pool.submit(finish, n) for n in items]

    async def scenario() -> list[int]:
        batcher: Batcher[int, int] = Batcher(run_batch, max_batch=1, max_wait_s=0.0, queue_limit=10)
        await batcher.start()
        try:
            first = asyncio.ensure_future(batcher.submit(1))
            second = asyncio.ensure_future(batcher.submit(2))
            # the second model call starts while the first batch is still being finished
            assert await asyncio.to_thread(started_second.wait, 5)
            assert not first.done()
            release.set()
            return list(await asyncio.gather(first, second))
        finally:
            await batcher.stop()

    assert run(scenario()) == [10, 20]
    pool.shutdown()


def test_a_dead_gathering_loop_fails_every_caller_and_says_why():
    async def scenario() -> tuple[list[BaseException], BaseException | None]:
        batcher: Batcher[int, int] = Batcher(lambda items: items, max_batch=2, max_wait_s=0.05,
                                             queue_limit=10)

        async def explode() -> list[object]:
            raise RuntimeError("a bug in the loop")

        batcher._gather = explode  # type: ignore[method-assign]  # the loop itself fails
        await batcher.start()
        await asyncio.sleep(0.01)
        outcomes = []
        for n in range(2):
            with pytest.raises(RequestError) as failed:
                await asyncio.wait_for(batcher.submit(n), 2)
            outcomes.append(failed.value)
        failure = batcher.failure
        await batcher.stop()
        return outcomes, failure

    outcomes, failure = run(scenario())
    assert isinstance(failure, RuntimeError)
    assert all(e.reason == "internal" and "batching loop" in str(e) for e in outcomes)


def test_stop_answers_waiting_and_running_callers():
    started = []

    def slow(items: list[int]) -> list[int]:
        started.append(items)
        time.sleep(0.2)
        return items

    async def scenario() -> list[str]:
        batcher: Batcher[int, int] = Batcher(slow, max_batch=1, max_wait_s=0.0, queue_limit=10)
        await batcher.start()
        calls = [asyncio.ensure_future(batcher.submit(n)) for n in range(3)]
        await asyncio.sleep(0.05)  # the first runs, two wait
        await batcher.stop()
        reasons = []
        for call in calls:
            try:
                await asyncio.wait_for(call, 2)
                reasons.append("ok")
            except RequestError as exc:
                reasons.append(exc.reason)
        return reasons

    reasons = run(scenario())
    assert reasons.count("overloaded") >= 2 and len(reasons) == 3  # nobody is left waiting


def test_deadlines_keep_batches_small_enough_and_never_run_a_late_item():
    """With a cost per batch size, a batch only grows while its earliest deadline still holds, and an
    item no batch can finish in time is refused with Expired instead of being run."""
    from lipsync_tools.engine.batcher import Expired

    batches: list[list[int]] = []

    def model(items: list[tuple[str, int]]) -> list[int]:  # 30 ms per item, as the cost says
        time.sleep(0.03 * len(items))
        batches.append([n for _, n in items])
        return [n for _, n in items]

    async def scenario() -> tuple[list[object], list[int]]:
        batcher: Batcher[tuple[str, int], int] = Batcher(
            model, max_batch=8, max_wait_s=0.02, queue_limit=100, cost=lambda key, size: 0.03 * size
        )
        await batcher.start()
        try:
            now = asyncio.get_running_loop().time()
            calls = [batcher.submit(("a", 0), "a", now + 0.001)]  # hopeless: even alone it takes 30 ms
            calls += [batcher.submit(("a", i), "a", now + 0.075) for i in range(1, 5)]  # room for 2 per batch
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            return outcomes, [len(items) for items in batches]
        finally:
            await batcher.stop()

    outcomes, sizes = run(scenario())
    assert isinstance(outcomes[0], Expired)
    assert outcomes[1:3] == [1, 2]  # the first batch took two (60 ms < 75 ms); a third would miss
    assert sizes == [2] and 0 not in batches[0]
    assert all(isinstance(o, Expired) for o in outcomes[3:])  # after 60 ms, 30 more overshoot 75 ms
