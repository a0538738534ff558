"""The Redis rate limiter: bursts, 429 with Retry-After, bans, unban, off, and Redis going away."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import pytest
import redis.exceptions
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection

from hypercheckout.app import Services, redis_client
from hypercheckout.denials import Decision
from hypercheckout.limiter import ATTEMPTS_PER_CALL, FAILURE_BACKOFF, RateLimiter
from hypercheckout.limiter_keys import index_keys, limit_key, script_keys, shard_of
from hypercheckout.localservices import PrivateRedis
from hypercheckout.processes import free_port
from hypercheckout.redisclient import RedisClient, is_cluster
from hypercheckout.settings import Settings
from tests.helpers import ON_BOTH_REDIS, buy, limiter_for, orders_of, run_cli, set_stock, settings_env


async def every_key(client: RedisClient, pattern: str) -> list[bytes]:
    if is_cluster(client):
        return [key async for key in client.scan_iter(match=pattern)]  # every master's
    return list(await client.keys(pattern))


@ON_BOTH_REDIS
def test_a_burst_is_allowed_then_refused_until_the_rate_allows_again(redis_url: str, redis_prefix: str) -> None:
    async def scenario() -> None:
        client, limiter = limiter_for(redis_url, redis_prefix)
        decisions = [await limiter.check(7, "10.0.0.1") for _ in range(4)]
        assert [d.allowed for d in decisions] == [True, True, True, False]
        refused = decisions[-1]
        assert not refused.banned and refused.identity == "user"
        assert 0 < refused.retry_after <= 0.1  # one interval at 10/s
        assert (await limiter.check(8, "10.0.0.1")).allowed  # another buyer has a bucket of its own
        await asyncio.sleep(refused.retry_after + 0.01)  # the time the limiter itself asked for
        assert (await limiter.check(7, "10.0.0.1")).allowed
        await client.aclose()

    asyncio.run(scenario())


@ON_BOTH_REDIS
def test_a_client_address_has_its_own_limit_across_buyers(redis_url: str, redis_prefix: str) -> None:
    async def scenario() -> None:
        client, limiter = limiter_for(redis_url, redis_prefix, user_rate=None, ip_rate=1.0, ip_burst=2)
        decisions = [await limiter.check(user, "10.0.0.2") for user in range(1, 4)]
        assert [d.allowed for d in decisions] == [True, True, False]
        assert decisions[-1].identity == "ip"
        assert (await limiter.check(4, "10.0.0.3")).allowed
        await client.aclose()

    asyncio.run(scenario())


@ON_BOTH_REDIS
def test_an_attempt_refused_for_one_identity_takes_nothing_from_the_other(redis_url: str, redis_prefix: str) -> None:
    """On a cluster the two identities usually live in two slots, decided by two calls: the buyer's room taken by
    an attempt its address refused must be given back, as one call would never have taken it."""
    addresses = [f"10.1.0.{n}" for n in range(1, 255) if shard_of(f"ip:10.1.0.{n}") != shard_of("user:21")][:3]

    async def scenario() -> None:
        client, limiter = limiter_for(redis_url, redis_prefix, user_rate=0.01, user_burst=2, ip_rate=0.01,
                                      ip_burst=1, local_deny_seconds=0)
        first, crowded, second, third = addresses[0], addresses[0], addresses[1], addresses[2]
        assert (await limiter.check(21, first)).allowed  # the buyer: one of two; the address: its only one
        refused = await limiter.check(21, crowded)
        assert not refused.allowed and refused.identity == "ip"
        assert (await limiter.check(21, second)).allowed  # the buyer's second: the refused one took nothing
        over = await limiter.check(21, third)
        assert not over.allowed and over.identity == "user"
        assert (await limiter.check(22, third)).allowed  # the address refused nothing: its room is still there
        await client.aclose()

    asyncio.run(scenario())


@ON_BOTH_REDIS
def test_hammering_past_the_threshold_bans_and_unban_lifts_it(redis_url: str, redis_prefix: str) -> None:
    async def scenario() -> None:
        client, limiter = limiter_for(redis_url, redis_prefix, user_rate=1.0, user_burst=1, ban_after=3)
        assert (await limiter.check(9, "10.0.0.4")).allowed
        refusals = [await limiter.check(9, "10.0.0.4") for _ in range(3)]
        assert [d.banned for d in refusals] == [False, False, True]
        still = await limiter.check(9, "10.0.0.4")
        assert still.banned and 59 < still.retry_after <= 60
        assert [(b.kind, b.value) for b in await limiter.bans()] == [("user", "9")]
        # Every key the limiter wrote expires by itself (the original left keys without expiry).
        async for key in client.scan_iter(match=f"{redis_prefix}*"):
            assert await client.pttl(key) > 0, key
        assert await limiter.unban(user_id=9) > 0
        assert await limiter.bans() == []
        assert (await limiter.check(9, "10.0.0.4")).allowed
        await client.aclose()

    asyncio.run(scenario())


@ON_BOTH_REDIS
def test_the_bans_index_forgets_ended_bans_without_anyone_listing_them(redis_url: str, redis_prefix: str) -> None:
    """A bot rotating buyer ids is banned again and again; the index the dashboard lists bans from keeps only bans
    still running, even when nobody opens the dashboard (its listing used to be the only thing that pruned it)."""
    users = [u for u in range(1, 500) if shard_of(f"user:{u}") == shard_of("user:1")][:3]
    banned_index = index_keys(redis_prefix, shard_of("user:1"))[0]

    async def ban(limiter: RateLimiter, user: int) -> None:
        assert (await limiter.check(user, "10.0.0.9")).allowed
        assert (await limiter.check(user, "10.0.0.9")).banned

    async def scenario() -> None:
        client, limiter = limiter_for(redis_url, redis_prefix, user_rate=0.01, user_burst=1, ban_after=1,
                                      local_deny_seconds=0)
        first, second, third = users
        await ban(limiter, first)
        await ban(limiter, second)
        # The first ban ends (as time would end it: its key gone, its end in the past) while the second runs.
        await client.delete(limit_key(redis_prefix, "ban", f"user:{first}"))
        seconds, micros = await client.time()  # the script's clock: scores are Redis time in ms
        await client.zadd(banned_index, {f"user:{first}": seconds * 1000 + micros // 1000 - 1000})  # ended 1 s ago
        await ban(limiter, third)
        assert set(await client.zrange(banned_index, 0, -1)) == {f"user:{second}".encode(), f"user:{third}".encode()}
        await client.aclose()

    asyncio.run(scenario())


@ON_BOTH_REDIS
def test_the_most_limited_are_listed_most_first_until_unbanned(redis_url: str, redis_prefix: str) -> None:
    async def scenario() -> None:
        # Every refusal decided by Redis here, so that each one is a strike there at once.
        client, limiter = limiter_for(redis_url, redis_prefix, user_rate=0.1, user_burst=1, local_deny_seconds=0)
        for user, attempts in ((1, 4), (2, 2), (3, 3)):
            for _ in range(attempts):
                await limiter.check(user, "10.0.0.9")
        listed = [(t["value"], t["rejections"]) for t in await limiter.top_limited(10)]
        assert listed == [("1", 3), ("3", 2), ("2", 1)]
        assert [t["value"] for t in await limiter.top_limited(2)] == ["1", "3"]
        await limiter.unban(user_id=1)
        assert [t["value"] for t in await limiter.top_limited(10)] == ["3", "2"]
        await client.delete(limit_key(redis_prefix, "strikes", "user:3"))  # its strike window ended
        assert [t["value"] for t in await limiter.top_limited(10)] == ["2"]
        await limiter.clear_all()
        assert await limiter.top_limited(10) == [] and await every_key(client, f"{redis_prefix}*") == []
        await client.aclose()

    asyncio.run(scenario())


async def script_calls(client: RedisClient) -> int:
    if is_cluster(client):
        every = (await client.info("commandstats", target_nodes=RedisCluster.PRIMARIES)).values()
    else:
        every = [await client.info("commandstats")]
    return sum(int(stats.get(name, {}).get("calls", 0))
               for stats in every for name in ("cmdstat_evalsha", "cmdstat_eval"))


@ON_BOTH_REDIS
def test_a_hammering_client_is_refused_without_redis_and_still_banned_on_time(redis_url: str,
                                                                             redis_prefix: str) -> None:
    async def scenario() -> None:
        client, limiter = limiter_for(redis_url, redis_prefix, user_rate=0.5, user_burst=1, ban_after=5,
                                      local_deny_seconds=60)
        assert (await limiter.check(3, "10.0.0.8")).allowed
        before = await script_calls(client)
        # A decision by Redis is one script call, or on a cluster one per identity when they live in two slots.
        calls = 2 if is_cluster(client) and shard_of("user:3") != shard_of("ip:10.0.0.8") else 1
        refusals = [await limiter.check(3, "10.0.0.8") for _ in range(5)]
        # The first refusal came from Redis, the next three from this replica's memory; the fifth would reach the
        # threshold, so Redis decided it, counting the three local ones: five strikes, banned as without the cache.
        assert await script_calls(client) - before == 2 * calls
        assert [d.allowed for d in refusals] == [False] * 5
        assert [d.banned for d in refusals] == [False, False, False, False, True]
        assert all(0 < d.retry_after <= 2 for d in refusals[:4]) and refusals[-1].retry_after > 59
        # While banned, this replica answers by itself, with the ban's own retry time.
        banned = [await limiter.check(3, "10.0.0.8") for _ in range(20)]
        assert all(d.banned and d.retry_after > 58 for d in banned)
        assert await script_calls(client) - before == 2 * calls
        # Unban reaches this replica at once.
        await limiter.unban(user_id=3)
        assert (await limiter.check(3, "10.0.0.8")).allowed
        await client.aclose()

    asyncio.run(scenario())


def test_a_burst_larger_than_the_redis_pool_is_decided_not_waved_through(settings: Settings) -> None:
    """More concurrent checks than Redis connections must queue for a connection, not fail open."""

    async def scenario() -> list[Decision]:
        client = redis_client(settings, max_connections=4)
        limiter = RateLimiter(client, prefix=settings.redis_prefix, user_rate=1.0, user_burst=3, ip_rate=None,
                              ip_burst=1, ban_after=1000, ban_window=60, ban_seconds=60, local_deny_seconds=0)
        try:
            return await asyncio.gather(*(limiter.check(5, "10.0.0.3") for _ in range(200)))
        finally:
            await client.aclose()

    decisions = asyncio.run(scenario())
    assert not any(d.failed_open for d in decisions)
    assert sum(d.allowed for d in decisions) == 3


@ON_BOTH_REDIS
def test_a_call_redis_py_fails_with_its_own_error_fails_open_not_the_purchase(redis_url: str,
                                                                            redis_prefix: str) -> None:
    """redis-py can fail a call on a connection closed under it with AttributeError or TypeError (seen once in
    ten runs of tests/test_redis_cluster.py: a 500); the limiter takes it as Redis trouble."""
    async def scenario() -> None:
        client, limiter = limiter_for(redis_url, redis_prefix, user_rate=1.0, user_burst=1)
        assert not (await limiter.check(3, "10.0.0.7")).failed_open  # connected (a cluster's layout learnt)
        real = AbstractConnection.send_packed_command

        async def torn_down(*args: object, **kwargs: object) -> None:
            raise AttributeError("'NoneType' object has no attribute 'writelines'")

        # Where redis-py raised it: sending on a connection, whichever path the limiter's call takes to one.
        AbstractConnection.send_packed_command = torn_down  # type: ignore[method-assign]
        try:
            decision = await limiter.check(4, "10.0.0.7")
        finally:
            AbstractConnection.send_packed_command = real  # type: ignore[method-assign]
        assert decision.allowed and decision.failed_open
        await asyncio.sleep(FAILURE_BACKOFF)
        assert not (await limiter.check(4, "10.0.0.7")).failed_open
        await client.aclose()

    asyncio.run(scenario())


def test_off_means_no_redis_call_at_all() -> None:
    async def scenario() -> None:
        client, limiter = limiter_for(f"redis://127.0.0.1:{free_port()}/0", "x:", user_rate=None, ip_rate=None)
        assert not limiter.enabled
        assert (await limiter.check(1, "10.0.0.5")).allowed
        assert limiter.fail_open_events == 0  # a call to the closed port would have failed open and counted
        await client.aclose()

    asyncio.run(scenario())


def test_a_redis_cluster_with_no_node_answering_fails_open_not_the_purchase() -> None:
    """redis-py's cluster client raises RedisClusterUnreachableError, which is no RedisError, when no seed
    answers for the cluster's layout: it failed the purchase instead of letting it through unlimited."""
    async def scenario() -> None:
        client, limiter = limiter_for(f"redis+cluster://127.0.0.1:{free_port()}", "x:", user_rate=1.0)
        decision = await limiter.check(1, "10.0.0.5")
        assert decision.allowed and decision.failed_open
        await client.aclose()

    asyncio.run(scenario())


