"""Which live sessions the server takes on: it refuses one it cannot carry instead of letting all fall behind.

The rule (docs/engine.md, *Live sessions*): every admitted session must be able to get at least
``min_session_fps`` frames per second (or its package's fps, if lower). Each model's cost per frame comes from
its :class:`~lipsync_tools.engine.capacity.Capacity` (measured at load, updated while serving) at the batch
size its sessions make together (one per session, up to ``max_batch``), plus the engine's compositing and
encoding time per frame. A new session is admitted when the load of all admitted sessions and the new one,

    sum over sessions of need * (model seconds per frame at its batch size + compositing/encoding seconds),

stays at or below 1 (one second of work per second), and fewer than ``max_sessions`` run. Otherwise it is
refused with ``overloaded``; the message says how loaded the server is and when to try again.

The same figures bound how late a delivered frame may be (:meth:`Admission.max_lag`): the audio the model
needs after the frame's own time, one model call at the largest batch admission allows (two when sessions
batch together: a frame may wait for the call in progress), compositing and encoding, and one frame interval.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from lipsync_tools.errors import ProtocolError
from lipsync_tools.protocol import ErrorCode

if TYPE_CHECKING:
    from lipsync_tools.engine.capacity import Capacity

RETRY_AFTER_SECONDS: Final = 5
"""What a refusal tells a client to wait before trying again (sessions end when their audio ends)."""


class ModelLike(Protocol):
    """The model serving a session (:class:`~lipsync_tools.engine.model_store.ServedModel`)."""

    @property
    def key(self) -> str: ...

    @property
    def capacity(self) -> Capacity: ...


@dataclass(frozen=True)
class Ticket:
    """One admitted session; give it back with :meth:`Admission.release`."""

    number: int
    model: ModelLike
    need_fps: float


class Admission:
    """Admits live sessions by the rule in the module docstring.

    ``post_seconds()`` is the engine's current compositing + encoding time per frame.
    """

    def __init__(
        self,
        *,
        min_session_fps: float,
        max_sessions: int,
        max_batch: int,
        post_seconds: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.min_session_fps = min_session_fps
        self.max_sessions = max_sessions
        self.max_batch = max_batch
        self._post_seconds = post_seconds
        self._tickets: dict[int, Ticket] = {}
        self._numbers = itertools.count(1)
        self.refused = 0

    @property
    def sessions(self) -> int:
        """Sessions admitted now."""
        return len(self._tickets)

    def need(self, fps: float) -> float:
        """Frames per second a session at ``fps`` is guaranteed: ``min_session_fps``, or ``fps`` if lower."""
        return min(self.min_session_fps, fps)

    def load(self, extra: Ticket | None = None) -> float:
        """Seconds of engine work per second that the admitted sessions (and ``extra``) need at least."""
        tickets = [*self._tickets.values(), *([extra] if extra is not None else [])]
        post = self._post_seconds()
        by_model: dict[str, list[Ticket]] = {}
        for ticket in tickets:
            by_model.setdefault(ticket.model.key, []).append(ticket)
        total = 0.0
        for group in by_model.values():
            batch = min(self.max_batch, len(group))
            per_frame = group[0].model.capacity.batch_seconds(batch) / batch
            total += sum(t.need_fps for t in group) * (per_frame + post)
        return total

    def admit(self, model: ModelLike, fps: float) -> Ticket:
        """Admit a session of ``model`` at package ``fps``, or raise ``ProtocolError(overloaded)``."""
        ticket = Ticket(next(self._numbers), model, self.need(fps))
        if len(self._tickets) >= self.max_sessions:
            self.refused += 1
            raise ProtocolError(
                ErrorCode.OVERLOADED,
                f"the server runs {len(self._tickets)} live sessions, its limit (--max-sessions "
                f"{self.max_sessions}); retry in {RETRY_AFTER_SECONDS} s or use another server",
            )
        load = self.load(ticket)
        if load > 1.0 and self._tickets:
            self.refused += 1
            rate = model.capacity.frames_per_second(min(self.max_batch, self._model_sessions(model) + 1))
            raise ProtocolError(
                ErrorCode.OVERLOADED,
                f"the server cannot carry another live session: with it, its {len(self._tickets) + 1} "
                f"sessions would need {load:.0%} of what the engine can do (its model renders about "
                f"{rate:.0f} frames/s and each session is promised at least {ticket.need_fps:g} frames/s, "
                f"--min-session-fps); retry in {RETRY_AFTER_SECONDS} s, when a session may have ended",
            )
        self._tickets[ticket.number] = ticket
        return ticket

    def release(self, ticket: Ticket) -> None:
        """The session ended (idempotent)."""
        self._tickets.pop(ticket.number, None)

    def _model_sessions(self, model: ModelLike) -> int:
        return sum(1 for t in self._tickets.values() if t.model.key == model.key)

    def max_batch_for(self, model: ModelLike, fps: float) -> int:
        """The largest batch ``model``'s sessions can make under this rule: one frame per session, at most
        as many sessions as fit alone on this model, capped at ``max_batch``."""
        need = self.need(fps)
        post = self._post_seconds()
        fits = 1
        for n in range(1, min(self.max_batch, self.max_sessions) + 1):
            per_frame = model.capacity.batch_seconds(n) / n
            if n * need * (per_frame + post) <= 1.0:
                fits = n
        return fits

    def max_lag(self, model: ModelLike, fps: float, look_ahead_seconds: float) -> float:
        """The bound on a delivered frame's lag for a session of ``model`` at ``fps``, in seconds.

        Its audio look-ahead, its model call at :meth:`max_batch_for`, compositing and encoding, and one frame
        interval. When the model's sessions can batch together (that batch is over 1), a frame that becomes
        ready while a call runs also waits for that call: the bound then counts two calls. (One session alone
        waits at most for its own previous frame's call, which the frame interval covers when the model keeps
        up with the package fps.)
        """
        batch = self.max_batch_for(model, fps)
        calls = 2 if batch > 1 else 1
        call = model.capacity.batch_seconds(batch)
        return look_ahead_seconds + calls * call + self._post_seconds() + 1.0 / fps

    def to_dict(self) -> dict[str, object]:
        """JSON-ready state (``/readyz`` and ``GET /v1/models`` show it)."""
        return {
            "sessions": len(self._tickets), "max_sessions": self.max_sessions,
            "min_session_fps": self.min_session_fps, "load": round(self.load(), 4), "refused": self.refused,
        }


__all__ = ["RETRY_AFTER_SECONDS", "Admission", "ModelLike", "Ticket"]
