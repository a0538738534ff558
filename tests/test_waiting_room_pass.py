"""A waiting room's pass against real PostgreSQL and Redis, for each strategy: it admits one purchase (its retries
with the same Idempotency-Key replay it), a pass of an earlier opening of the room buys nothing even on a replica
whose copy has not seen the room reopen, a retry whose pass has expired since is never told a definite "no" for an
order its first try is placing, and a keyed request refused from memory never waits on the product's row."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest

from hypercheckout.app import redis_client
from hypercheckout.checkout.clock import DatabaseClock
from hypercheckout.checkout.errors import CheckoutError
from hypercheckout.checkout.models import Order, PurchaseRequest
from hypercheckout.checkout.queue import PASS, Signer, WaitingRooms
from hypercheckout.checkout.schedule import SaleSchedule
from hypercheckout.checkout.service import Checkout
from hypercheckout.checkout.soldout import SoldOutFlags
from hypercheckout.checkout.strategy import make_strategy
from hypercheckout.settings import STRATEGIES, Settings
from hypercheckout.store import Store
from tests.helpers import assert_invariant, orders_of, sql
from tests.locks import lock_waiters, open_transaction, row_locked, wait_for_lock_waiters
from tests.test_waiting_room import room_product


@dataclass
class Replica:
    checkout: Checkout
    rooms: WaitingRooms
    schedule: SaleSchedule
    store: Store


@asynccontextmanager
async def replica(settings: Settings, strategy: str, *, clock: object = None) -> AsyncIterator[Replica]:
    """One replica's purchase path with its waiting rooms; its copy of the schedule is read once, then only when
    a test asks (``schedule.load()``)."""
    store = await Store.connect(settings.database_url, size=8, timeout=5)
    client = redis_client(settings)
    chosen = make_strategy(strategy, store, replica="test-1")
    schedule = SaleSchedule(store, refresh_seconds=3600)
    await schedule.load()
    flags = SoldOutFlags(store, client, prefix=settings.redis_prefix, recheck_seconds=60)
    extra = {} if clock is None else {"clock": clock}
    rooms = WaitingRooms(store, schedule, flags, secret="test-secret", **extra)
    try:
        yield Replica(Checkout(chosen, flags, store, schedule, rooms), rooms, schedule, store)
    finally:
        await chosen.close()
        await client.aclose()
        await store.close()


async def pass_of(rooms: WaitingRooms, product_id: int, user_id: int) -> str:
    """Join and wait until admitted (a room at 1000/s admits within milliseconds); the pass."""
    ticket = (await rooms.join(product_id, user_id))["ticket"]
    for _ in range(2000):
        standing = await rooms.read(ticket)
        if standing["status"] == "admitted":
            return str(standing["pass"])
        assert standing["status"] == "waiting", standing
        await asyncio.sleep(0.005)
    raise AssertionError("never admitted")


async def outcomes(checkout: Checkout, requests: list[PurchaseRequest]) -> list[Order | tuple[int, str]]:
    """Each request's order, or its refusal as (status, code), all sent at once."""
    async def one(request: PurchaseRequest) -> Order | tuple[int, str]:
        try:
            return await checkout.purchase(request)
        except CheckoutError as exc:
            return exc.status, exc.code
    return list(await asyncio.gather(*(one(r) for r in requests)))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_pass_buys_once_and_its_keyed_retry_replays_that_purchase(settings: Settings, strategy: str) -> None:
    """Issue 22, item 4: without a per-user limit one admitted buyer bought 5 x 10 units with one pass and took the
    whole product. Five purchases sent at once with one pass (without keys, then each with its own key) place one
    order; the others are 403 ``queue_pass_used``; the winner's retry with its key gets its order back."""
    url = settings.database_url
    pid = room_product(url, 50, rate=1000)

    async def scenario() -> None:
        async with replica(settings, strategy) as r:
            bare = await pass_of(r.rooms, pid, 7)
            first = await outcomes(r.checkout, [PurchaseRequest(7, pid, 10, queue_pass=bare) for _ in range(5)])
            orders = [o for o in first if isinstance(o, Order)]
            assert len(orders) == 1 and first.count((403, "queue_pass_used")) == 4, first
            again = await outcomes(r.checkout, [PurchaseRequest(7, pid, 1, queue_pass=bare)])
            assert again == [(403, "queue_pass_used")]

            keyed = await pass_of(r.rooms, pid, 8)
            tries = [PurchaseRequest(8, pid, 10, idempotency_key=f"k-{strategy}-{n}", queue_pass=keyed)
                     for n in range(5)]
            second = await outcomes(r.checkout, tries)
            won = [(n, o) for n, o in enumerate(second) if isinstance(o, Order)]
            assert len(won) == 1 and second.count((403, "queue_pass_used")) == 4, second
            n, order = won[0]
            retry = await outcomes(r.checkout, [tries[n]])
            assert isinstance(retry[0], Order) and retry[0].id == order.id and retry[0].replayed, retry
            # The keys of the refused tries promised nothing: their retries are refused again, not replayed.
            refused_retry = await outcomes(r.checkout, [tries[(n + 1) % 5]])
            assert refused_retry == [(403, "queue_pass_used")]

    asyncio.run(scenario())
    assert sorted(orders_of(url, pid).values()) == [(7, 10), (8, 10)]
    assert_invariant(url, 50, product=pid)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_pass_of_an_earlier_opening_buys_nothing_even_where_the_copy_is_stale(settings: Settings,
                                                                                 strategy: str) -> None:
    """The room is closed and opened again (a new line) behind the replica's back: a pass of the old line is
    refused by the transaction; once the copy has seen the new opening, in memory too."""
    url = settings.database_url
    pid = room_product(url, 10, rate=1000)

    async def scenario() -> None:
        async with replica(settings, strategy) as r:
            old = await pass_of(r.rooms, pid, 9)
            sql(url, "UPDATE products SET room_generation = room_generation + 1, admission_origin = now(), "
                     "admitted_before = 0 WHERE id = %s", (pid,))
            for key in (None, f"old-{strategy}"):
                stale = await outcomes(r.checkout, [PurchaseRequest(9, pid, 1, idempotency_key=key, queue_pass=old)])
                assert stale == [(403, "queue_pass_invalid")], stale
            await r.schedule.load()
            fresh_copy = await outcomes(r.checkout, [PurchaseRequest(9, pid, 1, queue_pass=old)])
            assert fresh_copy == [(403, "queue_pass_invalid")]
            new = await pass_of(r.rooms, pid, 9)  # the new line: a new place, a pass that buys
            assert isinstance((await outcomes(r.checkout, [PurchaseRequest(9, pid, 1, queue_pass=new)]))[0], Order)

    asyncio.run(scenario())
    assert list(orders_of(url, pid).values()) == [(9, 1)]
    assert_invariant(url, 10, product=pid)


