"""A statement PostgreSQL cancels, and a strategy task cancelled at shutdown: every buyer gets an honest answer.

aiopg reports a statement cancelled by the server (statement_timeout, pg_cancel_backend) as
``asyncio.CancelledError``, which passes ``except Exception``. These tests hold the product's row lock from another
connection, cancel the backend that waits behind it, and check that each strategy answers 503 with the outcome
it can vouch for, writes nothing, and keeps selling — and that buyers queued behind a failed batch are served.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from hypercheckout.app import redis_client
from hypercheckout.checkout.batched import BatchedStrategy
from hypercheckout.checkout.errors import CheckoutError
from hypercheckout.checkout.models import Order, PurchaseRequest
from hypercheckout.checkout.schedule import SaleSchedule
from hypercheckout.checkout.service import Checkout
from hypercheckout.checkout.soldout import SoldOutFlags
from hypercheckout.checkout.strategy import make_strategy
from hypercheckout.processes import wait_until
from hypercheckout.settings import Settings
from hypercheckout.store import Store
from tests.helpers import orders_of, set_stock, sql, stock_of
from tests.locks import cancel_backend, row_locked, wait_for_lock_waiters

STRATEGIES = ["pessimistic", "atomic", "batched"]


@asynccontextmanager
async def replica(settings: Settings, strategy: str, name: str = "test-1") -> AsyncIterator[Checkout]:
    """One replica's purchase path (checkout service, strategy, sold-out flags, pool) without HTTP."""
    store = await Store.connect(settings.database_url, size=4, timeout=5)
    client = redis_client(settings)
    chosen = make_strategy(strategy, store, replica=name)
    flags = SoldOutFlags(store, client, prefix=settings.redis_prefix, recheck_seconds=60)
    try:
        schedule = SaleSchedule(store, refresh_seconds=60)
        await schedule.load()
        yield Checkout(chosen, flags, store, schedule)
    finally:
        await chosen.close()
        await client.aclose()
        await store.close()


def assert_nothing_sold(error: BaseException) -> None:
    assert isinstance(error, CheckoutError), repr(error)
    assert (error.status, error.code, error.extra) == (503, "unavailable", {"outcome": "nothing_sold"}), error


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_statement_postgresql_cancels_is_a_503_with_nothing_sold(settings: Settings, strategy: str) -> None:
    url = settings.database_url
    set_stock(url, 5)

    async def scenario() -> None:
        async with replica(settings, strategy) as checkout:
            with row_locked(url):
                buying = asyncio.create_task(checkout.purchase(PurchaseRequest(1, 1, 1)))
                [pid] = await wait_for_lock_waiters(url, 1)
                cancel_backend(url, pid)
                with pytest.raises(CheckoutError) as refused:
                    await asyncio.wait_for(buying, 5)
            assert_nothing_sold(refused.value)
            assert orders_of(url) == {} and stock_of(url) == 5
            # The replica goes on selling on the same pool.
            order = await asyncio.wait_for(checkout.purchase(PurchaseRequest(2, 1, 1)), 5)
            assert isinstance(order, Order) and stock_of(url) == 4

    asyncio.run(scenario())


def test_buyers_queued_behind_a_cancelled_batch_are_still_served(settings: Settings) -> None:
    url = settings.database_url
    set_stock(url, 5)

    async def scenario() -> None:
        async with replica(settings, "batched") as checkout:
            with row_locked(url):
                first = asyncio.create_task(checkout.purchase(PurchaseRequest(1, 1, 1)))
                [pid] = await wait_for_lock_waiters(url, 1)
                second = asyncio.create_task(checkout.purchase(PurchaseRequest(2, 1, 1)))
                await asyncio.sleep(0)  # it queues behind the batch in the database
                cancel_backend(url, pid)
                with pytest.raises(CheckoutError) as refused:
                    await asyncio.wait_for(first, 5)
                assert_nothing_sold(refused.value)
                # The second buyer's batch goes to the database by itself, and waits for the lock in turn.
                await wait_for_lock_waiters(url, 1, timeout=5)
            order = await asyncio.wait_for(second, 5)
            assert isinstance(order, Order) and orders_of(url) == {order.id: (2, 1)}

    asyncio.run(scenario())


