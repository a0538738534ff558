"""GET /healthz (the process answers), GET /readyz (its dependencies answer too) and GET /metrics."""

from __future__ import annotations

import asyncio

from hypercheckout.api.base import JsonHandler
from hypercheckout.checkout.errors import CheckoutError
from hypercheckout.metrics import CONTENT_TYPE
from hypercheckout.redisclient import CALL_FAILED


class HealthHandler(JsonHandler):
    route = "/healthz"

    def get(self) -> None:
        self.write_json({"status": "ok", "replica": self.services.settings.replica_id})


class ReadyHandler(JsonHandler):
    route = "/readyz"

    async def get(self) -> None:
        services = self.services
        postgres, redis_state = await asyncio.gather(self._postgres(), self._redis())
        # Ready means "can sell". Purchases go on while Redis is down (the limiter fails open), so Redis is
        # reported, not required: an orchestrator must not pull every replica out during a Redis outage.
        ready = postgres == "ok" and not services.stopping
        self.write_json(
            {
                "status": "ready" if ready else "unavailable",
                "postgres": postgres,
                "redis": redis_state,
                "stopping": services.stopping,
                "replica": services.settings.replica_id,
            },
            status=200 if ready else 503,
        )

    async def _postgres(self) -> str:
        try:
            await asyncio.wait_for(self.services.store.ping(), self.services.settings.db_timeout)
        except (TimeoutError, CheckoutError):
            return "unreachable"
        return "ok"

    async def _redis(self) -> str:
        try:
            await self.services.redis.ping()
        except CALL_FAILED:
            return "unreachable"
        return "ok"


class MetricsHandler(JsonHandler):
    route = "/metrics"

    async def get(self) -> None:
        metrics = self.services.metrics
        try:
            metrics.products = await self.services.store.list_products()
        except CheckoutError:
            metrics.products = []  # PostgreSQL is down: every other figure is still worth scraping
        rooms = [p.id for p in metrics.products if p.waiting_room]
        try:
            metrics.queues = await self.services.rooms.queues(rooms)
        except CheckoutError:
            metrics.queues = {}  # PostgreSQL is down: the queue lengths are not known
        self.set_header("Content-Type", CONTENT_TYPE)
        self.finish(metrics.render())


default_handlers = [(r"/healthz", HealthHandler), (r"/readyz", ReadyHandler), (r"/metrics", MetricsHandler)]