def test_redis_killed_fails_open_and_limits_return_with_it(redis_prefix: str) -> None:
    async def scenario(server: PrivateRedis) -> None:
        client, limiter = limiter_for(server.url, redis_prefix, user_rate=1.0, user_burst=1)
        assert (await limiter.check(3, "10.0.0.6")).allowed
        assert not (await limiter.check(3, "10.0.0.6")).allowed
        server.stop()
        # Buyer 3 was refused just before: this replica still knows it is over its rate, for that retry time.
        still = await limiter.check(3, "10.0.0.6")
        assert not still.allowed and 0 < still.retry_after <= 1
        down = [await limiter.check(user, "10.0.0.6") for user in (4, 5, 6)]
        assert all(d.allowed and d.failed_open for d in down)
        assert limiter.fail_open_events == 3
        server.start()  # same port, empty memory
        await asyncio.sleep(FAILURE_BACKOFF)  # the limiter's own back-off before it tries Redis again
        back = await limiter.check(3, "10.0.0.6")
        assert back.allowed and not back.failed_open  # a real decision from the fresh Redis
        assert not (await limiter.check(3, "10.0.0.6")).allowed  # limiting again
        await client.aclose()

    with tempfile.TemporaryDirectory(prefix="hc-test-redis-kill-") as tmp:
        server = PrivateRedis(Path(tmp))
        server.start()
        try:
            asyncio.run(scenario(server))
        finally:
            server.stop()


