"""PostgreSQL's clock as this replica reads it: the one clock every replica's in-memory decisions share.

A sale's start and end, a waiting room's admissions and a pass's expiry are instants PostgreSQL set (``now()``) and
its transactions check. A replica that compared them with its own clock would be wrong by its skew: one behind
refuses purchases PostgreSQL would take ("not started yet") for as long as it is behind, and tells waiting buyers
they wait; one ahead admits a room's buyers early and, ahead by more than a pass lasts, answers fresh passes
``expired``. With round-robin polling the fastest clock would decide a buyer's pass. So each replica measures
how far PostgreSQL's clock is from its own, at every read of the sale schedule (one extra round trip a second),
and reads the time as its own clock plus that offset.

A sample is taken as Cristian's algorithm does: the server's time is assumed to be read half-way through the round
trip, so a sample is off by at most half its round trip. The sample with the shortest round trip among the
latest few is kept: a busy event loop lengthens a round trip (and the error) without the clocks having moved.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

SAMPLES = 8  # the latest reads weighed; at one a second, a clock stepped by NTP is followed within as many


class ClockReader(Protocol):
    def __call__(self, local: Callable[[], float], /) -> Awaitable[tuple[float, float, float]]: ...


class DatabaseClock:
    """Callable like ``time.time``: epoch seconds by PostgreSQL's clock, estimated from this replica's."""

    def __init__(self, local: Callable[[], float] = time.time) -> None:
        self._local = local
        self._samples: deque[tuple[float, float]] = deque(maxlen=SAMPLES)  # (round trip, offset)
        self.offset = 0.0  # PostgreSQL's clock minus this replica's, in seconds; 0 until measured
        self.error = float("inf")  # at most this far off: half the kept sample's round trip

    def __call__(self) -> float:
        return self._local() + self.offset

    def surely_past(self, instant: float) -> bool:
        """Whether PostgreSQL's clock is past ``instant`` even if this estimate is off by its whole error (never,
        before a first measurement). A refusal from memory that PostgreSQL must not contradict afterwards (a pass
        expired) waits for this; a borderline case is left to a transaction, on PostgreSQL's own clock."""
        return self() - self.error >= instant

    async def measure(self, read_clock: ClockReader) -> None:
        """Take one sample: ``read_clock(local)`` answers (``local()`` when it asked, the server's clock in epoch
        seconds, the round trip in seconds) — Store.read_clock."""
        self.observe(*await read_clock(self._local))

    def observe(self, sent: float, server: float, round_trip: float) -> None:
        round_trip = max(0.0, round_trip)
        self._samples.append((round_trip, server - (sent + round_trip / 2)))
        round_trip, self.offset = min(self._samples)
        self.error = round_trip / 2
