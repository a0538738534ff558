"""``Store``: the PostgreSQL side of HyperCheckout — the pool (following a failover), transactions, and one method per
statement of store/purchases.py, store/products.py and the migration runner."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import aiopg
import psycopg2
import psycopg2.errors
import psycopg2.extensions

from hypercheckout.checkout.errors import CheckoutError, has_orders, invalid_request, outcome_unknown, unavailable
from hypercheckout.migrations import runner
from hypercheckout.migrations.runner import SEED_STOCK, Migration
from hypercheckout.store.arrays import int_array
from hypercheckout.store.models import (
    BatchLock,
    LockedStock,
    PlainBatch,
    Product,
    ProductChanges,
    ProductStatus,
    SaleRules,
    StoredOrder,
    WaitingRoom,
    _segments,
)
from hypercheckout.store.pool import (
    CONNECTION_ERRORS,
    _answer_for,
    _create_pool,
    _raise_if_cancelled_by_server,
    server_address,
    split_hosts,
)
from hypercheckout.store.prepared import Prepared, execute
from hypercheckout.store.products import (
    COUNT_ORDERS,
    CREATE_PRODUCT,
    DELETE_ORDERS,
    DELETE_PRODUCT,
    FORGET_OLD_LINES,
    GET_PRODUCT,
    LIST_PRODUCTS,
    LOCK_PRODUCT,
    RECENT_ORDERS,
    RESET_PRODUCT,
    RESTOCKED,
    SALE_RULES,
    STATUS,
    UPDATE_PRODUCT,
)
from hypercheckout.store.purchases import (
    BUY_ATOMIC,
    CLAIM_KEYS,
    DECREMENT_STOCK,
    EXPIRE_KEYS,
    INSERT_ORDER,
    LOCK_STOCK,
    LOCK_STOCK_FOR_BATCH,
    OWNED,
    PROBE_KEY,
    SETTLE_BATCH,
    SETTLE_PLAIN_BATCH,
    STORED_ORDER,
)

log = logging.getLogger(__name__)


OPEN_TRANSACTION = (psycopg2.extensions.TRANSACTION_STATUS_INTRANS, psycopg2.extensions.TRANSACTION_STATUS_INERROR)


class Store:
    """The PostgreSQL side of HyperCheckout. Holds the pool; every method maps connection trouble to a 503.

    A URL naming several hosts (``postgresql://…@h1:5432,h2:5432/db?target_session_attrs=read-write``) is a
    primary and its standbys. libpq would pick the writable one by itself, but aiopg's asynchronous connect loses
    track of the socket when libpq moves on from a host that is down (aiopg issues #647 and #837): so the pool is
    made for one host at a time — the first that accepts writes — and, once connections fail, the hosts are asked
    again in order, which is how a promoted standby is found after a failover."""

    FOLLOW_EVERY = 0.5  # seconds between two searches for the writable host

    def __init__(self, pool: aiopg.Pool, *, urls: Sequence[str] = (), url: str = "", size: int = 1,
                 timeout: float = 5.0) -> None:
        self.pool = pool
        self._urls = list(urls)  # one per host, in the order given; empty or one: nothing to follow
        self._url = url  # the host the pool is for
        self._size = size
        self._timeout = timeout
        self._following: asyncio.Task[None] | None = None
        self._followed_at = 0.0
        self._retiring: set[asyncio.Task[None]] = set()  # pools left for another host, closing
        self.primary_changes = 0

    @classmethod
    async def connect(cls, url: str, *, size: int, timeout: float) -> Store:
        urls = split_hosts(url)
        for candidate in urls:
            try:
                pool = await _create_pool(candidate, size, timeout)
            except CONNECTION_ERRORS as exc:
                failure: BaseException = exc
                continue
            return cls(pool, urls=urls, url=candidate, size=size, timeout=timeout)
        raise unavailable(address=server_address(url)) from failure

    async def close(self) -> None:
        if self._following is not None:
            self._following.cancel()
            await asyncio.gather(self._following, return_exceptions=True)
        for task in self._retiring:
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        self.pool.close()
        await self.pool.wait_closed()

    def _suspect(self) -> None:
        """A connection failed: with several hosts, look for the writable one (at most every FOLLOW_EVERY s)."""
        if len(self._urls) < 2 or (self._following is not None and not self._following.done()):
            return
        now = asyncio.get_running_loop().time()
        if now - self._followed_at < self.FOLLOW_EVERY:
            return
        self._followed_at = now
        self._following = asyncio.create_task(self._follow_primary(), name="postgres-follow-primary")

    async def _follow_primary(self) -> None:
        for candidate in self._urls:
            try:
                probe = await aiopg.connect(candidate, timeout=self._timeout)
            except CONNECTION_ERRORS:
                continue  # down, or a standby (target_session_attrs refuses a read-only server)
            await probe.close()
            if candidate == self._url:
                return  # the same server as before: it was restarting
            try:
                pool = await _create_pool(candidate, self._size, self._timeout)
            except CONNECTION_ERRORS:
                return
            old, self.pool, self._url = self.pool, pool, candidate
            self.primary_changes += 1
            log.warning("PostgreSQL: now using %s, the writable host", urlsplit(candidate).netloc.rpartition("@")[2])
            retiring = asyncio.create_task(self._retire(old), name="postgres-retire-pool")
            self._retiring.add(retiring)
            retiring.add_done_callback(self._retiring.discard)
            return

    @staticmethod
    async def _retire(pool: aiopg.Pool) -> None:
        """Close a pool left for another host. Its connections are to a server that is gone or read-only, perhaps
        still up: the idle ones are closed now, each one in use when it comes back (aiopg's ``close`` alone only
        marks the pool). Apart from the search, so that a request still holding one cannot hold up the next."""
        pool.close()
        try:
            await pool.wait_closed()
        except asyncio.CancelledError:
            pool.terminate()
            raise
        except Exception:
            log.debug("closing the pool of the former primary failed", exc_info=True)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[aiopg.Connection]:
        """A pooled connection; failing to get one means PostgreSQL is unavailable and nothing was done."""
        pool = self.pool
        try:
            conn = await pool.acquire()
        except (*CONNECTION_ERRORS, RuntimeError, AssertionError) as exc:
            # RuntimeError: an event loop may refuse the socket of a new connection that reuses a broken one's file
            # descriptor (uvloop: "the handler is closed"); the next attempt gets a fresh one. Also aiopg's answer
            # when the pool was closed because another host became the primary.
            # AssertionError: aiopg's `assert not conn.closed` in Pool._acquire, when a free connection breaks
            # between the pool's sweep of closed ones and its hand-out — seen when PostgreSQL died under load
            # (`make chaos --pg-standby`: 3 answers of 500 in 253,464). Nothing was done yet: nothing was sold.
            self._suspect()
            raise unavailable() from exc
        try:
            yield conn
        finally:
            try:
                await pool.release(conn)
            except Exception:
                # Releasing also refills the pool, and that can fail while PostgreSQL restarts. The work done on
                # this connection is finished (perhaps committed): it must not be reported as failed.
                log.debug("refilling the connection pool failed", exc_info=True)

    @asynccontextmanager
    async def cursor(self) -> AsyncIterator[aiopg.Cursor]:
        """A cursor in autocommit mode: each statement is its own transaction."""
        with self._answering():
            async with self.connection() as conn, conn.cursor() as cur:
                yield cur

    @asynccontextmanager
    async def transaction(self, *, explicit: bool = False) -> AsyncIterator[aiopg.Cursor]:
        """A cursor inside BEGIN … COMMIT; any exception rolls back, and a connection that cannot roll back is
        closed rather than returned to the pool half-way through a transaction.

        ``explicit``: the caller's own statements carry BEGIN and COMMIT (saving two round trips); a transaction
        still open when the block ends without one is rolled back here."""
        with self._answering():
            async with self.connection() as conn, conn.cursor() as cur:
                if not explicit:
                    await cur.execute("BEGIN")
                try:
                    yield cur
                except BaseException:
                    try:
                        await cur.execute("ROLLBACK")
                    except Exception:
                        conn.close()
                    raise
                if not explicit:
                    await Store.commit(cur, "COMMIT")
                elif conn.raw.info.transaction_status in OPEN_TRANSACTION:
                    # The block ended without committing (it wrote nothing, or chose not to): end the transaction
                    # so the connection goes back to the pool clean. A connection that broke right after the
                    # caller's COMMIT returned is not in a transaction: that commit stands.
                    try:
                        await cur.execute("ROLLBACK")
                    except Exception:
                        conn.close()  # the server rolls back a transaction whose connection is gone

    @contextmanager
    def _answering(self) -> Iterator[None]:
        """Connection trouble in a block becomes the answer it means (and a search for the writable host); a
        statement PostgreSQL cancelled becomes a 503, a real cancellation of the task goes on."""
        try:
            yield
        except CONNECTION_ERRORS as exc:
            self._suspect()
            raise _answer_for(exc) from exc
        except asyncio.CancelledError as exc:
            _raise_if_cancelled_by_server(exc)
            raise

    @staticmethod
    async def commit(cur: aiopg.Cursor, statement: str | Prepared,
                     params: dict[str, Any] | None = None) -> tuple[Any, ...] | None:
        """Run the statement that commits, and return its first row (None: it returns none). If the connection
        breaks during it, the commit may or may not have happened on the server: that is said (503 with outcome
        unknown), never "nothing was sold". So also when it breaks after the statement returned but before its row
        is read: psycopg2 refuses to read a cursor whose connection it has since found closed ("cursor already
        closed"), which happens when the event loop polls the connection's FATAL and end of stream (a restarted
        PostgreSQL) before this task resumes — found by `make chaos --limiter` with a replica paused across a
        restart, where a keyless buyer was told nothing was sold for an order that was placed."""
        if isinstance(statement, Prepared):
            await statement.ready(cur)  # nothing is run yet: trouble here means nothing was done
        try:
            await execute(cur, statement, params)
            return await cur.fetchone() if cur.description is not None else None
        except CONNECTION_ERRORS as exc:
            raise outcome_unknown() from exc

    # --- schema ----------------------------------------------------------------------------------------------------

    async def migrate(self, *, seed_stock: int = SEED_STOCK, migrations: Sequence[Migration] | None = None,
                      force: bool = False) -> list[Migration]:
        """Apply the migrations this database has not had (``migrations.runner.migrate``)."""
        return await runner.migrate(self, seed_stock=seed_stock, migrations=migrations, force=force)

    async def schema_version(self) -> int:
        async with self.cursor() as cur:
            await cur.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
            (version,) = await cur.fetchone()
            return int(version)

    async def ping(self) -> None:
        async with self.cursor() as cur:
            await cur.execute("SELECT 1")

    # --- pessimistic ----------------------------------------------------------------------------------------------

    @staticmethod
    async def lock_stock(cur: aiopg.Cursor, product_id: int, *, reserve_id: bool = False) -> LockedStock | None:
        """The product's stock and limit with its row locked (and an order id reserved when asked), or None if
        there is no such product."""
        await cur.execute(LOCK_STOCK, {"product_id": product_id, "reserve_id": reserve_id})
        row = await cur.fetchone()
        if row is None:
            return None
        return LockedStock(stock=row[0], per_user_limit=row[1], order_id=row[2], rules=SaleRules(*row[3:7]),
                           now=row[7], room_generation=row[8], held=row[9])

    @staticmethod
    async def decrement_stock(cur: aiopg.Cursor, product_id: int, quantity: int) -> None:
        await cur.execute(DECREMENT_STOCK, {"product_id": product_id, "quantity": quantity})

    @staticmethod
    async def insert_order(
        cur: aiopg.Cursor, user_id: int, product_id: int, quantity: int, replica: str, order_id: int | None = None,
        room_generation: int | None = None,
    ) -> tuple[int, datetime]:
        """``room_generation``: the opening of the waiting room whose pass bought it (None: no room)."""
        await cur.execute(
            INSERT_ORDER,
            {"order_id": order_id, "user_id": user_id, "product_id": product_id, "quantity": quantity,
             "replica": replica, "room_generation": room_generation},
        )
        order_id, created_at = await cur.fetchone()
        return order_id, created_at

    # --- atomic ---------------------------------------------------------------------------------------------------

    async def buy_atomic(
        self, user_id: int, product_id: int, quantity: int, replica: str,
    ) -> tuple[int, datetime, int, int] | None:
        """(order id, created_at, stock left, units held) or None when the product is missing or short, or its
        rules refuse (a product with a waiting room is never bought here: its pass is counted under the row lock)."""
        async with self.cursor() as cur:
            # One statement in autocommit: it is its own commit.
            row = await Store.commit(
                cur, BUY_ATOMIC,
                {"user_id": user_id, "product_id": product_id, "quantity": quantity, "replica": replica},
            )
            return None if row is None else (row[0], row[1], row[2], row[3])

    # --- batched --------------------------------------------------------------------------------------------------

    @staticmethod
    async def lock_for_batch(cur: aiopg.Cursor, product_id: int, count: int) -> BatchLock | None:
        await execute(cur, LOCK_STOCK_FOR_BATCH, {"product_id": product_id, "count": count})
        row = await cur.fetchone()
        if row is None:
            return None
        return BatchLock(stock=row[0], per_user_limit=row[1], now=row[2], order_ids=list(row[3]),
                         rules=SaleRules(*row[4:8]), room_generation=row[8], held=row[9])

    async def settle_plain_batch(self, product_id: int, replica: str, user_ids: Sequence[int],
                                 quantities: Sequence[int]) -> PlainBatch | None:
        """Grant every purchase of a batch in one statement (``SETTLE_PLAIN_BATCH``), or write nothing and return
        None when the batch is not plain after all: stock short, a per-user limit, a waiting room, outside the sale
        window, too many units in one order, no such product. The statement is its own transaction: broken off
        while it ran, it may have committed (503 with outcome unknown)."""
        async with self.cursor() as cur:
            row = await Store.commit(cur, SETTLE_PLAIN_BATCH, {
                "product_id": product_id, "replica": replica, "total": sum(quantities), "largest": max(quantities),
                "user_ids": int_array(user_ids), "quantities": int_array(quantities),
            })
        if row is None:
            return None
        return PlainBatch(stock=row[0], held=row[1], now=row[2], order_ids=list(row[3]))

    @staticmethod
    async def settle_batch(
        cur: aiopg.Cursor,
        product_id: int,
        replica: str,
        order_ids: Sequence[int],
        user_ids: Sequence[int],
        quantities: Sequence[int],
        released_keys: Sequence[str] = (),
        room_generation: int | None = None,
    ) -> None:
        await Store.commit(
            cur, SETTLE_BATCH,
            {
                "product_id": product_id,
                "replica": replica,
                "total": sum(quantities),
                "ids": int_array(order_ids),
                "user_ids": int_array(user_ids),
                "quantities": int_array(quantities),
                "released_keys": list(released_keys),
                "room_generation": room_generation,
            },
        )

    # --- per-user limits and idempotency keys ---------------------------------------------------------------------

    @staticmethod
    async def owned(cur: aiopg.Cursor, product_id: int, user_ids: Sequence[int]) -> dict[int, int]:
        await cur.execute(OWNED, {"product_id": product_id, "user_ids": int_array(sorted(set(user_ids)))})
        return {row[0]: row[1] for row in await cur.fetchall()}

    @staticmethod
    async def claim_keys(cur: aiopg.Cursor, keys: Sequence[str], fingerprints: Sequence[str],
                         order_ids: Sequence[int]) -> set[str]:
        """The keys this transaction now holds; the others were taken by a committed transaction."""
        await cur.execute(CLAIM_KEYS, {"keys": list(keys), "fingerprints": list(fingerprints),
                                       "order_ids": int_array(order_ids)})
        return {row[0] for row in await cur.fetchall()}

    async def stored_order(self, key: str) -> StoredOrder | None:
        async with self.cursor() as cur:
            await cur.execute(STORED_ORDER, {"key": key})
            row = await cur.fetchone()
            return None if row is None else StoredOrder(*row)

    async def settled_order(self, key: str) -> StoredOrder | None:
        """The order a request with this key placed, once no transaction holding the key is still open (waiting
        for one that is): for a retry refused before its purchase, which must never be told "no" for an order its
        first try is placing."""
        async with self.transaction(explicit=True) as cur:  # rolled back: the block never commits
            await cur.execute(PROBE_KEY, {"key": key})
            free = await cur.fetchone() is not None
        return None if free else await self.stored_order(key)

    async def expire_keys(self, older_than_seconds: float) -> int:
        async with self.cursor() as cur:
            await cur.execute(EXPIRE_KEYS, {"seconds": older_than_seconds})
            return int(cur.rowcount)

    # --- reading --------------------------------------------------------------------------------------------------

    async def list_products(self) -> list[Product]:
        async with self.cursor() as cur:
            await cur.execute(LIST_PRODUCTS)
            return [Product(*row) for row in await cur.fetchall()]

    async def get_product(self, product_id: int) -> Product | None:
        async with self.cursor() as cur:
            await cur.execute(GET_PRODUCT, {"product_id": product_id})
            row = await cur.fetchone()
            return None if row is None else Product(*row)

    async def restocked(self, product_ids: Sequence[int]) -> list[int]:
        async with self.cursor() as cur:
            await cur.execute(RESTOCKED, {"ids": list(product_ids)})
            return [row[0] for row in await cur.fetchall()]

    async def sale_rules(self) -> dict[int, tuple[SaleRules, WaitingRoom | None, int]]:
        """Every product's rules, its waiting room if it has one open, and its room's latest opening (0: never)."""
        async with self.cursor() as cur:
            await cur.execute(SALE_RULES)
            return {row[0]: (SaleRules(*row[1:5]), WaitingRoom(*row[5:10], _segments(row[10])) if row[4] else None,
                             row[9])
                    for row in await cur.fetchall()}

    async def server_time(self) -> float:
        """PostgreSQL's clock now, epoch seconds (the time as it passes, not the transaction's start)."""
        return (await self.read_clock(time.time))[1]

    async def read_clock(self, local: Callable[[], float]) -> tuple[float, float, float]:
        """(``local()`` when asked, PostgreSQL's clock, the round trip in seconds): one statement timed on a
        connection already in hand, so that waiting for the pool is not taken for the network's delay; the round
        trip on the monotonic clock, which a step of the wall clock cannot make negative."""
        async with self.cursor() as cur:
            sent, started = local(), time.monotonic()
            await cur.execute("SELECT extract(epoch FROM clock_timestamp())::float8")
            round_trip = time.monotonic() - started
            return sent, float((await cur.fetchone())[0]), round_trip

    async def status(self, product_id: int | None = None) -> list[ProductStatus]:
        """Every product with its sales, or the one asked for (psycopg2 puts the value in the statement, so the
        planner sees a constant and reads that product's rows alone)."""
        async with self.cursor() as cur:
            await cur.execute(STATUS, {"product_id": product_id})
            return [
                ProductStatus(product=Product(*row[:20]), sold=row[20], orders=row[21], passes_used=row[22])
                for row in await cur.fetchall()
            ]

    async def recent_orders(self, limit: int = 20) -> list[dict[str, Any]]:
        async with self.cursor() as cur:
            await cur.execute(RECENT_ORDERS, {"limit": limit})
            return [
                {"id": r[0], "user_id": r[1], "product_id": r[2], "quantity": r[3],
                 "created_at": r[4].isoformat(), "replica": r[5]}
                for r in await cur.fetchall()
            ]

    # --- admin ----------------------------------------------------------------------------------------------------

    async def reset_product(self, product_id: int, stock: int, *, per_user_limit: int | None = None) -> int | None:
        """Set stock and initial stock to ``stock`` and delete the product's orders; returns how many orders were
        deleted, or None if the product does not exist. ``per_user_limit``: None leaves it, 0 removes it."""
        if stock < 0:
            raise CheckoutError(400, "invalid_request", "stock must be ≥ 0")
        async with self.transaction() as cur:
            await cur.execute(RESET_PRODUCT, {"product_id": product_id, "stock": stock,
                                              "set_limit": per_user_limit is not None,
                                              "per_user_limit": per_user_limit or 0})
            if await cur.fetchone() is None:
                return None
            await cur.execute(DELETE_ORDERS, {"product_id": product_id})
            return int(cur.rowcount)


    async def create_product(self, changes: ProductChanges) -> Product:
        async with self.transaction() as cur:
            with _refusing_bad_values():
                await cur.execute(CREATE_PRODUCT, changes.params())
            return Product(*await cur.fetchone())

    async def update_product(self, product_id: int, changes: ProductChanges) -> Product | None:
        """The product as changed, or None if it does not exist."""
        async with self.transaction() as cur:
            await cur.execute(LOCK_PRODUCT, {"product_id": product_id})
            if await cur.fetchone() is None:
                return None
            with _refusing_bad_values():
                await cur.execute(UPDATE_PRODUCT, {**changes.params(), "product_id": product_id})
            product = Product(*await cur.fetchone())
        # After the commit, not under the product's row lock: a closed line may hold a place per buyer id a client
        # wrote, and purchases must not wait while they go. Failing here undoes nothing (the change stands); the
        # next change of the product forgets them, as it does the place of a join that raced this one.
        try:
            async with self.cursor() as cur:
                await cur.execute(FORGET_OLD_LINES, {"product_id": product_id})
        except CheckoutError:
            log.warning("product %d: its old waiting-room lines are kept until its next change", product_id)
        return product

    async def delete_product(self, product_id: int, *, with_orders: bool) -> int | None:
        """Delete the product (and, with ``with_orders``, its orders); returns the orders deleted, or None if it
        does not exist. Raises 409 ``has_orders`` if it has orders and ``with_orders`` is false."""
        async with self.transaction() as cur:
            await cur.execute(LOCK_PRODUCT, {"product_id": product_id})
            if await cur.fetchone() is None:
                return None
            await cur.execute(COUNT_ORDERS, {"product_id": product_id})
            (orders,) = await cur.fetchone()
            if orders and not with_orders:
                raise has_orders(product_id, orders)
            await cur.execute(DELETE_PRODUCT, {"product_id": product_id})
            return int(orders)


@contextmanager
def _refusing_bad_values() -> Iterator[None]:
    """A value the schema refuses (a window ending before it starts, a number out of range) is the operator's
    mistake, answered 400 with PostgreSQL's reason; the transaction rolls back, so nothing is written."""
    try:
        yield
    except (psycopg2.errors.CheckViolation, psycopg2.errors.NumericValueOutOfRange,
            psycopg2.errors.StringDataRightTruncation, psycopg2.errors.DatetimeFieldOverflow) as exc:
        reason = (exc.diag.message_primary or "value refused").splitlines()[0]
        constraint = exc.diag.constraint_name or ""
        if constraint == "products_window_check":
            reason = "ends_at must be after starts_at"
        raise invalid_request(reason) from exc