@ON_BOTH_REDIS
@pytest.mark.gen_test
@pytest.mark.settings(rate_limit=1.0, rate_burst=1, ban_after=2, ban_seconds=30)
async def test_a_banned_buyer_gets_429_banned_until_unbanned_from_the_cli(
    http_client, base_url, settings: Settings,
) -> None:
    statuses = [(await buy(http_client, base_url, user=11)).status for _ in range(3)]
    assert statuses == [200, 429, 429]
    banned = await buy(http_client, base_url, user=11)
    assert (banned.status, banned.body["error"]["code"]) == (429, "banned")
    assert int(banned.headers["Retry-After"]) > 20
    done = run_cli("unban", "--user", "11", env=settings_env(settings))
    assert done.returncode == 0, done.stderr
    # The replica remembers the ban for at most HC_LOCAL_DENY_MS after the unban in another process.
    deadline = time.monotonic() + settings.local_deny_ms / 1000 + 0.5
    for _ in range(100):
        answer = await buy(http_client, base_url, user=11)
        if answer.status != 429 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    assert answer.status == 200, answer.body


@pytest.mark.gen_test
@pytest.mark.settings(rate_limit=1.0, rate_burst=1, ban_after=2, ban_seconds=30)
async def test_a_buyer_hammering_a_sold_out_product_is_limited_and_banned_all_the_same(
    http_client, base_url, database_url: str,
) -> None:
    """The limiter decides before a refusal known from memory, cheaper though the refusal is: a bot hammering a
    sold-out product, or one whose sale has not started, is banned by the time units are on sale (again). Only
    without a limiter is the memory's refusal given first (api/purchase.py)."""
    set_stock(database_url, 1)
    assert (await buy(http_client, base_url, user=1)).status == 200  # the last unit: this replica knows it
    answers = [await buy(http_client, base_url, user=11) for _ in range(4)]
    assert [(a.status, a.body["error"]["code"]) for a in answers] == [
        (409, "out_of_stock"), (429, "rate_limited"), (429, "banned"), (429, "banned")]


