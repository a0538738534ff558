"""GET /healthz (the process answers) and GET /readyz (its dependencies answer too)."""

from __future__ import annotations

import asyncio

from hypercheckout.api.base import JsonHandler
from hypercheckout.checkout.errors import CheckoutError
from hypercheckout.limiter import REDIS_ERRORS


class HealthHandler(JsonHandler):
    def get(self) -> None:
        self.write_json({"status": "ok", "replica": self.services.settings.replica_id})


class ReadyHandler(JsonHandler):
    async def get(self) -> None:
        services = self.services
        postgres, redis_state = await asyncio.gather(self._postgres(), self._redis())
        ready = postgres == "ok" and redis_state == "ok" and not services.stopping
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
        except REDIS_ERRORS:
            return "unreachable"
        return "ok"


default_handlers = [(r"/healthz", HealthHandler), (r"/readyz", ReadyHandler)]
