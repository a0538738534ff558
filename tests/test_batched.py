"""The batched strategy, called directly against a real database: what one shared transaction must guarantee."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import psycopg2
import pytest

from hypercheckout.checkout.batched import BUSY_BATCH, BatchedStrategy
from hypercheckout.checkout.errors import CheckoutError
from hypercheckout.checkout.models import Order, PurchaseRequest
from hypercheckout.settings import Settings
from hypercheckout.store import Store
from hypercheckout.store.arrays import int_array
from hypercheckout.store.prepared import Prepared
from tests.helpers import assert_invariant, orders_of, set_stock, sql, stock_of


async def settle(settings: Settings, wanted: Sequence[tuple[int, int, int]], *, window_ms: float = 200,
                 max_batch: int = 64) -> tuple[list[Order | BaseException], BatchedStrategy]:
    """Submit (user, product, qty) purchases in this order, in the same window; return each one's outcome."""
    store = await Store.connect(settings.database_url, size=2, timeout=5)
    strategy = BatchedStrategy(store, replica="test-1", window_ms=window_ms, max_batch=max_batch)
    try:
        # Tasks start in creation order, and each enqueues before its first await: arrival order is list order.
        tasks = [asyncio.create_task(strategy.purchase(PurchaseRequest(u, p, q))) for u, p, q in wanted]
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        await strategy.close()
    finally:
        await store.close()
    return outcomes, strategy


def test_a_head_that_does_not_fit_is_refused_and_the_next_one_served(settings: Settings) -> None:
    set_stock(settings.database_url, 2)
    (head, nxt), strategy = asyncio.run(settle(settings, [(1, 1, 3), (2, 1, 1)]))
    assert isinstance(head, CheckoutError)
    assert (head.status, head.code, head.extra["remaining"]) == (409, "out_of_stock", 2)
    assert isinstance(nxt, Order) and nxt.quantity == 1 and nxt.remaining == 1
    assert strategy.batch_sizes == {2: 1}  # both were settled in one transaction
    assert orders_of(settings.database_url) == {nxt.id: (2, 1)}
    assert stock_of(settings.database_url) == 1


def test_arrival_order_decides_and_nobody_gets_a_partial_fill(settings: Settings) -> None:
    set_stock(settings.database_url, 5)
    outcomes, _ = asyncio.run(settle(settings, [(1, 1, 2), (2, 1, 2), (3, 1, 2), (4, 1, 1)]))
    assert [isinstance(o, Order) for o in outcomes] == [True, True, False, True]
    assert sorted(orders_of(settings.database_url).values()) == [(1, 2), (2, 2), (4, 1)]
    assert stock_of(settings.database_url) == 0


def test_a_database_error_mid_batch_fails_every_waiter_with_503_and_writes_nothing(settings: Settings) -> None:
    # A real error raised by PostgreSQL while the batch's INSERT runs, for one buyer of the batch.
    sql(settings.database_url, """
        CREATE FUNCTION refuse_buyer_666() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN IF NEW.user_id = 666 THEN RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$;
        CREATE TRIGGER refuse_buyer_666 BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION refuse_buyer_666();
    """)
    outcomes, strategy = asyncio.run(settle(settings, [(1, 1, 1), (666, 1, 1), (2, 1, 1)]))
    assert strategy.batch_sizes == {3: 1}
    for outcome in outcomes:
        assert isinstance(outcome, CheckoutError) and (outcome.status, outcome.code) == (503, "unavailable")
    assert orders_of(settings.database_url) == {}
    assert stock_of(settings.database_url) == 10_000


def test_an_unknown_product_fails_its_whole_batch_with_404(settings: Settings) -> None:
    outcomes, _ = asyncio.run(settle(settings, [(1, 99, 1), (2, 99, 1)]))
    assert all(isinstance(o, CheckoutError) and o.code == "unknown_product" for o in outcomes)


