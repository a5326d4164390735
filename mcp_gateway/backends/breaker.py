"""Circuit breakers: a model endpoint that keeps failing is marked down and skipped for a while.

Closed: calls go through; ``failures`` consecutive failures open the circuit. Open: calls are refused without
touching the endpoint until ``reset_after`` seconds have passed. Half-open: one trial call is let through; its
success closes the circuit, its failure opens it again for another ``reset_after``. The clock is passed in,
so tests need no sleeps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

__all__ = ["BreakerState", "CircuitBreaker"]

BreakerState = Literal["closed", "open", "half-open"]


@dataclass
class CircuitBreaker:
    """One endpoint's breaker. Not thread-safe: the gateway runs on one event loop."""

    failures: int = 1
    reset_after: float = 30.0
    clock: Callable[[], float] = time.monotonic
    _consecutive: int = 0
    _open_until: float | None = None
    _trial: bool = False

    @property
    def state(self) -> BreakerState:
        if self._open_until is None:
            return "closed"
        return "open" if self.clock() < self._open_until or self._trial else "half-open"

    def allow(self) -> bool:
        """Whether a call may go to the endpoint now; in half-open state, only the first caller gets a trial."""
        state = self.state
        if state == "closed":
            return True
        if state == "half-open":
            self._trial = True
            return True
        return False

    def success(self) -> None:
        self._consecutive = 0
        self._open_until = None
        self._trial = False

    def failure(self) -> None:
        self._consecutive += 1
        if self._trial or self._consecutive >= self.failures:
            self._open_until = self.clock() + self.reset_after
        self._trial = False

    def release(self) -> None:
        """A trial call ended without a verdict on the endpoint (for example the caller's own error)."""
        self._trial = False
