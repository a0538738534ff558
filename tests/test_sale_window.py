"""Sale windows: nothing is sold before a product's start or from its end, on any replica, whether the replica's
copy of the schedule is fresh or stale; a change reaches every replica within a second (Redis up) or within the
re-read period (Redis down)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from hypercheckout.app import Services, redis_client, start_services, stop_services
from hypercheckout.catalog import update_product
from hypercheckout.checkout.errors import CheckoutError
from hypercheckout.checkout.models import PurchaseRequest
from hypercheckout.checkout.schedule import SaleSchedule, check_sale
from hypercheckout.checkout.service import Checkout
from hypercheckout.checkout.soldout import SoldOutFlags
from hypercheckout.checkout.strategy import make_strategy
from hypercheckout.processes import free_port
from hypercheckout.settings import Settings
from hypercheckout.store import ProductChanges, SaleRules, Store
from tests.helpers import ON_BOTH_REDIS, assert_invariant, buy, orders_of, sql
from tests.replicas import running_replicas

STRATEGIES = ["pessimistic", "atomic", "batched"]
T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def product(database_url: str, stock: int, **window: object) -> int:
    """A product straight in the database (no announcement): ``window`` holds starts_at/ends_at/max_per_order."""
    columns = {"starts_at": None, "ends_at": None, "max_per_order": None, **window}
    return sql(database_url, "INSERT INTO products (name, stock, initial_stock, starts_at, ends_at, max_per_order) "
                             "VALUES ('drop', %(stock)s, %(stock)s, %(starts_at)s, %(ends_at)s, %(max_per_order)s) "
                             "RETURNING id", {"stock": stock, **columns})[0][0]


def refusal(exc: pytest.ExceptionInfo[CheckoutError]) -> tuple[int, str]:
    return exc.value.status, exc.value.code


def test_the_rules_at_their_edges() -> None:
    rules = SaleRules(starts_at=T0, ends_at=T0 + timedelta(hours=1), max_per_order=2)
    with pytest.raises(CheckoutError) as early:
        check_sale(7, rules, 1, T0 - timedelta(seconds=0.2))
    assert refusal(early) == (409, "sale_not_started")
    assert early.value.headers["Retry-After"] == "1"  # whole seconds, at least 1: never back before the start
    assert early.value.extra["starts_at"] == T0.isoformat()
    with pytest.raises(CheckoutError) as earlier:
        check_sale(7, rules, 1, T0 - timedelta(seconds=90.5))
    assert earlier.value.headers["Retry-After"] == "91"
    check_sale(7, rules, 2, T0)  # the start instant itself is on sale
    with pytest.raises(CheckoutError) as late:
        check_sale(7, rules, 1, T0 + timedelta(hours=1))  # the end instant is not
    assert refusal(late) == (409, "sale_ended") and late.value.extra["ends_at"] == rules.ends_at.isoformat()
    with pytest.raises(CheckoutError) as big:
        check_sale(7, rules, 3, T0)
    assert refusal(big) == (400, "invalid_request") and "between 1 and 2" in big.value.message


@asynccontextmanager
async def one_replica(settings: Settings, strategy: str) -> AsyncIterator[tuple[Checkout, SaleSchedule]]:
    """A replica's purchase path whose copy of the schedule is read once and then never again (unless asked)."""
    store = await Store.connect(settings.database_url, size=4, timeout=5)
    client = redis_client(settings)
    chosen = make_strategy(strategy, store, replica="test-1")
    schedule = SaleSchedule(store, refresh_seconds=3600)
    await schedule.load()
    try:
        yield Checkout(chosen, SoldOutFlags(store, client, prefix=settings.redis_prefix, recheck_seconds=60), store,
                       schedule), schedule
    finally:
        await chosen.close()
        await client.aclose()
        await store.close()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_refuses_outside_the_window_with_a_fresh_or_a_stale_copy(
        settings: Settings, strategy: str) -> None:
    url = settings.database_url
    now = datetime.now(UTC)
    later = product(url, 10, starts_at=now + timedelta(hours=1))
    over = product(url, 10, starts_at=now - timedelta(hours=2), ends_at=now - timedelta(hours=1))
    small = product(url, 10, max_per_order=2)
    moved = product(url, 10)  # live when the replica reads the schedule; its window changes behind its back
    ending = product(url, 10)
    narrowed = product(url, 10)

    async def scenario() -> None:
        async with one_replica(settings, strategy) as (checkout, schedule):
            sql(url, "UPDATE products SET starts_at = now() + interval '1 hour' WHERE id = %s", (moved,))
            sql(url, "UPDATE products SET ends_at = now() - interval '1 second' WHERE id = %s", (ending,))
            sql(url, "UPDATE products SET max_per_order = 1 WHERE id = %s", (narrowed,))
            assert schedule.rules(moved) == SaleRules()  # stale: the transaction must refuse by itself
            cases = [(later, 1, (409, "sale_not_started")), (over, 1, (409, "sale_ended")),
                     (small, 3, (400, "invalid_request")), (moved, 1, (409, "sale_not_started")),
                     (ending, 1, (409, "sale_ended")), (narrowed, 2, (400, "invalid_request"))]
            for key in (None, "k"):  # a keyed request skips the in-memory copy: the transaction decides alone
                for product_id, quantity, expected in cases:
                    request = PurchaseRequest(5, product_id, quantity,
                                              idempotency_key=None if key is None else f"{key}-{product_id}")
                    with pytest.raises(CheckoutError) as refused:
                        await checkout.purchase(request)
                    assert refusal(refused) == expected, (product_id, key)
                    if expected[1] == "sale_not_started":
                        assert 3590 <= int(refused.value.headers["Retry-After"]) <= 3601
            order = await checkout.purchase(PurchaseRequest(5, small, 2))
            assert order.quantity == 2

    asyncio.run(scenario())
    for product_id in (later, over, moved, ending, narrowed):
        assert orders_of(url, product_id) == {}
        assert_invariant(url, 10, product=product_id)
    assert sql(url, "SELECT count(*) FROM idempotency_keys") == [(0,)]  # refused: no key kept
    assert_invariant(url, 10, product=small)