def test_batches_are_capped_and_products_are_batched_separately(settings: Settings) -> None:
    sql(settings.database_url, "INSERT INTO products (name, stock, initial_stock) VALUES ('second', 10, 10)")
    wanted = [(u, 1, 1) for u in range(1, 11)] + [(u, 2, 1) for u in range(1, 4)]
    outcomes, strategy = asyncio.run(settle(settings, wanted, max_batch=4))
    assert all(isinstance(o, Order) for o in outcomes)
    assert max(strategy.batch_sizes) <= 4
    assert sum(size * n for size, n in strategy.batch_sizes.items()) == 13
    assert stock_of(settings.database_url, 2) == 7


def test_closing_settles_every_open_batch_then_refuses_new_purchases(settings: Settings) -> None:
    async def scenario() -> tuple[list[Order | BaseException], BaseException | None]:
        store = await Store.connect(settings.database_url, size=2, timeout=5)
        strategy = BatchedStrategy(store, replica="test-1", window_ms=5_000)  # a window far longer than the test
        tasks = [asyncio.create_task(strategy.purchase(PurchaseRequest(u, 1, 1))) for u in range(1, 6)]
        await asyncio.sleep(0)  # let them enqueue
        closing = asyncio.create_task(strategy.close())
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
        await closing
        late: BaseException | None = None
        try:
            await strategy.purchase(PurchaseRequest(9, 1, 1))
        except CheckoutError as exc:
            late = exc
        await store.close()
        return outcomes, late

    outcomes, late = asyncio.run(scenario())
    assert all(isinstance(o, Order) for o in outcomes)
    assert len(orders_of(settings.database_url)) == 5
    assert isinstance(late, CheckoutError) and late.status == 503


def test_buyers_who_queued_during_a_settle_do_not_wait_another_window(settings: Settings) -> None:
    """The window is counted from a buyer's arrival, not from the end of the previous batch."""
    window = 0.4

    async def scenario() -> tuple[float, float]:
        store = await Store.connect(settings.database_url, size=2, timeout=5)
        strategy = BatchedStrategy(store, replica="test-1", window_ms=window * 1000)
        blocker = psycopg2.connect(settings.database_url)
        loop = asyncio.get_running_loop()
        try:
            with blocker.cursor() as cur:  # holds the product row: the first batch waits on its lock
                cur.execute("SELECT stock FROM products WHERE id = 1 FOR UPDATE")
            first = asyncio.create_task(strategy.purchase(PurchaseRequest(1, 1, 1)))
            await asyncio.sleep(window + 0.05)  # the first batch has left its window and waits on the lock
            second = asyncio.create_task(strategy.purchase(PurchaseRequest(2, 1, 1)))
            await asyncio.sleep(window + 0.05)  # the second buyer has waited a whole window already
            released = loop.time()
            blocker.commit()
            await first
            await second
            return loop.time() - released, window
        finally:
            blocker.close()
            await strategy.close()
            await store.close()

    after_release, window = asyncio.run(scenario())
    assert after_release < window / 2, f"the second buyer waited {after_release:.3f} s after the first batch"
    assert len(orders_of(settings.database_url)) == 2


def test_a_batch_that_writes_nothing_leaves_no_transaction_open(settings: Settings) -> None:
    """BEGIN and COMMIT ride on the batch's statements; a batch that grants nothing must still end its
    transaction, or its connection would hold the product's row lock back in the pool."""
    set_stock(settings.database_url, 0)

    async def scenario() -> list[BaseException | Order]:
        store = await Store.connect(settings.database_url, size=1, timeout=5)
        strategy = BatchedStrategy(store, replica="test-1", window_ms=1)
        try:
            outcomes = [await asyncio.gather(strategy.purchase(PurchaseRequest(1, product, 1)),
                                             return_exceptions=True) for product in (99, 1)]
            open_transactions = sql(settings.database_url, "SELECT count(*) FROM pg_stat_activity WHERE "
                                    "datname = current_database() AND state LIKE 'idle in transaction%'")
            assert open_transactions == [(0,)]
            # Back in the pool ready for the next batch (aiopg closes a connection returned mid-transaction).
            assert store.pool.freesize == 1
            return [o[0] for o in outcomes]
        finally:
            await strategy.close()
            await store.close()

    unknown, short = asyncio.run(scenario())
    assert isinstance(unknown, CheckoutError) and unknown.code == "unknown_product"
    assert isinstance(short, CheckoutError) and short.code == "out_of_stock"