def expired_pass(product_id: int, user_id: int, generation: int = 0) -> str:
    """A genuine pass (signed with the replica's secret) that expired a minute ago."""
    return Signer("test-secret").sign(PASS, product_id, user_id, generation, int(time.time()) - 60)


async def answer_unless_it_waits(database_url: str, work: asyncio.Future[Order | tuple[int, str]]) -> object:
    """The request's answer, or "waited" as soon as some backend waits on a lock — never a time limit."""
    while not work.done():
        if lock_waiters(database_url):
            return "waited"
        await asyncio.sleep(0.01)
    return work.result()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_retry_whose_pass_expired_waits_for_its_first_try_still_committing(settings: Settings,
                                                                             strategy: str) -> None:
    """Issue 22, item 6: the first try holds its key and its order in a transaction not yet committed (as a batch
    on another replica does); its retry, whose pass has expired meanwhile, was looked up once and told 403. It must
    wait on the key's row and get the order once the first try commits — and be refused once it rolls back."""
    url = settings.database_url
    pid = room_product(url, 10, rate=1000)

    async def scenario() -> None:
        async with replica(settings, strategy) as r:
            for commits, user, key in ((True, 5, f"slow-{strategy}"), (False, 6, f"lost-{strategy}")):
                retry = PurchaseRequest(user, pid, 2, idempotency_key=key, queue_pass=expired_pass(pid, user))
                with open_transaction(url) as first:
                    first.execute("INSERT INTO orders (user_id, product_id, quantity, replica, room_generation) "
                                  "VALUES (%s, %s, 2, 'elsewhere', 0) RETURNING id", (user, pid))
                    order_id = first.fetchone()[0]
                    first.execute("INSERT INTO idempotency_keys (key, fingerprint, order_id) VALUES (%s, %s, %s)",
                                  (key, retry.fingerprint, order_id))
                    first.execute("UPDATE products SET stock = stock - 2 WHERE id = %s", (pid,))
                    work = asyncio.ensure_future(outcomes(r.checkout, [retry]))
                    seen = await answer_unless_it_waits(url, work)
                    assert seen == "waited", seen  # not a definite answer while the first try is open
                    if not commits:
                        first.connection.rollback()
                answer = (await work)[0]
                if commits:
                    assert isinstance(answer, Order) and answer.id == order_id and answer.replayed, answer
                else:
                    assert answer == (403, "queue_pass_expired"), answer

    asyncio.run(scenario())
    assert list(orders_of(url, pid).values()) == [(5, 2)]
    assert_invariant(url, 10, product=pid)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_keyed_request_refused_from_memory_never_waits_on_the_products_row(settings: Settings,
                                                                            strategy: str) -> None:
    """Issue 22, item 7: an Idempotency-Key let a request skip every in-memory refusal and reach the hot row (40
    keyed purchases without a pass: ~28 rolled-back batches). With the product's row held locked, keyed requests
    without a pass or with an expired one are each answered their refusal (a probe of the key, rolled back, is all
    they cost); a keyed purchase with a valid pass does wait for the row. (Keyed requests before the start or
    when sold out are still decided under the row lock, where a first try queued for it is settled before or
    after them: tests/test_cancellation.py shows why.)"""
    url = settings.database_url
    room = room_product(url, 10, rate=1000)

    async def scenario() -> None:
        async with replica(settings, strategy) as r:
            good = await pass_of(r.rooms, room, 3)
            cases = [
                (PurchaseRequest(1, room, 1, idempotency_key="no-pass"), (403, "queue_pass_required")),
                (PurchaseRequest(2, room, 1, idempotency_key="old-pass", queue_pass=expired_pass(room, 2)),
                 (403, "queue_pass_expired")),
            ]
            with open_transaction(url) as holder:
                holder.execute("SELECT id FROM products FOR UPDATE")
                for request, refusal in cases:
                    seen = await answer_unless_it_waits(url, asyncio.ensure_future(outcomes(r.checkout, [request])))
                    assert seen == [refusal], (request, seen)
                buying = asyncio.ensure_future(outcomes(r.checkout, [PurchaseRequest(
                    3, room, 1, idempotency_key="good", queue_pass=good)]))
                assert await answer_unless_it_waits(url, buying) == "waited"  # the control: a real purchase does
            assert isinstance((await buying)[0], Order)

    asyncio.run(scenario())
    assert list(orders_of(url, room).values()) == [(3, 1)]
    assert sql(url, "SELECT count(*) FROM idempotency_keys")[0][0] == 1  # the probes left nothing behind


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_the_transaction_refuses_a_pass_expired_by_postgresqls_clock(settings: Settings, strategy: str) -> None:
    """A replica whose clock is two minutes behind accepts, in memory, a pass that expired a minute ago (as a
    purchase that waited for the row past its pass's expiry would be): the transaction refuses it, with and
    without a key, and sells nothing."""
    url = settings.database_url
    pid = room_product(url, 10, rate=1000)

    async def scenario() -> None:
        async with replica(settings, strategy, clock=DatabaseClock(lambda: time.time() - 120)) as r:
            late = expired_pass(pid, 4)
            for key in (None, f"late-{strategy}"):
                answer = await outcomes(r.checkout, [PurchaseRequest(4, pid, 1, idempotency_key=key, queue_pass=late)])
                assert answer == [(403, "queue_pass_expired")], answer

    asyncio.run(scenario())
    assert orders_of(url, pid) == {}