@pytest.mark.gen_test
@pytest.mark.settings(rate_limit=1.0, rate_burst=1, ban_after=2, ban_seconds=30)
async def test_a_refusal_the_limiter_remembers_is_given_even_when_admission_control_has_no_place(
    http_client, base_url, services: Services,
) -> None:
    """A buyer Redis banned a moment ago is told so from this replica's memory before admission control is asked:
    the true answer, with its Retry-After, not a 503 overloaded that invites a retry in a second."""
    answers = [await buy(http_client, base_url, user=11) for _ in range(3)]
    assert [(a.status, a.body.get("error", {}).get("code")) for a in answers] == [
        (200, None), (429, "rate_limited"), (429, "banned")]
    remembered = services.limiter.decisions["banned", "local"]
    services.admission.in_flight = services.admission.max_in_flight  # every place for a purchase taken
    try:
        banned = await buy(http_client, base_url, user=11)
        other = await buy(http_client, base_url, user=12)
    finally:
        services.admission.in_flight = 0
    assert (banned.status, banned.body["error"]["code"]) == (429, "banned") and int(banned.headers["Retry-After"]) > 20
    assert services.limiter.decisions["banned", "local"] == remembered + 1
    assert (other.status, other.body["error"]["code"]) == (503, "overloaded")  # a buyer it knows nothing of


