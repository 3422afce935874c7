"""Cross-caller micro-batching: requests from concurrent coroutines gathered into one worker-thread call.

Requests carry a *key* (the engine uses the model that renders them): a batch only ever holds requests of
one key, since one model call takes one model's frames. The rule (documented in docs/engine.md):

* **Which key goes next**: among the keys with waiting requests, the one served longest ago (round robin in
  the order keys were last served). A key that keeps its queue full cannot starve another: every other
  waiting key runs one batch before it runs again.
* **What the batch holds**: it starts with that key's oldest waiting request and takes every request of the
  key that arrives until it holds ``max_batch`` of them or ``max_wait_s`` has passed since that first request
  *arrived* (so requests that already waited while the previous batch ran go at once). There is one
  exception: when the engine is uncontended (the previous batch held one request and no other arrived while
  it ran), a lone request runs at once instead of waiting for company that is not coming; one caller then
  pays no batching delay at all.

The batch runs in a single worker thread, never on the event loop. ``run`` may answer an item with a
:class:`concurrent.futures.Future` instead of a result (the engine composites and encodes in a small pool
while the next batch's model call runs); its caller gets the future's result when it is done. At most
``queue_limit`` requests wait, all keys together; one more is refused at once with
``RequestError(overloaded)``: memory never grows with the load.

No caller is ever left waiting: :meth:`Batcher.stop` fails every waiting and running request with
``overloaded``, and if the gathering loop itself dies (a bug), every request gets ``internal`` and
:attr:`Batcher.failure` says why (the server's ``/readyz`` reports it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from ..errors import RequestError, UsageError
from .requests import Reason

T = TypeVar("T")
R = TypeVar("R")

RunBatch = Callable[[list[T]], Sequence["R | BaseException | concurrent.futures.Future[R]"]]
"""Runs in the worker thread: one result, exception or future of a result per item, in order."""

log = logging.getLogger("lipsync.engine")


class Expired(Exception):
    """The item's deadline would pass before any batch holding it could finish: it was not run."""


