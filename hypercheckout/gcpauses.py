"""How long Python's cyclic garbage collector stopped this replica, by generation, for /metrics.

A collection runs on the event loop's thread: while it runs no request is read or answered. A young generation's
is short; a full (generation 2) collection walks every tracked object of the process: about 73,000 once the
libraries and the app are loaded, and a herd's connections add their own. ``freeze`` moves what exists once a
replica has started into the collector's permanent generation, which no collection walks again (HC_GC_FREEZE).
Measured here with this module's figures, one `run.py --only flash-sale-drain --only herd` each way: a replica's
full collections took 24 to 62 ms on average with the freeze, 79 to 226 ms without it.
"""

from __future__ import annotations

import gc
import time
from collections import Counter
from typing import Any

# Upper bounds of the pause histogram's buckets, in seconds.
PAUSE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
GENERATIONS = (0, 1, 2)


def freeze_started_heap() -> int:
    """Collect what is garbage now, then keep every object that remains out of all later collections; returns how
    many were frozen. Called once a replica has built everything it keeps for its life."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class GcPauses:
    """Every collection's duration, counted into ``PAUSE_BUCKETS`` per generation (with the sum and the longest)."""

    def __init__(self) -> None:
        self.counts: dict[int, Counter[float]] = {g: Counter() for g in GENERATIONS}  # bucket bound -> collections
        self.seconds: dict[int, float] = dict.fromkeys(GENERATIONS, 0.0)
        self.longest: dict[int, float] = dict.fromkeys(GENERATIONS, 0.0)
        self._started = 0.0
        self._installed = False

    def install(self) -> None:
        if not self._installed:
            gc.callbacks.append(self._observe)
            self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            gc.callbacks.remove(self._observe)
            self._installed = False

    def _observe(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        generation = info["generation"]
        self.counts[generation][next((b for b in PAUSE_BUCKETS if pause <= b), float("inf"))] += 1
        self.seconds[generation] += pause
        self.longest[generation] = max(self.longest[generation], pause)

    def cumulative(self, generation: int) -> list[tuple[str, int]]:
        """(bucket bound, collections at most that long) pairs ending with +Inf, as Prometheus wants them."""
        counts = self.counts[generation]
        pairs, total = [], 0
        for bound in PAUSE_BUCKETS:
            total += counts[bound]
            pairs.append((repr(bound), total))
        pairs.append(("+Inf", total + counts[float("inf")]))
        return pairs