@ON_BOTH_REDIS
@pytest.mark.gen_test
@pytest.mark.settings(ip_rate_limit=1.0, ip_rate_burst=1)
async def test_the_proxys_x_real_ip_names_the_client(http_client, base_url, settings: Settings) -> None:
    # Loopback is a trusted proxy by default: its X-Real-IP is the client's address.
    assert (await buy(http_client, base_url, user=1, headers={"X-Real-IP": "203.0.113.1"})).status == 200
    assert (await buy(http_client, base_url, user=2, headers={"X-Real-IP": "203.0.113.1"})).status == 429
    assert (await buy(http_client, base_url, user=3, headers={"X-Real-IP": "203.0.113.2"})).status == 200


@ON_BOTH_REDIS
@pytest.mark.gen_test
@pytest.mark.settings(ip_rate_limit=1.0, ip_rate_burst=1, trusted_proxies=())
async def test_a_client_cannot_change_its_identity_with_headers(http_client, base_url, services: Services) -> None:
    assert (await buy(http_client, base_url, user=1, headers={"X-Real-IP": "203.0.113.1"})).status == 200
    spoofed = await buy(http_client, base_url, user=2,
                        headers={"X-Real-IP": "203.0.113.9", "X-Forwarded-For": "203.0.113.9"})
    assert spoofed.status == 429  # still limited as 127.0.0.1, its real address