def test_integer_arrays_go_as_one_literal_that_postgresql_reads_as_the_list(settings: Settings) -> None:
    """The batch's order ids, buyers and quantities are sent as array literals (store/arrays.py): PostgreSQL must
    read each as the list it was, large and negative numbers and the empty array included; anything but an integer
    is refused before it reaches the statement."""
    values = [1, -2, 9_223_372_036_854_775_807, 0]
    assert int_array(values) == "{1,-2,9223372036854775807,0}"
    assert sql(settings.database_url, "SELECT %s::bigint[], %s::integer[]", (int_array(values), int_array([]))) \
        == [(values, [])]
    for bad in ([1.5], ["1}"], [None]):
        with pytest.raises((ValueError, TypeError)):
            int_array(bad)  # type: ignore[list-item]


def test_a_batch_of_many_buyers_writes_each_order_with_its_buyer_and_quantity(settings: Settings) -> None:
    set_stock(settings.database_url, 1000)
    wanted = [(10_000 + n, 1, 1 + n % 3) for n in range(40)]
    outcomes, strategy = asyncio.run(settle(settings, wanted))
    assert strategy.batch_sizes == {40: 1}
    assert all(isinstance(o, Order) for o in outcomes)
    assert orders_of(settings.database_url) == {o.id: (u, q) for o, (u, _, q) in zip(outcomes, wanted, strict=True)
                                                if isinstance(o, Order)}
    assert stock_of(settings.database_url) == 1000 - sum(q for _, _, q in wanted)


def test_a_plain_batch_is_settled_by_one_statement_and_anything_else_the_two_statement_way(
        settings: Settings) -> None:
    """No key, no pass, no per-user limit or waiting room, stock for all: one statement grants every purchase, the
    orders carrying the transaction's time and the stock after the batch. Stock short: the plain statement writes
    nothing, and the batch is decided request by request (the head that does not fit refused, the next served)."""
    set_stock(settings.database_url, 10)
    plain, strategy = asyncio.run(settle(settings, [(1, 1, 2), (2, 1, 3), (3, 1, 1)]))
    assert strategy.plain_batches == 1 and strategy.batch_sizes == {3: 1}
    assert all(isinstance(o, Order) for o in plain)
    orders = [o for o in plain if isinstance(o, Order)]
    assert [o.remaining for o in orders] == [4, 4, 4] and len({o.created_at for o in orders}) == 1
    assert orders_of(settings.database_url) == {o.id: (o.user_id, o.quantity) for o in orders}
    created = sql(settings.database_url, "SELECT DISTINCT created_at FROM orders WHERE product_id = 1")
    assert created == [(orders[0].created_at,)]

    short, strategy = asyncio.run(settle(settings, [(4, 1, 3), (5, 1, 5), (6, 1, 1)]))
    assert strategy.plain_batches == 0
    assert [isinstance(o, Order) for o in short] == [True, False, True]
    assert stock_of(settings.database_url) == 0
    assert_invariant(settings.database_url, 10)