def race(urls: list[str], pid: int, starts_at: datetime,
         answers: list[tuple[float, int, dict[str, object], str | None]]) -> None:
    """60 buyers on two replicas, from now until 2 s past the start, each answer kept with the instant it came."""
    async def herd() -> None:
        client = SimpleAsyncHTTPClient(force_instance=True, max_clients=60)
        stop_at = starts_at.timestamp() + 2.0

        async def buyer(n: int) -> None:
            attempt = 0
            while time.time() < stop_at:
                attempt += 1
                answer = await buy(client, urls[n % 2], user=n * 1000 + attempt, product=pid)
                answers.append((time.time(), answer.status, answer.body, answer.headers.get("Retry-After")))
                await asyncio.sleep(0.02)

        try:
            await asyncio.gather(*(buyer(n) for n in range(1, 61)))
        finally:
            client.close()

    asyncio.run(herd())


@pytest.mark.parametrize("strategy", ["atomic", "batched"])
def test_buyers_racing_the_start_on_two_replicas_get_nothing_before_it(settings: Settings, strategy: str) -> None:
    """The replicas never re-read the schedule here (an hour's period): the start instant is a time they compare
    with their clock, so the first purchases succeed at once — and none of them before the start."""
    url = settings.database_url
    answers: list[tuple[float, int, dict[str, object], str | None]] = []
    # The start is set before the replicas start (they read it once); a machine so busy that they come up after it
    # would leave no race to see: then again, with a longer lead, until the buyers are there before the start.
    for lead in (2.5, 6.0, 15.0, 40.0):
        starts_at = datetime.now(UTC) + timedelta(seconds=lead)
        pid = product(url, 150, starts_at=starts_at)
        with running_replicas(settings, count=2, HC_STRATEGY=strategy, HC_SCHEDULE_REFRESH_MS="3600000") as urls:
            if time.time() < starts_at.timestamp() - 1.0:
                race(urls, pid, starts_at, answers)
                break
    start = starts_at.timestamp()

    early = [a for a in answers if a[0] < start - 0.05]
    assert early and all(a[1] == 409 and a[2]["error"]["code"] == "sale_not_started" for a in early)  # type: ignore[index]
    assert all(int(a[3] or 0) >= 1 for a in answers if a[1] == 409 and a[2]["error"]["code"] == "sale_not_started")  # type: ignore[index]
    sold = [a for a in answers if a[1] == 200]
    assert sold, "nothing was sold after the start"
    assert min(a[0] for a in sold) - start < 1.0, "the first sale waited for something after the start"
    # No order before the start, by the database's own clock: created_at is the time the order committed under.
    assert sql(url, "SELECT count(*) FROM orders WHERE product_id = %s AND created_at < %s", (pid, starts_at)) == [(0,)]
    ids = {a[2]["order_id"] for a in sold}
    assert ids <= set(orders_of(url, pid)) and len(ids) == len(sold)
    assert_invariant(url, 150, product=pid)
    assert {a[1] for a in answers} <= {200, 409}, {a[1] for a in answers}