@pytest.mark.gen_test
@pytest.mark.settings(rate_limit=1.0, rate_burst=1, ban_after=2, ban_seconds=30)
async def test_a_banned_buyers_retry_of_a_placed_order_replays_it(http_client, base_url, settings: Settings) -> None:
    """Found by `make chaos` on a Redis Cluster: a first try answered 503 outcome unknown had placed its order; the
    buyer was banned meanwhile, and the retry with the key was told 429 — a refusal, for an order that exists."""
    placed = await buy(http_client, base_url, user=12, headers={"Idempotency-Key": "placed-then-banned"})
    assert placed.status == 200
    refusals = [await buy(http_client, base_url, user=12) for _ in range(3)]
    assert refusals[-1].body["error"]["code"] == "banned"
    retry = await buy(http_client, base_url, user=12, headers={"Idempotency-Key": "placed-then-banned"})
    assert retry.status == 200 and retry.body["order_id"] == placed.body["order_id"], retry.body
    assert retry.headers["Idempotent-Replayed"] == "true"
    # A key of no order is refused as before; the same key with another body is still a 422.
    fresh = await buy(http_client, base_url, user=12, headers={"Idempotency-Key": "never-used"})
    assert (fresh.status, fresh.body["error"]["code"]) == (429, "banned")
    other = await buy(http_client, base_url, user=12, qty=2, headers={"Idempotency-Key": "placed-then-banned"})
    assert (other.status, other.body["error"]["code"]) == (422, "idempotency_key_reused")
    assert len(orders_of(settings.database_url)) == 1


class CountingScript:
    """The limiter's script, counting the calls that reach Redis and the attempts each carried."""

    def __init__(self, script: object) -> None:
        self.script = script
        self.attempts_per_call: list[int] = []

    async def __call__(self, *, keys: list[str], args: list[object]) -> object:
        attempts, position = 0, 3  # ARGV: three common arguments, then per attempt its count n and 4 n more
        while position < len(args):
            attempts += 1
            position += 1 + 4 * int(args[position])  # type: ignore[call-overload]
        self.attempts_per_call.append(attempts)
        return await self.script(keys=keys, args=args)  # type: ignore[operator]


# A stream of attempts with bursts, refusals by buyer and by address, and bans: (buyer, address).
STREAM = [(user, f"10.2.0.{address}") for user, address in
          [(1, 1), (1, 1), (1, 2), (2, 1), (1, 3), (3, 3), (1, 4), (1, 4), (4, 5), (4, 5), (4, 5), (5, 1), (2, 6),
           (1, 7), (6, 8), (6, 8), (6, 8), (6, 8), (7, 9), (2, 9)]]


@ON_BOTH_REDIS
def test_attempts_of_one_tick_go_to_redis_together_with_the_decisions_of_one_call_each(
        redis_url: str, redis_prefix: str) -> None:
    """One round trip per tick of the loop, not one per attempt (one call per shard on a cluster); and the same
    decisions as the same attempts made one after another, each in its own call."""
    options = {"user_rate": 0.01, "user_burst": 2, "ip_rate": 0.01, "ip_burst": 3, "ban_after": 2,
               "local_deny_seconds": 0}  # every decision is Redis's

    async def scenario() -> None:
        client, alone = limiter_for(redis_url, f"{redis_prefix}alone:", **options)
        one_by_one = [await alone.check(user, address) for user, address in STREAM]
        _, together = limiter_for(redis_url, f"{redis_prefix}together:", **options)
        counting = together._script = CountingScript(together._script)
        at_once = await asyncio.gather(*(together.check(user, address) for user, address in STREAM))
        assert [(d.allowed, d.identity, d.banned) for d in at_once] == \
               [(d.allowed, d.identity, d.banned) for d in one_by_one]
        assert sum(not d.allowed for d in at_once) >= 8 and any(d.banned for d in at_once)
        assert not any(d.failed_open for d in at_once)
        if is_cluster(client):
            # A part per shard an attempt's identities live in: one call per shard, whatever the attempts' number.
            shards = {shard_of(member) for user, address in STREAM for member in (f"user:{user}", f"ip:{address}")}
            assert len(counting.attempts_per_call) == len(shards)
        else:
            assert counting.attempts_per_call == [len(STREAM)]
        await client.aclose()

    asyncio.run(scenario())


