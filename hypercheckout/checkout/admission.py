"""Admission control: a purchase is taken on unless this replica is past a hard bound or has a standing queue.

Two rules, both checked before any work (no Redis, no PostgreSQL):

* **in flight** — at most ``max_in_flight`` purchases of this replica are being served at once. Past that, more
  concurrency only lengthens every purchase's wait (the row lock and the CPU are shared), so the excess is
  refused at once rather than queued.
* **standing queue** (controlled delay, after Nichols and Jacobson's CoDel and the servers' variant of Facebook's
  "Fail at Scale") — how long a purchase waited before its handler ran (in nginx, in the socket, behind other
  requests on this event loop) is its *sojourn*. A burst makes a queue that drains: the first purchase of each
  interval waits next to nothing. A queue that stands is one whose *shortest* sojourn over a whole ``interval``
  stayed above ``target``: then the replica is behind for good, not for a moment, and serving every purchase late
  would make everyone behind it later still. Only then, and only until an interval passes whose shortest sojourn
  is back under ``target``, is a purchase that waited more than twice ``target`` refused; the ones that waited less
  are served, so the queue is held short instead of emptied. A burst that drains within an interval is served
  whole, however long its last purchase waited.

A refused purchase is answered once an interval has passed (see ``refuse``). The sojourn is measured from
``X-Request-Start`` (set by nginx, believed only from a trusted proxy) or, without it,
from when this replica parsed the request. A refusal is 503 ``overloaded`` with ``Retry-After`` and
``"outcome": "nothing_sold"``: the purchase never reached a strategy.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

from hypercheckout.checkout.errors import CheckoutError, overloaded


class Admission:
    def __init__(self, *, max_in_flight: int, target: float, interval: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_in_flight = max_in_flight
        self.target = target
        self.interval = interval
        self.in_flight = 0
        self.standing = False  # the last whole interval's shortest sojourn was above the target
        self.refused: Counter[str] = Counter()  # reason -> refusals, for /metrics
        self._clock = clock
        self._interval_ends = float("-inf")
        self._shortest = float("inf")  # shortest sojourn seen in the current interval

    def enter(self, waited: float) -> str | None:
        """Take one purchase on (None; it then needs one ``leave``), or say why not: the reason to pass to
        ``refuse`` — unless the caller has a truer answer for it (a refusal it knows from memory)."""
        if self.in_flight >= self.max_in_flight:
            return "in_flight"
        self._observe(waited)
        if self.standing and waited > 2 * self.target:
            return "standing_queue"
        self.in_flight += 1
        return None

    def take(self) -> None:
        """Take on a purchase ``enter`` turned away for a standing queue, which its caller serves anyway (a buyer
        a waiting room admitted). It needs one ``leave``."""
        self.in_flight += 1

    async def refuse(self, reason: str) -> CheckoutError:
        """The 503 ``overloaded`` for a purchase ``enter`` turned away, counted by reason, once an interval has
        passed. A herd in a closed loop (wrk's; a client that re-sends the moment it is answered) asks again at
        once, and a refusal costs this replica about what a small request does: answered at once, the replica
        would spend its CPU refusing. Held, the refusal costs a timer, and it keeps its place at nginx's front door
        meanwhile, so the excess is refused there, in C, while this replica serves the purchases it took on."""
        self.refused[reason] += 1
        await asyncio.sleep(self.interval)
        return overloaded()

    def leave(self) -> None:
        self.in_flight -= 1

    def _observe(self, sojourn: float) -> None:
        now = self._clock()
        if now >= self._interval_ends:
            # An interval ended: judge it by its shortest sojourn. One that ended longer than an interval ago saw
            # no purchase since, so the queue was empty meanwhile: nothing stands.
            self.standing = now < self._interval_ends + self.interval and self._shortest > self.target
            self._interval_ends = now + self.interval
            self._shortest = sojourn
        elif sojourn < self._shortest:
            self._shortest = sojourn