def test_a_product_with_a_per_user_limit_skips_the_plain_statement_once_its_rules_are_seen(
        settings: Settings) -> None:
    sql(settings.database_url, "UPDATE products SET per_user_limit = 1 WHERE id = 1")

    async def scenario() -> tuple[list[Order | BaseException], BatchedStrategy]:
        store = await Store.connect(settings.database_url, size=2, timeout=5)
        strategy = BatchedStrategy(store, replica="test-1", window_ms=50)
        try:
            first = await asyncio.gather(strategy.purchase(PurchaseRequest(1, 1, 1)), return_exceptions=True)
            later = await asyncio.gather(*(strategy.purchase(PurchaseRequest(1, 1, 1)) for _ in range(2)),
                                         return_exceptions=True)
            return [*first, *later], strategy
        finally:
            await strategy.close()
            await store.close()

    outcomes, strategy = asyncio.run(scenario())
    assert strategy.plain_batches == 0
    assert [isinstance(o, Order) for o in outcomes] == [True, False, False]
    assert all(o.code == "limit_reached" for o in outcomes[1:] if isinstance(o, CheckoutError))
    assert len(orders_of(settings.database_url)) == 1


def test_plain_batches_of_two_replicas_at_once_never_sell_more_than_the_stock(settings: Settings) -> None:
    """Two replicas' batches of 40 race for 50 units: one plain statement takes 40, the other finds 10 once the
    row is free, writes nothing, and its batch is decided one by one: exactly 50 sold."""
    set_stock(settings.database_url, 50)

    async def replica(name: str, first_user: int) -> list[Order | BaseException]:
        store = await Store.connect(settings.database_url, size=2, timeout=5)
        strategy = BatchedStrategy(store, replica=name, window_ms=50)
        try:
            return await asyncio.gather(*(strategy.purchase(PurchaseRequest(first_user + n, 1, 1))
                                          for n in range(40)), return_exceptions=True)
        finally:
            await strategy.close()
            await store.close()

    async def both() -> list[list[Order | BaseException]]:
        return await asyncio.gather(replica("test-1", 1), replica("test-2", 1001))

    outcomes = [o for side in asyncio.run(both()) for o in side]
    sold = [o for o in outcomes if isinstance(o, Order)]
    assert len(sold) == 50 and stock_of(settings.database_url) == 0
    assert all(isinstance(o, CheckoutError) and o.code == "out_of_stock" for o in outcomes if not isinstance(o, Order))
    assert orders_of(settings.database_url) == {o.id: (o.user_id, 1) for o in sold}
    assert_invariant(settings.database_url, 50)


def test_a_full_batch_goes_at_once_whatever_its_window(settings: Settings) -> None:
    """The window is a longest wait: the purchase that fills a batch ends it (a window of an hour would otherwise
    hold these buyers for an hour), and the next buyer waits for a window of its own."""
    async def scenario() -> tuple[list[Order], bool]:
        store = await Store.connect(settings.database_url, size=2, timeout=5)
        strategy = BatchedStrategy(store, replica="test-1", window_ms=3_600_000, max_batch=3)
        try:
            full = [asyncio.create_task(strategy.purchase(PurchaseRequest(u, 1, 1))) for u in (1, 2, 3)]
            fourth = asyncio.create_task(strategy.purchase(PurchaseRequest(4, 1, 1)))
            orders = await asyncio.wait_for(asyncio.gather(*full), 60)
            await asyncio.sleep(0.2)
            alone_waits = not fourth.done()
            await strategy.close()  # ends the fourth's window: it is settled before close returns
            assert isinstance(await fourth, Order)
            return orders, alone_waits
        finally:
            await store.close()

    orders, alone_waits = asyncio.run(scenario())
    assert [o.user_id for o in orders] == [1, 2, 3] and alone_waits
    assert len(orders_of(settings.database_url)) == 4



