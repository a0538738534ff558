"""A waiting room's pass against real PostgreSQL and Redis, for each strategy: it admits one purchase (its retries
with the same Idempotency-Key replay it), a pass of an earlier opening of the room buys nothing even on a replica
whose copy has not seen the room reopen, and a retry whose pass has expired since is never told a definite "no" for
an order its first try is placing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest

from hypercheckout.app import redis_client
from hypercheckout.checkout.errors import CheckoutError
from hypercheckout.checkout.models import Order, PurchaseRequest
from hypercheckout.checkout.queue import WaitingRooms
from hypercheckout.checkout.schedule import SaleSchedule
from hypercheckout.checkout.service import Checkout
from hypercheckout.checkout.soldout import SoldOutFlags
from hypercheckout.checkout.strategy import make_strategy
from hypercheckout.settings import STRATEGIES, Settings
from hypercheckout.store import Store
from tests.helpers import assert_invariant, orders_of, sql
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
        standing = rooms.read(ticket)
        if standing["status"] == "admitted":
            return str(standing["pass"])
        assert standing["status"] == "waiting", standing
        await asyncio.sleep(0.005)
    raise AssertionError("never admitted")


async def outcomes(checkout: Checkout, requests: list[PurchaseRequest]) -> list[Order | tuple[int, str]]:
    """Each request's order, or its refusal as (status, code), all sent at once."""
    async def one(request: PurchaseRequest) -> Order | tuple[int, str]:
        try:
            return await checkout.purchase(checkout.refuse_from_memory(request))
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
