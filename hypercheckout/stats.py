"""Per-replica hit counts for the dashboard, kept in Redis without a round trip per request.

Purchases are counted in memory by outcome and flushed every ``HC_STATS_FLUSH_MS`` in one pipeline:

* ``{prefix}hits`` — hash replica → purchases answered since the last reset (per-replica share);
* ``{prefix}outcomes:{epoch second}`` — hash outcome → count, kept 10 minutes (requests/s chart);
* ``{prefix}replicas`` — hash replica → last flush time (which replicas are alive).

If Redis is down the counts stay in memory and go out with the next successful flush.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

from hypercheckout.periodic import Every
from hypercheckout.redisclient import CALL_FAILED, RedisClient

log = logging.getLogger(__name__)

OUTCOME_TTL = 600  # seconds of per-second history kept
OUTCOMES = ("200", "409", "429", "4xx", "overloaded", "5xx")


def outcome_of(status: int, code: str | None = None) -> str:
    if status in (200, 409, 429):
        return str(status)
    if code == "overloaded":  # shed by admission control: load, not a fault
        return "overloaded"
    return "5xx" if status >= 500 else "4xx" if status >= 400 else "200"


class HitCounter:
    def __init__(self, client: RedisClient, *, prefix: str, replica: str, flush_seconds: float,
                 clock: Callable[[], float] = time.time) -> None:
        self._redis = client
        self._prefix = prefix
        self._replica = replica
        self._clock = clock
        self._pending: Counter[tuple[int, str]] = Counter()  # (epoch second, outcome) -> count
        self._pending_total = 0  # purchases answered since the last successful flush (the per-replica share)
        self._every = Every("hit counts' flush", flush_seconds, self.flush)
        self.flush_failures = 0

    def record(self, status: int, code: str | None = None) -> None:
        self._pending[(int(self._clock()), outcome_of(status, code))] += 1
        self._pending_total += 1

    @property
    def pending_seconds(self) -> int:
        """(second, outcome) entries waiting for Redis; at most OUTCOME_TTL seconds of each outcome during an outage."""
        return len(self._pending)

    def start(self) -> None:
        self._every.start()

    async def close(self) -> None:
        await self._every.close()
        await self.flush()

    async def flush(self) -> bool:
        """Send the counts so far, and a heartbeat even when idle (the dashboard lists live replicas)."""
        pending, self._pending = self._pending, Counter()
        total, self._pending_total = self._pending_total, 0
        pipe = self._redis.pipeline(transaction=False)
        if total:
            pipe.hincrby(f"{self._prefix}hits", self._replica, total)
        for (second, outcome), count in pending.items():
            key = f"{self._prefix}outcomes:{second}"
            pipe.hincrby(key, outcome, count)
            pipe.expire(key, OUTCOME_TTL)
        pipe.hset(f"{self._prefix}replicas", self._replica, f"{self._clock():.3f}")
        try:
            await pipe.execute()
        except CALL_FAILED:
            # Kept for the next flush, but only the seconds Redis would still hold: during a long outage the
            # per-second history must not grow by one entry a second forever. The total is one number.
            oldest = int(self._clock()) - OUTCOME_TTL
            self._pending.update({k: n for k, n in pending.items() if k[0] > oldest})
            self._pending_total += total
            self.flush_failures += 1
            return False
        return True


async def read_outcomes(client: RedisClient, prefix: str, first: int, last: int) -> list[dict[str, int]]:
    """Per second from ``first`` to ``last`` (epoch seconds, inclusive): {"t": second, outcome: count, …}."""
    pipe = client.pipeline(transaction=False)
    seconds = list(range(first, last + 1))
    for second in seconds:
        pipe.hgetall(f"{prefix}outcomes:{second}")
    rows = await pipe.execute()
    history = []
    for second, raw in zip(seconds, rows, strict=True):
        counts = {k.decode(): int(v) for k, v in raw.items()}
        history.append({"t": second, **{outcome: counts.get(outcome, 0) for outcome in OUTCOMES}})
    return history


async def read_replicas(client: RedisClient, prefix: str) -> dict[str, float]:
    """Replica → seconds since its last flush (a replica silent for long is gone or idle)."""
    raw = await client.hgetall(f"{prefix}replicas")
    now = time.time()
    return {k.decode(): round(now - float(v), 1) for k, v in raw.items()}


async def replica_hits(client: RedisClient, prefix: str) -> dict[str, int]:
    raw = await client.hgetall(f"{prefix}hits")
    return {k.decode(): int(v) for k, v in raw.items()}


async def clear_hits(client: RedisClient, prefix: str) -> None:
    await client.delete(f"{prefix}hits")