async def _batches_on_one_connection(settings: Settings, between: str = "", *, elsewhere: bool = False,
                                     keyed: bool = False) -> tuple[list[list[Order | BaseException]], list[tuple[str]]]:
    """Three batches one after another on a pool of one connection (plain, or with Idempotency-Keys: the
    two-statement way), ``between`` run after the first (on that same connection, or ``elsewhere``: on another);
    then the names of the statements the pool's connection has prepared."""
    store = await Store.connect(settings.database_url, size=1, timeout=5)
    strategy = BatchedStrategy(store, replica="test-1", window_ms=1)
    try:
        outcomes = []
        for run in range(3):
            outcomes.append(await asyncio.gather(*(strategy.purchase(PurchaseRequest(
                10 * run + n, 1, 1, idempotency_key=f"key-{run}-{n}" if keyed else None)) for n in range(1, 4)),
                return_exceptions=True))
            if run == 0 and between and elsewhere:
                sql(settings.database_url, between)
            elif run == 0 and between:
                async with store.cursor() as cur:
                    await cur.execute(between)
        async with store.cursor() as cur:
            await cur.execute("SELECT name FROM pg_prepared_statements ORDER BY name")
            prepared = await cur.fetchall()
        return outcomes, prepared
    finally:
        await strategy.close()
        await store.close()


PREPARED = {False: [("settle_plain_batch",)], True: [("lock_stock_for_batch",), ("settle_batch",)]}


@pytest.mark.parametrize("keyed", [False, True], ids=["plain", "two statements"])
def test_a_batch_statement_is_prepared_once_on_a_connection_then_only_executed(settings: Settings,
                                                                                keyed: bool) -> None:
    """PostgreSQL parses and plans a batch's statements once per connection (store/prepared.py): three batches on
    one connection prepare them once (a second PREPARE of a name would fail) and each sells what it should."""
    set_stock(settings.database_url, 100)
    outcomes, prepared = asyncio.run(_batches_on_one_connection(settings, keyed=keyed))
    assert all(isinstance(o, Order) for batch in outcomes for o in batch)
    assert prepared == PREPARED[keyed]
    assert len(orders_of(settings.database_url)) == 9
    assert_invariant(settings.database_url, 100)


@pytest.mark.parametrize(("change", "elsewhere", "keyed"), [
    ("DEALLOCATE ALL", False, False),
    ("ALTER TABLE products ALTER COLUMN stock TYPE bigint", True, False),
    ("DEALLOCATE ALL", False, True),
    ("ALTER TABLE products ALTER COLUMN stock TYPE bigint", True, True),
])
def test_a_connection_whose_prepared_statement_went_stale_fails_one_batch_and_the_next_prepares_it_again(
        settings: Settings, change: str, elsewhere: bool, keyed: bool) -> None:
    """Its prepared statement gone (DEALLOCATE), or planned for a result type a migration changed since: the batch
    that finds out is refused with 503 and writes nothing, its connection is closed, and the next batch prepares
    the statement afresh on a new connection and sells."""
    set_stock(settings.database_url, 100)
    outcomes, prepared = asyncio.run(_batches_on_one_connection(settings, change, elsewhere=elsewhere, keyed=keyed))
    first, stale, after = outcomes
    assert all(isinstance(o, Order) for o in first + after)
    for outcome in stale:
        assert isinstance(outcome, CheckoutError) and (outcome.status, outcome.code) == (503, "unavailable")
    assert prepared == PREPARED[keyed]
    if keyed:  # the refused batch's keys were rolled back with it: only the orders' keys are kept
        assert sql(settings.database_url, "SELECT count(*) FROM idempotency_keys") == [(6,)]
    assert len(orders_of(settings.database_url)) == 6
    assert_invariant(settings.database_url, 100)


