"""Per-replica hit counts: what a replica keeps in memory while Redis is down, and what it sends once it is back."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from hypercheckout.processes import free_port
from hypercheckout.redisclient import connect
from hypercheckout.stats import OUTCOME_TTL, HitCounter, replica_hits
from tests.helpers import ON_BOTH_REDIS


@ON_BOTH_REDIS
def test_a_long_redis_outage_keeps_only_the_history_redis_would_still_hold(redis_url: str, redis_prefix: str) -> None:
    async def scenario() -> None:
        now = [1_000_000.0]
        dead = aioredis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.1)
        counter = HitCounter(dead, prefix=redis_prefix, replica="r1", flush_seconds=1, clock=lambda: now[0])
        outage = OUTCOME_TTL + 400  # seconds, two outcomes a second
        for _ in range(outage):
            counter.record(200)
            counter.record(409)
            assert not await counter.flush()
            now[0] += 1
        await dead.aclose()
        assert counter.pending_seconds <= 2 * OUTCOME_TTL  # not one entry per second of the outage
        live = connect(redis_url, timeout=1, max_connections=8)
        counter._redis = live  # Redis is back
        try:
            assert await counter.flush()
            # Every purchase answered during the outage still counts toward the replica's share.
            assert await replica_hits(live, redis_prefix) == {"r1": 2 * outage}
        finally:
            await live.aclose()

    asyncio.run(scenario())