@pytest.mark.parametrize("keyed", [True, False], ids=["two-statement batch", "one-statement batch"])
def test_a_batcher_cancelled_at_shutdown_answers_every_buyer(settings: Settings, keyed: bool) -> None:
    """close() past its time limit cancels the batch task: the buyer whose batch was in the database may or may not
    have bought (outcome unknown); the one still queued certainly did not. A batch settled in two statements (here:
    one with an Idempotency-Key) never sent its COMMIT, and its closed connection rolls it back. A plain batch's one
    statement is its own transaction, already sent: it goes on waiting for the row, and commits once it has it, as
    the atomic strategy's statement does — the answer said the outcome was unknown, and the database holds one of
    the two outcomes, whole."""
    url = settings.database_url
    set_stock(url, 5)

    async def scenario() -> None:
        store = await Store.connect(url, size=2, timeout=5)
        strategy = BatchedStrategy(store, replica="test-1")
        try:
            with row_locked(url):
                first = PurchaseRequest(1, 1, 1, idempotency_key="cancelled-at-shutdown" if keyed else None)
                in_database = asyncio.create_task(strategy.purchase(first))
                await wait_for_lock_waiters(url, 1)
                queued = asyncio.create_task(strategy.purchase(PurchaseRequest(2, 1, 1)))
                await asyncio.sleep(0)
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(strategy.close(), 0.3)  # as app._bounded gives up on a step
                outcomes = await asyncio.wait_for(
                    asyncio.gather(in_database, queued, return_exceptions=True), 5)
        finally:
            await store.close()
        unknown, nothing = outcomes
        assert isinstance(unknown, CheckoutError) and unknown.extra == {"outcome": "unknown"}, unknown
        assert_nothing_sold(nothing)
        assert isinstance(nothing, CheckoutError) and "shutting down" in nothing.message

    asyncio.run(scenario())
    if keyed:
        assert orders_of(url) == {} and stock_of(url) == 5  # its connection was closed: the server rolled back
    else:
        # The sent statement's backend, its client gone, runs to its end once the row is free.
        wait_until(lambda: not sql(url, """
            SELECT 1 FROM pg_stat_activity
            WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE '%%WITH sold AS%%'
        """), timeout=10, what="the plain statement's backend to end")
        orders = orders_of(url)
        assert list(orders.values()) in ([], [(1, 1)])  # nothing, or buyer 1's unit; never buyer 2's
        assert stock_of(url) == 5 - len(orders)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_retry_of_a_placed_order_is_replayed_even_though_it_took_the_last_unit(
        settings: Settings, strategy: str) -> None:
    """The same Idempotency-Key on two replicas while the row is locked: one places the order, the other replays
    it — never "out of stock" for a key whose order exists."""
    url = settings.database_url
    set_stock(url, 1)
    request = PurchaseRequest(7, 1, 1, idempotency_key="the-last-one")

    async def scenario() -> tuple[Order, Order]:
        async with replica(settings, strategy, "a") as a, replica(settings, strategy, "b") as b:
            with row_locked(url):
                first = asyncio.create_task(a.purchase(request))
                await wait_for_lock_waiters(url, 1)
                retry = asyncio.create_task(b.purchase(request))
                await wait_for_lock_waiters(url, 2)
            return await asyncio.wait_for(asyncio.gather(first, retry), 10)

    answers = asyncio.run(scenario())
    assert {answer.id for answer in answers} == set(orders_of(url)) and len(orders_of(url)) == 1, answers
    assert sorted(answer.replayed for answer in answers) == [False, True]
    assert stock_of(url) == 0


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_keyed_retry_is_not_refused_by_a_sold_out_flag_while_its_first_try_is_in_flight(
        settings: Settings, strategy: str) -> None:
    """Replica b believes the product sold out; the retry it gets must wait for the first try's outcome instead of
    answering a definite 409 for a purchase that is about to be placed."""
    url = settings.database_url
    set_stock(url, 1)
    request = PurchaseRequest(8, 1, 1, idempotency_key="in-flight")

    async def scenario() -> tuple[Order, Order]:
        async with replica(settings, strategy, "a") as a, replica(settings, strategy, "b") as b:
            b.sold_out.mark(1)
            with row_locked(url):
                first = asyncio.create_task(a.purchase(request))
                await wait_for_lock_waiters(url, 1)
                retry = asyncio.create_task(b.purchase(request))
                await asyncio.sleep(0.1)
                assert not retry.done(), retry.exception()
            return await asyncio.wait_for(asyncio.gather(first, retry), 10)

    placed, replayed = asyncio.run(scenario())
    assert placed.id == replayed.id and replayed.replayed and set(orders_of(url)) == {placed.id}