@dataclass
class _Waiting(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    arrived: float  # event-loop clock, seconds
    key: Hashable = None
    deadline: float | None = None  # event-loop clock by which its result must be ready


class Batcher(Generic[T, R]):
    """Gathers :meth:`submit` calls into batches for ``run``; see the module docstring for the rule.

    ``on_batch(size)`` and ``on_queue_depth(depth)`` are called on the event loop (metrics hooks).
    """

    def __init__(
        self,
        run: RunBatch[T, R],
        *,
        max_batch: int,
        max_wait_s: float,
        queue_limit: int,
        on_batch: Callable[[int], None] | None = None,
        on_queue_depth: Callable[[int], None] | None = None,
        thread_name: str = "lipsync-batch",
        cost: Callable[[Hashable, int], float] | None = None,
    ) -> None:
        if max_batch < 1 or queue_limit < 1 or max_wait_s < 0:
            raise UsageError(
                f"batcher needs max_batch >= 1, queue_limit >= 1 and max_wait >= 0; got {max_batch}, "
                f"{queue_limit}, {max_wait_s}"
            )
        self._run = run
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.queue_limit = queue_limit
        self._on_batch = on_batch
        self._on_depth = on_queue_depth
        self._cost = cost
        self._thread_name = thread_name
        self._queues: dict[Hashable, deque[_Waiting[T, R]]] = {}  # waiting requests per key
        self._served: dict[Hashable, int] = {}  # key -> batch number it was last served at
        self._batches = 0
        self._waiting = 0
        self._started = False
        self._arrived: asyncio.Event | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self._contended = True  # until a lone request has run alone
        self._arrivals = 0  # requests submitted since the current batch started
        self.failure: BaseException | None = None  # why the gathering loop died, if it did
        self.running_since: float | None = None  # event-loop time the running batch started
        self.running_key: Hashable = None
        self.running_size = 0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def depth(self) -> int:
        """Requests waiting (not counting the batch being run), all keys together."""
        return self._waiting

    def key_depth(self, key: Hashable) -> int:
        """Requests of ``key`` waiting."""
        queue = self._queues.get(key)
        return len(queue) if queue is not None else 0

    async def start(self) -> None:
        """Start the gathering task in the running loop and the one worker thread."""
        if self.running:
            return
        self._queues = {}
        self._waiting = 0
        self.failure = None
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._thread_name)
        self._task = asyncio.get_running_loop().create_task(self._gather_forever(), name=self._thread_name)

    async def stop(self) -> None:
        """Stop gathering; waiting and in-flight callers get ``RequestError(overloaded)``."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._fail_waiting(_stopping())
        executor, self._executor = self._executor, None
        if executor is not None:
            # The batch in flight finishes in its thread; wait for it without blocking the event loop.
            await asyncio.to_thread(executor.shutdown, True)

    async def submit(self, item: T, key: Hashable = None, deadline: float | None = None) -> R:
        """Queue ``item`` under ``key`` and wait for its result (or its exception, re-raised here).

        ``deadline`` (event-loop time; needs the ``cost`` hook, which says how long a batch of a key and size
        takes): the item is never run in a batch that would finish after it, and a batch never grows so large
        that its earliest deadline is missed. An item no batch can finish in time raises :class:`Expired`
        (live sessions drop such a frame instead of rendering it late).

        Items of one key are batched together (see the module docstring). Raises
        ``RequestError(overloaded)`` at once when ``queue_limit`` items already wait or the batcher is not
        running. Cancelling the caller drops the item if its batch has not started.
        """
        if self.failure is not None:
            raise _died(self.failure)
        if not self.running or self._arrived is None:
            raise _stopping()
        if self._waiting >= self.queue_limit:
            raise RequestError(
                Reason.OVERLOADED,
                f"the engine's queue is full ({self.queue_limit} frames waiting); retry later or raise "
                "queue_limit",
            )
        loop = asyncio.get_running_loop()
        waiting: _Waiting[T, R] = _Waiting(item, loop.create_future(), loop.time(), key, deadline)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()  # a new key joins at the end of the round
        queue.append(waiting)
        self._waiting += 1
        self._arrived.set()
        self._arrivals += 1
        self._notify(self._on_depth, self._waiting)
        return await waiting.future

    def _take(self, key: Hashable) -> _Waiting[T, R] | None:
        queue = self._queues.get(key)
        if not queue:
            return None
        self._waiting -= 1
        waiting = queue.popleft()
        if not queue:
            del self._queues[key]
        return waiting

    async def _gather(self) -> list[_Waiting[T, R]]:
        assert self._arrived is not None  # set by start()
        loop = asyncio.get_running_loop()
        while self._waiting == 0:
            self._arrived.clear()
            await self._arrived.wait()
        # The key served longest ago among those with waiting requests (never served: first).
        key = min(self._queues, key=lambda k: self._served.get(k, -1))
        self._batches += 1
        self._served[key] = self._batches
        if len(self._served) > _MAX_REMEMBERED_KEYS:  # forget idle keys: the table stays bounded
            self._served = {k: n for k, n in self._served.items() if k in self._queues or k == key}
        first = self._take(key)
        assert first is not None
        if self._late(first, 1, loop.time()):
            self._fail(first.future, Expired())
            return []
        batch = [first]
        earliest = first.deadline
        wait = self.max_wait_s if self._contended else 0.0
        deadline = first.arrived + wait
        while len(batch) < self.max_batch:
            more = self._take(key)
            if more is not None:
                now = loop.time()
                if self._late(more, 1, now):
                    self._fail(more.future, Expired())
                    continue
                due = min((d for d in (earliest, more.deadline) if d is not None), default=None)
                if due is not None and self._cost is not None and now + self._cost(key, len(batch) + 1) > due:
                    # joining would make the batch finish after its earliest deadline: the next batch
                    self._queues.setdefault(key, deque()).appendleft(more)
                    self._waiting += 1
                    break
                batch.append(more)
                earliest = due
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            # Wait on an event, not on queue.get(): cancelling a timed-out get() can lose an item.
            self._arrived.clear()
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
                # arrives as the event is set (CPython gh-86296), and stop() cancels this loop
                async with asyncio.timeout(remaining):
                    await self._arrived.wait()
            except TimeoutError:
                break
        return batch

    def _late(self, waiting: _Waiting[T, R], size: int, now: float) -> bool:
        """Whether a batch of ``size`` starting ``now`` would finish after ``waiting``'s deadline."""
        if waiting.deadline is None or self._cost is None:
            return False
        return now + self._cost(waiting.key, size) > waiting.deadline

    async def _gather_forever(self) -> None:
        live: list[_Waiting[T, R]] = []
        try:
            while True:
                batch = await self._gather()
                live = [w for w in batch if not w.future.done()]  # callers that gave up are skipped
                self._notify(self._on_depth, self._waiting)
                if live:
                    await self._run_batch(live)
                live = []
        except asyncio.CancelledError:
            for waiting in live:
                self._fail(waiting.future, _stopping())
            raise
        except BaseException as exc:  # a bug in the loop: nobody may wait forever for it
            log.exception("the engine's batching loop died")
            self.failure = exc
            for waiting in live:
                self._fail(waiting.future, _died(exc))
            self._fail_waiting(_died(exc))
        finally:
            self.running_since = None

    async def _run_batch(self, live: list[_Waiting[T, R]]) -> None:
        loop = asyncio.get_running_loop()
        self._notify(self._on_batch, len(live))
        self._arrivals = 0
        self.running_since, self.running_key, self.running_size = loop.time(), live[0].key, len(live)
        try:
            results = await loop.run_in_executor(self._executor, self._run, [w.item for w in live])
        except Exception as exc:  # run() itself failed: every caller of the batch gets the error
            results = [exc] * len(live)
        finally:
            self.running_since = None
        self._contended = len(live) > 1 or self._arrivals > 0
        for waiting, result in zip(live, results, strict=True):
            if isinstance(result, concurrent.futures.Future):
                _chain(result, waiting.future, loop)
            elif isinstance(result, BaseException):
                self._fail(waiting.future, result)
            elif not waiting.future.done():
                waiting.future.set_result(result)

    def _fail_waiting(self, error: BaseException) -> None:
        for queue in self._queues.values():
            while queue:
                self._fail(queue.popleft().future, error)
        self._queues = {}
        self._waiting = 0

    @staticmethod
    def _notify(hook: Callable[[int], None] | None, value: int) -> None:
        if hook is None:
            return
        try:
            hook(value)
        except Exception:  # a metrics hook must not stop the engine
            log.exception("batcher hook failed")

    @staticmethod
    def _fail(future: asyncio.Future[R], error: BaseException) -> None:
        if not future.done():
            future.set_exception(error)


_MAX_REMEMBERED_KEYS = 1024


def _stopping() -> RequestError:
    return RequestError(
        Reason.OVERLOADED, "the engine is not running (stopped or not started); retry later"
    )



def _died(error: BaseException) -> RequestError:
    return RequestError(
        Reason.INTERNAL,
        f"the engine's batching loop stopped after an error ({type(error).__name__}: {error}); restart the "
        "server and report this",
    )


def _chain(
    source: concurrent.futures.Future[R], target: asyncio.Future[R], loop: asyncio.AbstractEventLoop
) -> None:
    """Resolve ``target`` (on ``loop``) with ``source``'s outcome once it is done (in any thread)."""

    def copy(done: concurrent.futures.Future[R]) -> None:
        if target.done():
            return
        if done.cancelled():
            target.set_exception(_stopping())
            return
        error = done.exception()
        if error is not None:
            target.set_exception(error)
        else:
            target.set_result(done.result())

    def on_done(done: concurrent.futures.Future[R]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting any more
            loop.call_soon_threadsafe(copy, done)

    source.add_done_callback(on_done)