def test_a_herd_in_one_tick_is_cut_into_calls_of_a_bounded_size(redis_url: str, redis_prefix: str) -> None:
    async def scenario() -> None:
        client, limiter = limiter_for(redis_url, redis_prefix, user_rate=0.01, user_burst=1, ip_rate=None)
        counting = limiter._script = CountingScript(limiter._script)
        herd = [(user % 300, "10.3.0.1") for user in range(450)]  # 300 buyers, the first 150 twice
        decisions = await asyncio.gather(*(limiter.check(user, address) for user, address in herd))
        assert [d.allowed for d in decisions] == [True] * 300 + [False] * 150, decisions[:2]
        assert counting.attempts_per_call == [ATTEMPTS_PER_CALL, ATTEMPTS_PER_CALL, 50]
        await client.aclose()

    asyncio.run(scenario())


class HeldFirstCall(CountingScript):
    """The limiter's script, whose first call waits for ``release`` (and then fails with ``fail``, if given)."""

    def __init__(self, script: object, fail: BaseException | None = None) -> None:
        super().__init__(script)
        self.release = asyncio.Event()
        self.fail = fail

    async def __call__(self, *, keys: list[str], args: list[object]) -> object:
        if not self.attempts_per_call:
            self.attempts_per_call.append(0)  # counted below, once it is released
            await self.release.wait()
            if self.fail is not None:
                raise self.fail
            self.attempts_per_call.pop()
        return await super().__call__(keys=keys, args=args)


def test_on_one_server_attempts_arriving_during_a_call_go_together_in_the_next(redis_url: str,
                                                                              redis_prefix: str) -> None:
    """One call in flight at a time: the attempts of the ticks while it waits are the next call, in their order,
    and decided as the same attempts one after another would be."""
    options = {"user_rate": 0.01, "user_burst": 2, "ip_rate": 0.01, "ip_burst": 3, "ban_after": 2,
               "local_deny_seconds": 0}

    async def scenario() -> None:
        client, alone = limiter_for(redis_url, f"{redis_prefix}alone:", **options)
        one_by_one = [await alone.check(user, address) for user, address in STREAM]
        _, limiter = limiter_for(redis_url, f"{redis_prefix}in-turn:", **options)
        held = limiter._script = HeldFirstCall(limiter._script)
        checks = []
        for user, address in STREAM:  # each in a tick of its own
            checks.append(asyncio.ensure_future(limiter.check(user, address)))
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        held.release.set()
        decisions = await asyncio.gather(*checks)
        assert [(d.allowed, d.identity, d.banned) for d in decisions] == \
               [(d.allowed, d.identity, d.banned) for d in one_by_one]
        assert not any(d.failed_open for d in decisions)
        assert held.attempts_per_call == [1, len(STREAM) - 1]
        await client.aclose()

    asyncio.run(scenario())


def test_on_one_server_a_failed_call_fails_the_attempts_waiting_behind_it_open_at_once(
        redis_url: str, redis_prefix: str) -> None:
    async def scenario() -> None:
        client, limiter = limiter_for(redis_url, redis_prefix, user_rate=1.0, user_burst=1)
        held = limiter._script = HeldFirstCall(limiter._script, fail=redis.exceptions.ConnectionError("gone"))
        first = asyncio.ensure_future(limiter.check(1, "10.4.0.1"))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        behind = [asyncio.ensure_future(limiter.check(user, "10.4.0.1")) for user in (2, 3, 4)]
        await asyncio.sleep(0)
        held.release.set()
        decisions = await asyncio.gather(first, *behind)
        assert all(d.allowed and d.failed_open for d in decisions)
        assert held.attempts_per_call == [0]  # the failed call only: none was sent to the Redis that failed
        await client.aclose()

    asyncio.run(scenario())


def test_the_scripts_keys_of_an_identity_are_its_limit_keys_and_its_shards_indexes() -> None:
    for member in ("user:7", "ip:10.0.0.1", "ip:2001:db8::1"):
        assert script_keys("hc:", member) == (
            limit_key("hc:", "ban", member), limit_key("hc:", "tat", member), limit_key("hc:", "strikes", member),
            *index_keys("hc:", shard_of(member)))