async def replicas_sharing(settings: Settings, count: int = 2) -> list[Services]:
    return [await start_services(settings.replace(replica_id=f"test-{i + 1}")) for i in range(count)]


async def seen_by_all(replicas: list[Services], product_id: int, wanted: SaleRules | None, within: float) -> float:
    started = time.monotonic()
    while any(r.schedule.rules(product_id) != wanted for r in replicas):
        assert time.monotonic() - started < within, [r.schedule.rules(product_id) for r in replicas]
        await asyncio.sleep(0.01)
    return time.monotonic() - started


@ON_BOTH_REDIS
def test_a_schedule_change_reaches_every_replica_within_a_second_over_redis(settings: Settings) -> None:
    # The periodic re-read is an hour away: only the announcement can bring the change.
    settings = settings.replace(schedule_refresh_ms=3_600_000)
    url = settings.database_url
    pid = product(url, 10, starts_at=datetime.now(UTC) + timedelta(hours=1))

    async def scenario() -> None:
        replicas = await replicas_sharing(settings)
        try:
            for r in replicas:
                await asyncio.wait_for(r.sold_out.subscribed.wait(), 5)
            store, client = replicas[0].store, replicas[0].redis
            for starts_at in (datetime.now(UTC) - timedelta(seconds=1), datetime.now(UTC) + timedelta(hours=2)):
                changed = await update_product(store, client, settings.redis_prefix, pid,
                                               ProductChanges(starts_at=starts_at, given=frozenset({"starts_at"})))
                assert changed.announced
                await seen_by_all(replicas, pid, SaleRules(starts_at=starts_at), within=1.0)
            # Earlier: the purchase is taken on every replica; later again: refused on every replica.
            await update_product(store, client, settings.redis_prefix, pid,
                                 ProductChanges(starts_at=None, given=frozenset({"starts_at"})))
            await seen_by_all(replicas, pid, SaleRules(), within=1.0)
            for i, r in enumerate(replicas):
                assert (await r.checkout.purchase(PurchaseRequest(i + 1, pid, 1))).quantity == 1
            sql(url, "DELETE FROM products WHERE id = %s", (pid,))
            await replicas[0].redis.publish(f"{settings.redis_prefix}product-changed", str(pid))
            await seen_by_all(replicas, pid, None, within=1.0)
        finally:
            for r in replicas:
                await stop_services(r)

    asyncio.run(scenario())


def test_with_redis_down_each_replica_catches_up_within_its_re_read_period(settings: Settings) -> None:
    settings = settings.replace(redis_url=f"redis://127.0.0.1:{free_port()}/0", schedule_refresh_ms=200)
    url = settings.database_url
    pid = product(url, 10, starts_at=datetime.now(UTC) + timedelta(hours=1))

    async def scenario() -> None:
        replicas = await replicas_sharing(settings)
        try:
            starts_at = datetime.now(UTC) - timedelta(seconds=1)
            changed = await update_product(replicas[0].store, replicas[0].redis, settings.redis_prefix, pid,
                                           ProductChanges(starts_at=starts_at, given=frozenset({"starts_at"})))
            assert not changed.announced
            waited = await seen_by_all(replicas, pid, SaleRules(starts_at=starts_at), within=0.2 + 0.3)
            assert waited <= 0.5
            sql(url, "DELETE FROM products WHERE id = %s", (pid,))
            await seen_by_all(replicas, pid, None, within=0.2 + 0.3)
        finally:
            for r in replicas:
                await stop_services(r)

    asyncio.run(scenario())


