"""Admission control: a purchase is taken on only while this replica can serve it in time.

Two bounds, both checked before any work (no Redis, no PostgreSQL):

* **in flight** — at most ``max_in_flight`` purchases of this replica are being served at once. Past that, more
  concurrency only lengthens every purchase's wait (the row lock and the CPU are shared), so the excess is
  refused at once rather than queued.
* **waited** — a purchase that has already waited longer than ``max_wait`` before reaching its handler (in
  nginx, in the socket, behind other requests on this event loop) is refused rather than served late: the
  buyer who sent it is likely gone or retrying, and serving it would make everyone behind it later still
  (CoDel's rule, applied per request). The wait is measured from ``X-Request-Start`` (set by nginx, believed only
  from a trusted proxy) or, without it, from when this replica parsed the request.

A refusal is 503 ``overloaded`` with ``Retry-After`` and ``"outcome": "nothing_sold"``: the purchase never reached
a strategy.
"""

from __future__ import annotations

from collections import Counter

from hypercheckout.checkout.errors import overloaded


class Admission:
    def __init__(self, *, max_in_flight: int, max_wait: float) -> None:
        self.max_in_flight = max_in_flight
        self.max_wait = max_wait
        self.in_flight = 0
        self.refused: Counter[str] = Counter()  # reason -> refusals, for /metrics

    def enter(self, waited: float) -> None:
        """Take one purchase on, or raise 503 ``overloaded``. Every successful ``enter`` needs one ``leave``."""
        if self.in_flight >= self.max_in_flight:
            self.refused["in_flight"] += 1
            raise overloaded()
        if waited > self.max_wait:
            self.refused["waited"] += 1
            raise overloaded()
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1
