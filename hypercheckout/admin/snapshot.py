"""What the dashboard shows, computed from PostgreSQL and Redis so that every replica shows the same numbers.

One computation serves every open dashboard of a process: it is cached for ``max_age`` seconds and concurrent
requests share the computation in progress, so a dozen dashboards cost the same few queries as one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from hypercheckout.checkout import holds
from hypercheckout.checkout.errors import CheckoutError
from hypercheckout.checkout.queue import WaitingRooms
from hypercheckout.limiter import RateLimiter
from hypercheckout.login_throttle import LoginThrottle
from hypercheckout.redisclient import REDIS_ERRORS
from hypercheckout.settings import Settings
from hypercheckout.stats import OUTCOMES, read_outcomes, read_replicas, replica_hits
from hypercheckout.store import Store

HISTORY_SECONDS = 180


def _rate(value: float | None) -> str:
    return "off" if value is None else f"{value:g}/s"


class Snapshotter:
    def __init__(self, settings: Settings, store: Store, redis: Any, limiter: RateLimiter,
                 login_throttle: LoginThrottle, max_age: float = 0.25, rooms: WaitingRooms | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._clock = clock  # PostgreSQL's, as the replica reads it: a product's status compares its sale times
        self._rooms = rooms
        self._store = store
        self._redis = redis
        self._limiter = limiter
        self._login_throttle = login_throttle
        self._max_age = max_age
        self._cached: dict[str, Any] | None = None
        self._cached_at = 0.0
        self._computing: asyncio.Task[dict[str, Any]] | None = None
        self.computations = 0  # for tests: how many times the queries actually ran

    async def get(self) -> dict[str, Any]:
        if self._cached is not None and time.monotonic() - self._cached_at < self._max_age:
            return self._cached
        if self._computing is None:
            self._computing = asyncio.create_task(self._compute(), name="dashboard-snapshot")
        task = self._computing
        try:
            snapshot = await asyncio.shield(task)
        finally:
            if self._computing is task and task.done():
                self._computing = None
        self._cached, self._cached_at = snapshot, time.monotonic()
        return snapshot

    async def _compute(self) -> dict[str, Any]:
        self.computations += 1
        settings = self._settings
        snapshot: dict[str, Any] = {
            "time": time.time(),
            "replica": settings.replica_id,
            "settings": {
                "strategy": settings.strategy,
                "rate_limit": _rate(settings.rate_limit),
                "rate_burst": settings.rate_burst,
                "ip_rate_limit": _rate(settings.ip_rate_limit),
                "ban_after": settings.ban_after,
                "ban_seconds": settings.ban_seconds,
                "max_quantity": settings.max_quantity,
            },
            "outcomes": list(OUTCOMES),
        }
        try:
            rows = await self._store.status()
            now = datetime.fromtimestamp(self._clock(), UTC)
            soon = await holds.expiring(self._store)
            snapshot["products"] = [
                {**r.product.as_json(settings.max_quantity, now), "sold": r.sold, "orders": r.orders,
                 "holds_expiring": soon.get(r.product.id, 0),
                 "passes_used": r.passes_used, "sold_out": r.product.available == 0 and r.product.held_now == 0}
                for r in rows
            ]
            snapshot["orders"] = sum(r.orders for r in rows)
            snapshot["recent_orders"] = await self._store.recent_orders(20)
            snapshot["holds"] = [h.as_json() for h in await holds.list_held(self._store, limit=10)]
            snapshot["postgres"] = "ok"
        except CheckoutError:
            snapshot.update(products=[], orders=None, recent_orders=[], holds=[], postgres="unreachable")
        try:
            now = int(time.time())
            snapshot["history"] = await read_outcomes(self._redis, settings.redis_prefix, now - HISTORY_SECONDS, now)
            snapshot["hits"] = await replica_hits(self._redis, settings.redis_prefix)
            snapshot["replicas"] = await read_replicas(self._redis, settings.redis_prefix)
            bans = [*await self._limiter.bans(), *await self._login_throttle.lockouts()]
            snapshot["bans"] = [b.as_json() for b in bans]
            snapshot["top_limited"] = await self._limiter.top_limited(10)
            snapshot["redis"] = "ok"
        except REDIS_ERRORS:
            snapshot.update(history=[], hits={}, replicas={}, bans=[], top_limited=[], redis="unreachable")
        try:
            await self._queues(snapshot.get("products", []))
        except CheckoutError:
            pass  # PostgreSQL failed between the two reads: the cards show no queue figures this time
        snapshot["limiter_fail_open"] = self._limiter.fail_open_events
        return snapshot

    async def _queues(self, products: list[dict[str, Any]]) -> None:
        """Each waiting room's line: buyers in it and how many the line has reached (PostgreSQL)."""
        rooms = [p for p in products if p.get("waiting_room")]
        if self._rooms is None or not rooms:
            return
        queues = await self._rooms.queues([p["id"] for p in rooms])
        for p in rooms:
            p["queue"] = queues[p["id"]]