@pytest.mark.gen_test
async def test_the_public_api_shows_the_window_and_the_status(http_client, base_url, settings: Settings) -> None:
    url = settings.database_url
    now = datetime.now(UTC)
    scheduled = product(url, 5, starts_at=now + timedelta(minutes=5), max_per_order=3)
    ended = product(url, 5, ends_at=now - timedelta(seconds=1))
    sold_out = product(url, 0)
    statuses = {}
    for pid in (1, scheduled, ended, sold_out):
        response = await http_client.fetch(f"{base_url}/products/{pid}")
        statuses[pid] = json.loads(response.body)
    assert [statuses[p]["status"] for p in (1, scheduled, ended, sold_out)] == ["live", "scheduled", "ended",
                                                                                "sold_out"]
    assert statuses[scheduled]["starts_at"] == (now + timedelta(minutes=5)).isoformat()
    assert statuses[scheduled]["max_per_order"] == 3 and statuses[1]["max_per_order"] == 10
    early = await buy(http_client, base_url, product=scheduled)
    assert early.status == 409 and early.body["error"]["code"] == "sale_not_started"
    assert 299 <= int(early.headers["Retry-After"]) <= 300
    assert early.body["error"]["starts_at"] == statuses[scheduled]["starts_at"]


@pytest.mark.gen_test
@pytest.mark.settings(schedule_refresh_ms=3_600_000)  # no periodic read of its own during the test
async def test_a_read_of_the_schedule_that_began_earlier_never_overwrites_a_later_one(  # type: ignore[no-untyped-def]
        services) -> None:
    """The periodic read, begun before a change and slow to come back on a busy machine, once overwrote the copy a
    caller had read after the change (a waiting room's ticket read `admitted` past the sale's end)."""
    import asyncio

    schedule, store = services.schedule, services.store
    real = store.sale_rules
    stale = await real()
    release = asyncio.Event()

    async def slow_then_stale():  # type: ignore[no-untyped-def]
        await release.wait()
        return stale

    store.sale_rules = slow_then_stale
    try:
        earlier = asyncio.ensure_future(schedule.load())  # begins first, returns the old rules last
        await asyncio.sleep(0)
    finally:
        store.sale_rules = real
    changed = {pid: rules for pid, rules in stale.items()}
    assert 1 in changed
    rules, room, opening = changed[1]
    fresh = {**changed, 1: (type(rules)(rules.starts_at, datetime.now(UTC) - timedelta(seconds=1),
                                        rules.max_per_order, rules.waiting_room), room, opening)}

    async def fresh_rules():  # type: ignore[no-untyped-def]
        return fresh

    store.sale_rules = fresh_rules
    try:
        await schedule.load()  # begins later, applied first
    finally:
        store.sale_rules = real
    release.set()
    await earlier
    assert schedule.rules(1).ends_at == fresh[1][0].ends_at  # the later read stands


def test_the_schedule_stops_when_a_change_is_announced_as_it_is_closed(settings: Settings) -> None:
    """Stopping a replica closes the sold-out listener, which announces a change to the schedule, then closes the
    schedule. Python 3.11's ``wait_for`` lost a cancellation that came with its awaited event: the copy then read
    again and waited out its refresh (an hour here), and the replica's stop hung until its step's time limit."""

    async def scenario() -> None:
        store = await Store.connect(settings.database_url, size=2, timeout=5)
        schedule = SaleSchedule(store, refresh_seconds=3600)
        try:
            schedule.start()
            await asyncio.sleep(0.05)  # waiting for a change
            schedule.changed()
            await asyncio.wait_for(schedule.close(), 30)  # the same tick: the change and the cancellation together
        finally:
            await store.close()

    asyncio.run(scenario())


class ReadThatIgnoresACancel:
    """A store whose read completes although its task was cancelled during it: what Python 3.11's ``wait_for``
    does inside aiopg's query when the cancellation arrives together with the answer."""

    def __init__(self) -> None:
        self.reading = asyncio.Event()

    async def sale_rules(self) -> dict[int, Any]:
        self.reading.set()
        try:
            await asyncio.sleep(0.2)
        except asyncio.CancelledError:
            pass  # swallowed, as wait_for does
        return {}

    async def read_clock(self, local: Any) -> tuple[float, float, float]:
        now = local()
        return now, now, 0.0


def test_the_schedule_stops_even_when_its_read_swallows_the_cancellation() -> None:
    async def scenario() -> None:
        store = ReadThatIgnoresACancel()
        schedule = SaleSchedule(store, refresh_seconds=3600)  # type: ignore[arg-type]
        schedule.start()
        schedule.changed()
        await store.reading.wait()  # the read is under way
        await asyncio.wait_for(schedule.close(), 30)  # not an hour's refresh

    asyncio.run(scenario())
