"""How long work (a build, an import, a render, a soak) reports progress without knowing about terminals.

The CLI passes a Rich-backed reporter on a terminal; libraries and CI get :class:`NullProgress`. A leaf
module (it imports nothing of lipsync_tools), so every layer that does long work may take one.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def start(self, stage: str, total: int | None) -> None:
        """A stage begins; ``total`` steps if known."""
        ...

    def advance(self, steps: int = 1) -> None: ...

    def finish(self) -> None:
        """The current stage is done."""
        ...


class NullProgress:
    """Reports nothing."""

    def start(self, stage: str, total: int | None) -> None:
        pass

    def advance(self, steps: int = 1) -> None:
        pass

    def finish(self) -> None:
        pass