def test_a_connection_lost_after_the_plain_statement_returned_is_outcome_unknown_never_nothing_sold(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The statement committed and returned; then PostgreSQL went away (here: its backend terminated) and the event
    loop polled the connection's FATAL and end of stream before the batch's task resumed to read its row —
    psycopg2 then refuses the read ("cursor already closed"). The orders exist: the answer must say the outcome
    is unknown, never that nothing was sold (`make chaos --limiter`, a replica paused across a restart)."""
    set_stock(settings.database_url, 100)
    original = Prepared.run

    async def run_then_lose_the_connection(self: Prepared, cur: Any, params: dict[str, Any]) -> None:
        await original(self, cur, params)
        sql(settings.database_url, "SELECT pg_terminate_backend(%s)", (cur.connection.raw.info.backend_pid,))
        for _ in range(1000):  # aiopg's reader polls the FATAL, then the end of the stream: psycopg2 marks it closed
            if cur.connection.raw.closed:
                break
            await asyncio.sleep(0.01)

    monkeypatch.setattr(Prepared, "run", run_then_lose_the_connection)
    outcomes, _ = asyncio.run(settle(settings, [(1, 1, 2), (2, 1, 3)], window_ms=1))
    for outcome in outcomes:
        assert isinstance(outcome, CheckoutError) and (outcome.status, outcome.code) == (503, "unavailable")
        assert outcome.body()["error"]["outcome"] == "unknown"
    assert sorted(orders_of(settings.database_url).values()) == [(1, 2), (2, 3)]
    assert_invariant(settings.database_url, 100)


async def _after_a_first_batch(settings: Settings, first: int, then: int) -> BatchedStrategy:
    """A first batch of ``first`` buyers is held in PostgreSQL (a blocker has the product's row) while one more buyer
    arrives; the row is let go. Then, once every buyer so far has an answer or the last one still waits, ``then``
    more buyers arrive. Short window 1 ms, busy window an hour, batches of at most ``BUSY_BATCH``."""
    store = await Store.connect(settings.database_url, size=2, timeout=5)
    strategy = BatchedStrategy(store, replica="test-1", window_ms=1, busy_window_ms=3_600_000, max_batch=BUSY_BATCH)
    blocker = psycopg2.connect(settings.database_url)
    try:
        with blocker.cursor() as cur:
            cur.execute("SELECT stock FROM products WHERE id = 1 FOR UPDATE")
        firsts = [asyncio.create_task(strategy.purchase(PurchaseRequest(u, 1, 1))) for u in range(1, first + 1)]
        for _ in range(6000):  # until the first batch waits in PostgreSQL for the row
            if sql(settings.database_url, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'") \
                    != [(0,)]:
                break
            await asyncio.sleep(0.01)
        late = asyncio.create_task(strategy.purchase(PurchaseRequest(100, 1, 1)))  # arrives during the settle
        await asyncio.sleep(0)
        blocker.commit()
        await asyncio.wait_for(asyncio.gather(*firsts), 60)
        more = [asyncio.create_task(strategy.purchase(PurchaseRequest(u, 1, 1))) for u in range(200, 200 + then)]
        outcomes = await asyncio.wait_for(asyncio.gather(late, *more), 60)
        assert all(isinstance(o, Order) for o in outcomes)
        return strategy
    finally:
        blocker.close()
        await strategy.close()
        await store.close()


def test_while_a_products_batches_are_busy_the_next_one_waits_the_busy_window_for_more_buyers(
        settings: Settings) -> None:
    """A batch of BUSY_BATCH: the buyer who arrived while it settled waits the busy window (an hour here), and goes
    with the buyers after it once the batch is full, instead of alone after the short window."""
    strategy = asyncio.run(_after_a_first_batch(settings, first=BUSY_BATCH, then=BUSY_BATCH - 1))
    assert strategy.batch_sizes == {BUSY_BATCH: 2}
    assert len(orders_of(settings.database_url)) == 2 * BUSY_BATCH


def test_after_a_small_batch_the_next_one_keeps_the_short_window(settings: Settings) -> None:
    """A batch below BUSY_BATCH (buyers coming one by one): the buyer who arrived while it settled goes alone after
    the short window; were it held for the busy window, nothing would fill its batch and the test would time out."""
    strategy = asyncio.run(_after_a_first_batch(settings, first=BUSY_BATCH - 1, then=0))
    assert strategy.batch_sizes == {BUSY_BATCH - 1: 1, 1: 1}
    assert len(orders_of(settings.database_url)) == BUSY_BATCH