def postgres_now(database_url: str) -> float:
    return float(sql(database_url, "SELECT extract(epoch FROM clock_timestamp())::float8")[0][0])


async def until_postgres_passes(database_url: str, instant: float) -> None:
    """Wait (a condition, not a time) until PostgreSQL's clock is past ``instant``."""
    deadline = time.monotonic() + 60
    while postgres_now(database_url) <= instant:
        assert time.monotonic() < deadline, "PostgreSQL's clock stands still"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_retry_told_its_pass_expired_is_never_followed_by_its_first_tries_order(settings: Settings,
                                                                                  strategy: str) -> None:
    """Issue 45, item 1: the first try (pass + key) waits for the product's row, held by another transaction,
    past its pass's expiry; its retry is answered meanwhile. It was told 403 ``queue_pass_expired`` (the probe
    found no key: the first try claims its key only once it has the row), and then the first try sold, because
    the transaction compared the expiry with its own start. The answers must agree: a retry told "expired" means
    the first try sells nothing."""
    url = settings.database_url
    pid = room_product(url, 10, rate=1000)

    async def scenario() -> None:
        async with replica(settings, strategy) as r:
            expires = int(postgres_now(url)) + 2
            short = Signer("test-secret").sign(PASS, pid, 11, 0, expires)
            request = PurchaseRequest(11, pid, 1, idempotency_key=f"slow-{strategy}", queue_pass=short)
            with row_locked(url, pid):
                first = asyncio.ensure_future(outcomes(r.checkout, [request]))
                await wait_for_lock_waiters(url, 1)
                await until_postgres_passes(url, expires + 0.5)
                retry = await outcomes(r.checkout, [request])
            first_answer = (await first)[0]
            if isinstance(first_answer, Order):
                assert isinstance(retry[0], Order) and retry[0].id == first_answer.id, (first_answer, retry)
            else:
                assert first_answer == retry[0] == (403, "queue_pass_expired"), (first_answer, retry)
            assert retry == [(403, "queue_pass_expired")], retry  # the row was held: the probe found no key

    asyncio.run(scenario())
    assert orders_of(url, pid) == {}
    assert_invariant(url, 10, product=pid)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_pass_that_bought_is_refused_from_memory(settings: Settings, strategy: str) -> None:
    """From issue 45's review: a pass that had bought still reached the product's row (and skipped the admission
    control a room's pacing exempts passes from) to be told ``queue_pass_used`` there. Once this replica has seen
    it buy, another purchase with it is refused without waiting for the row, keyed or not; the first purchase's
    keyed retry still gets its order."""
    url = settings.database_url
    pid = room_product(url, 10, rate=1000)

    async def scenario() -> None:
        async with replica(settings, strategy) as r:
            valid = await pass_of(r.rooms, pid, 4)
            first = PurchaseRequest(4, pid, 1, idempotency_key=f"first-{strategy}", queue_pass=valid)
            bought = (await outcomes(r.checkout, [first]))[0]
            assert isinstance(bought, Order), bought
            with row_locked(url, pid):
                for key in (None, f"again-{strategy}"):
                    again = PurchaseRequest(4, pid, 1, idempotency_key=key, queue_pass=valid)
                    seen = await answer_unless_it_waits(url, asyncio.ensure_future(outcomes(r.checkout, [again])))
                    assert seen == [(403, "queue_pass_used")], (key, seen)
                retry = await answer_unless_it_waits(url, asyncio.ensure_future(outcomes(r.checkout, [first])))
                assert isinstance(retry, list) and isinstance(retry[0], Order) and retry[0].id == bought.id, retry

    asyncio.run(scenario())
    assert list(orders_of(url, pid).values()) == [(4, 1)]
    assert_invariant(url, 10, product=pid)
