"""Every SQL statement HyperCheckout runs, the schema, and the connection pool.

All statements are parameterised. Each one that touches stock says why it is safe under concurrency.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiopg
import psycopg2
import psycopg2.errors
import psycopg2.extensions

from hypercheckout.checkout.errors import (
    CheckoutError,
    has_orders,
    invalid_request,
    outcome_unknown,
    statement_cancelled,
    unavailable,
)
from hypercheckout.migrations import runner
from hypercheckout.migrations.runner import SEED_STOCK, Migration

log = logging.getLogger(__name__)


# A waiting room's defaults when a product is created without them (the columns' defaults, 0003_waiting_room.sql).
DEFAULT_ADMIT_PER_SECOND = 100
DEFAULT_PASS_SECONDS = 120
MAX_PASS_SECONDS = 86_400  # products_pass_seconds_check (0003_waiting_room.sql)

# --- pessimistic: the original's transaction, statement by statement ------------------------------------------
# FOR UPDATE makes concurrent buyers of one product queue on the row lock, so the check and the decrement below
# see the same stock.
# With an Idempotency-Key the order's id is reserved here, so the key can be claimed for it before stock or
# limits are looked at (a retry of a placed order must replay it, even once the product has sold out since).
# now() is the transaction's start, which is also the order's created_at: the sale window is checked against the
# very time the order will carry.
LOCK_STOCK = """
SELECT stock, per_user_limit, CASE WHEN %(reserve_id)s THEN nextval('orders_id_seq') END,
       starts_at, ends_at, max_per_order, waiting_room, now(), room_generation
FROM products WHERE id = %(product_id)s FOR UPDATE
"""
DECREMENT_STOCK = "UPDATE products SET stock = stock - %(quantity)s WHERE id = %(product_id)s"
# COALESCE evaluates nextval only when no id was reserved. An order bought with a waiting room's pass carries the
# room's opening (room_generation): one order per pass (0005_single_use_passes.sql).
INSERT_ORDER = """
INSERT INTO orders (id, user_id, product_id, quantity, replica, room_generation)
VALUES (COALESCE(%(order_id)s::bigint, nextval('orders_id_seq')), %(user_id)s, %(product_id)s, %(quantity)s,
        %(replica)s, %(room_generation)s)
RETURNING id, created_at
"""

# --- atomic: one statement, one round trip ----------------------------------------------------------------------
# Under READ COMMITTED an UPDATE that waited for the row lock re-evaluates its WHERE against the newest row
# version, so `stock >= quantity` is checked on the stock it decrements. The INSERT only runs for the row the
# UPDATE returned, and the statement is one implicit transaction: both happen or neither does. The sale window is
# checked with the statement's now(), the created_at of the order it inserts.
BUY_ATOMIC = """
WITH sold AS (
    UPDATE products SET stock = stock - %(quantity)s
    WHERE id = %(product_id)s AND stock >= %(quantity)s AND per_user_limit IS NULL
      AND (starts_at IS NULL OR starts_at <= now()) AND (ends_at IS NULL OR now() < ends_at)
      AND (max_per_order IS NULL OR max_per_order >= %(quantity)s)
      AND NOT waiting_room
    RETURNING id, stock
), placed AS (
    INSERT INTO orders (user_id, product_id, quantity, replica)
    SELECT %(user_id)s, sold.id, %(quantity)s, %(replica)s FROM sold
    RETURNING id, created_at
)
SELECT placed.id, placed.created_at, sold.stock FROM placed, sold
"""

# --- batched: one transaction for many buyers -------------------------------------------------------------------
# The row lock serialises batches of every replica. Order ids are reserved here, in the locked transaction, so the
# answer to each waiter is known before the INSERT (RETURNING order is not guaranteed to follow VALUES order).
# BEGIN rides on this statement and COMMIT on SETTLE_BATCH: a batch costs two round trips, not four.
LOCK_STOCK_FOR_BATCH = """
BEGIN;
SELECT stock, per_user_limit, now(),
       ARRAY(SELECT nextval('orders_id_seq') FROM generate_series(1, %(count)s)),
       starts_at, ends_at, max_per_order, waiting_room, room_generation
FROM products WHERE id = %(product_id)s
FOR UPDATE
"""
# One statement takes the stock granted to the whole batch and writes every order of it.
SETTLE_BATCH = """
WITH sold AS (
    UPDATE products SET stock = stock - %(total)s WHERE id = %(product_id)s
), released AS (
    DELETE FROM idempotency_keys WHERE key = ANY(%(released_keys)s::text[])
)
INSERT INTO orders (id, user_id, product_id, quantity, replica, room_generation)
SELECT o.id, o.user_id, %(product_id)s, o.quantity, %(replica)s, %(room_generation)s::bigint
FROM unnest(%(ids)s::bigint[], %(user_ids)s::bigint[], %(quantities)s::integer[]) AS o (id, user_id, quantity);
COMMIT;
"""

# --- per-user limits and idempotency keys (every strategy) --------------------------------------------------------
# Units each of these buyers already owns of the product. Read under the product's row lock, which every purchase
# of the product holds while it inserts its order: nobody can add to these sums until this transaction ends.
OWNED = """
SELECT user_id, sum(quantity)::integer FROM orders
WHERE product_id = %(product_id)s AND user_id = ANY(%(user_ids)s::bigint[])
GROUP BY user_id
"""
# Claims keys for the order ids they will get, after the product's row lock (every transaction takes the product
# first, then keys in sorted order: two claims of the same keys cannot deadlock). A key another transaction holds
# makes this wait for its end; a key already committed is skipped, and missing from what this returns.
CLAIM_KEYS = """
INSERT INTO idempotency_keys (key, fingerprint, order_id)
SELECT k.key, k.fingerprint, k.order_id
FROM unnest(%(keys)s::text[], %(fingerprints)s::text[], %(order_ids)s::bigint[]) AS k (key, fingerprint, order_id)
ORDER BY k.key
ON CONFLICT (key) DO NOTHING
RETURNING key
"""
# The answer the first request with this key got: its order, as placed (and which replica placed it).
STORED_ORDER = """
SELECT k.fingerprint, o.id, o.user_id, o.product_id, o.quantity, o.created_at, o.replica
FROM idempotency_keys k JOIN orders o ON o.id = k.order_id
WHERE k.key = %(key)s
"""
# A request refused before its purchase (from memory, by the limiter) whose key a first try may be committing at
# this moment, perhaps on another replica: inserting the key waits for that transaction (a unique index makes an
# insert wait for an uncommitted duplicate), and is rolled back whatever happens (order_id 0 is never checked: the
# reference is checked at COMMIT). No row here: no order to replay. Nothing is written, the product's row is not
# touched, and no commit is made.
PROBE_KEY = """
BEGIN;
INSERT INTO idempotency_keys (key, fingerprint, order_id) VALUES (%(key)s, '', 0)
ON CONFLICT (key) DO NOTHING
RETURNING key
"""
EXPIRE_KEYS = "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => %(seconds)s)"

# --- reading ---------------------------------------------------------------------------------------------------------
PRODUCT_COLUMNS = ("id, name, stock, initial_stock, per_user_limit, starts_at, ends_at, max_per_order, waiting_room, "
                   "admit_per_second, pass_seconds, GREATEST(admission_origin, starts_at), admitted_before, "
                   "room_generation, admission_history")
LIST_PRODUCTS = f"SELECT {PRODUCT_COLUMNS} FROM products ORDER BY id"
GET_PRODUCT = f"SELECT {PRODUCT_COLUMNS} FROM products WHERE id = %(product_id)s"
# What a replica keeps in memory to refuse purchases outside a sale window without asking PostgreSQL, and to answer
# where a waiting room's tickets stand. Admission counts from the later of the room's origin and the sale's start.
SALE_RULES = """
SELECT id, starts_at, ends_at, max_per_order, waiting_room,
       admit_per_second, pass_seconds, GREATEST(admission_origin, starts_at), admitted_before,
       room_generation, admission_history
FROM products
"""
# Products among the given ids that have stock again (or no longer exist): their sold-out flags are stale.
RESTOCKED = """
SELECT ids.id FROM unnest(%(ids)s::bigint[]) AS ids (id)
LEFT JOIN products p ON p.id = ids.id
WHERE p.id IS NULL OR p.stock > 0
"""
STATUS = """
SELECT p.id, p.name, p.stock, p.initial_stock, p.per_user_limit, p.starts_at, p.ends_at, p.max_per_order,
       p.waiting_room, p.admit_per_second, p.pass_seconds, GREATEST(p.admission_origin, p.starts_at),
       p.admitted_before, p.room_generation, p.admission_history, COALESCE(sum(o.quantity), 0)::bigint AS sold,
       count(o.id) AS orders,
       count(o.id) FILTER (WHERE o.room_generation = p.room_generation) AS passes_used
FROM products p LEFT JOIN orders o ON o.product_id = p.id
WHERE %(product_id)s::bigint IS NULL OR p.id = %(product_id)s::bigint
GROUP BY p.id ORDER BY p.id
"""
# The newest orders for the dashboard: a backwards walk of the primary key, no sort.
RECENT_ORDERS = """
SELECT id, user_id, product_id, quantity, created_at, replica FROM orders ORDER BY id DESC LIMIT %(limit)s
"""

# --- admin -----------------------------------------------------------------------------------------------------------
# Runs in one transaction with DELETE_ORDERS: nobody ever sees the new stock next to the old orders.
RESET_PRODUCT = """
UPDATE products SET stock = %(stock)s, initial_stock = %(stock)s,
    per_user_limit = CASE WHEN %(set_limit)s THEN NULLIF(%(per_user_limit)s, 0) ELSE per_user_limit END
WHERE id = %(product_id)s RETURNING id
"""
DELETE_ORDERS = "DELETE FROM orders WHERE product_id = %(product_id)s"
CREATE_PRODUCT = f"""
INSERT INTO products (name, stock, initial_stock, per_user_limit, max_per_order, starts_at, ends_at,
                      waiting_room, admit_per_second, pass_seconds, admission_origin, room_generation)
VALUES (%(name)s, %(stock)s, %(stock)s, %(per_user_limit)s, %(max_per_order)s, %(starts_at)s, %(ends_at)s,
        COALESCE(%(waiting_room)s, false), COALESCE(%(admit_per_second)s, {DEFAULT_ADMIT_PER_SECOND}),
        COALESCE(%(pass_seconds)s, {DEFAULT_PASS_SECONDS}), CASE WHEN %(waiting_room)s THEN now() END,
        CASE WHEN %(waiting_room)s THEN 1 ELSE 0 END)
RETURNING {PRODUCT_COLUMNS}
"""
# Every purchase holds this lock while it inserts an order: taken first, it makes the order count and the sums
# read by the next statements final (under READ COMMITTED each statement sees everything committed before it).
LOCK_PRODUCT = "SELECT id FROM products WHERE id = %(product_id)s FOR UPDATE"
COUNT_ORDERS = "SELECT count(*) FROM orders WHERE product_id = %(product_id)s"
# One statement for any subset of fields: set_x says whether x is given (a given NULL clears it). A new stock
# keeps the orders, so the initial stock becomes stock + units sold and the invariant stock + Σ quantity = initial
# stock still holds.
# How the line stands now, on the row as it was: places admitted so far — in whole microseconds and integers, the
# arithmetic checkout/queue.py's admitted_by does in memory (numeric: a year of microseconds times a million a
# second would overflow bigint).
LINE_NOW = """(admitted_before + CASE WHEN GREATEST(admission_origin, starts_at) < now()
    THEN div(round(extract(epoch FROM now() - GREATEST(admission_origin, starts_at)) * 1000000)::numeric
             * admit_per_second, 1000000)::bigint
    ELSE 0 END)"""
OPENS = "(%(set_waiting_room)s AND %(waiting_room)s AND NOT waiting_room)"
# An edit that gives the same rate or start again (the dashboard's Save sends every field) moves nothing.
LINE_MOVES = """(waiting_room AND NOT (%(set_waiting_room)s AND NOT %(waiting_room)s) AND (
    (%(set_admit_per_second)s AND %(admit_per_second)s::integer IS DISTINCT FROM admit_per_second)
    OR (%(set_starts_at)s AND %(starts_at)s::timestamptz IS DISTINCT FROM starts_at)))"""
UPDATE_PRODUCT = f"""
UPDATE products SET
    name           = CASE WHEN %(set_name)s THEN %(name)s::text ELSE name END,
    per_user_limit = CASE WHEN %(set_per_user_limit)s THEN %(per_user_limit)s::integer ELSE per_user_limit END,
    max_per_order  = CASE WHEN %(set_max_per_order)s THEN %(max_per_order)s::integer ELSE max_per_order END,
    starts_at      = CASE WHEN %(set_starts_at)s THEN %(starts_at)s::timestamptz ELSE starts_at END,
    ends_at        = CASE WHEN %(set_ends_at)s THEN %(ends_at)s::timestamptz ELSE ends_at END,
    waiting_room   = CASE WHEN %(set_waiting_room)s THEN %(waiting_room)s::boolean ELSE waiting_room END,
    admit_per_second = CASE WHEN %(set_admit_per_second)s THEN %(admit_per_second)s::integer
                            ELSE admit_per_second END,
    pass_seconds   = CASE WHEN %(set_pass_seconds)s THEN %(pass_seconds)s::integer ELSE pass_seconds END,
    -- (SET sees the row as it was.) A room that opens starts a new line (a generation) counting from now. A room
    -- that stays open and gets another rate or start moves on from where its line stands now (admitted_before
    -- becomes the count so far, the origin now), so no place is admitted twice nor skipped; the segment it leaves,
    -- if admission had begun, joins the history. A segment is kept while a pass of one of its places may still
    -- be valid (it ended less than the longest pass an operator can set ago), however many edits there were.
    admission_origin = CASE WHEN {OPENS} OR {LINE_MOVES} THEN now() ELSE admission_origin END,
    admitted_before = CASE WHEN {OPENS} THEN 0 WHEN {LINE_MOVES} THEN {LINE_NOW} ELSE admitted_before END,
    room_generation = CASE WHEN {OPENS} THEN room_generation + 1 ELSE room_generation END,
    admission_history = CASE
        WHEN {OPENS} THEN '[]'::jsonb
        WHEN {LINE_MOVES} AND GREATEST(admission_origin, starts_at) < now() THEN (
            SELECT jsonb_agg(segment ORDER BY n) FROM (
                SELECT segment, n, lead((segment ->> 0)::float8) OVER (ORDER BY n) AS ended
                FROM jsonb_array_elements(admission_history || jsonb_build_array(jsonb_build_array(
                    extract(epoch FROM GREATEST(admission_origin, starts_at)), admitted_before, admit_per_second)))
                    WITH ORDINALITY AS h (segment, n)) AS segments
            WHERE COALESCE(ended, extract(epoch FROM now())) > extract(epoch FROM now()) - {MAX_PASS_SECONDS})
        ELSE admission_history END,
    stock          = CASE WHEN %(set_stock)s THEN %(stock)s::integer ELSE stock END,
    initial_stock  = CASE WHEN %(set_stock)s
                          THEN %(stock)s::integer + (SELECT COALESCE(sum(quantity), 0)::integer FROM orders
                                                     WHERE product_id = %(product_id)s)
                          ELSE initial_stock END
WHERE id = %(product_id)s
RETURNING {PRODUCT_COLUMNS}
"""
# A room opened again starts a new line: the old lines' places (and their tickets' meaning) go; so does a closed
# room's, which no opening will use again. Places are taken by buyer ids the client writes (bounded only by the
# join's rate limit): they must not outlive the line.
FORGET_OLD_LINES = """
DELETE FROM queue_lines l USING products p
WHERE l.product_id = %(product_id)s AND p.id = l.product_id AND (l.generation < p.room_generation OR NOT p.waiting_room)
"""
# Its orders go with it (ON DELETE CASCADE), and their idempotency keys with them.
DELETE_PRODUCT = "DELETE FROM products WHERE id = %(product_id)s"

# Errors that mean "the database is not there right now", as opposed to a bug in a statement.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    psycopg2.OperationalError,
    psycopg2.InterfaceError,
    asyncio.TimeoutError,
    ConnectionError,
    OSError,
)


OPEN_TRANSACTION = (psycopg2.extensions.TRANSACTION_STATUS_INTRANS, psycopg2.extensions.TRANSACTION_STATUS_INERROR)


@dataclass(frozen=True, slots=True)
class SaleRules:
    """When a product may be bought and how many units at once: checked before stock, in memory and in the
    locked transaction alike."""

    starts_at: datetime | None = None
    ends_at: datetime | None = None
    max_per_order: int | None = None
    waiting_room: bool = False  # a purchase needs a valid Queue-Pass


@dataclass(frozen=True, slots=True)
class WaitingRoom:
    """How a product's waiting room admits: ``admitted_before`` tickets, then ``admit_per_second`` a second from
    ``origin`` (None: not yet known — no start and the room never opened)."""

    admit_per_second: int
    pass_seconds: int
    origin: datetime | None
    admitted_before: int
    generation: int = 1
    history: tuple[tuple[float, int, int], ...] = ()  # earlier segments, oldest first: (origin, before, rate)


@dataclass(frozen=True, slots=True)
class Product:
    id: int
    name: str
    stock: int
    initial_stock: int
    per_user_limit: int | None
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    max_per_order: int | None = None  # None: the service's HC_MAX_QUANTITY
    waiting_room: bool = False
    admit_per_second: int = DEFAULT_ADMIT_PER_SECOND
    pass_seconds: int = DEFAULT_PASS_SECONDS
    admission_origin: datetime | None = None  # the later of the room's origin and the start
    admitted_before: int = 0
    room_generation: int = 0  # which opening of the room: a ticket of an earlier one admits nobody
    admission_history: Any = ()  # the line's earlier segments: [origin epoch, admitted_before, rate]

    @property
    def rules(self) -> SaleRules:
        return SaleRules(self.starts_at, self.ends_at, self.max_per_order, self.waiting_room)

    @property
    def room(self) -> WaitingRoom | None:
        if not self.waiting_room:
            return None
        return WaitingRoom(self.admit_per_second, self.pass_seconds, self.admission_origin, self.admitted_before,
                           self.room_generation, _segments(self.admission_history))

    def status(self, now: datetime) -> str:
        """``ended`` past the end, ``scheduled`` before the start, else ``sold_out`` at 0, else ``live``."""
        if self.ends_at is not None and now >= self.ends_at:
            return "ended"
        if self.starts_at is not None and now < self.starts_at:
            return "scheduled"
        return "sold_out" if self.stock == 0 else "live"

    def as_json(self, max_quantity: int, now: datetime) -> dict[str, Any]:
        """The product as GET /products/{id} shows it; ``max_per_order`` is the one in force (the product's own,
        never above the service's HC_MAX_QUANTITY); its status at ``now``, by PostgreSQL's clock (a replica's own
        may be skewed)."""
        return {
            "id": self.id,
            "name": self.name,
            "stock": self.stock,
            "initial_stock": self.initial_stock,
            "per_user_limit": self.per_user_limit,
            "max_per_order": min(self.max_per_order or max_quantity, max_quantity),
            "starts_at": None if self.starts_at is None else self.starts_at.isoformat(),
            "ends_at": None if self.ends_at is None else self.ends_at.isoformat(),
            "status": self.status(now),
            "waiting_room": self.waiting_room,
            **({"admit_per_second": self.admit_per_second, "pass_seconds": self.pass_seconds}
               if self.waiting_room else {}),
        }


@dataclass(frozen=True, slots=True)
class ProductStatus:
    product: Product
    sold: int
    orders: int
    passes_used: int = 0  # orders bought with a pass of the room's current opening (one each: orders_one_per_pass)


@dataclass(frozen=True, slots=True)
class LockedStock:
    stock: int
    per_user_limit: int | None
    order_id: int | None  # reserved for this purchase when asked for
    rules: SaleRules
    now: datetime  # the transaction's time, which its order carries as created_at
    room_generation: int = 0  # the waiting room's opening: a pass of another one buys nothing


@dataclass(frozen=True, slots=True)
class BatchLock:
    stock: int
    per_user_limit: int | None
    now: datetime
    order_ids: list[int]
    rules: SaleRules
    room_generation: int = 0


@dataclass(frozen=True, slots=True)
class ProductChanges:
    """The fields an operator sets on a product. Only those named in ``given`` are written; a given None clears a
    field that may be empty (a limit, a window's end)."""

    name: Any = None
    stock: Any = None
    per_user_limit: Any = None
    max_per_order: Any = None
    starts_at: Any = None
    ends_at: Any = None
    waiting_room: Any = None
    admit_per_second: Any = None
    pass_seconds: Any = None
    given: frozenset[str] = frozenset()  # which of the fields above were given

    def params(self) -> dict[str, Any]:
        values = {name: getattr(self, name) for name in UPDATABLE}
        return {**values, **{f"set_{name}": name in self.given for name in UPDATABLE}}


UPDATABLE = ("name", "stock", "per_user_limit", "max_per_order", "starts_at", "ends_at", "waiting_room",
             "admit_per_second", "pass_seconds")


@dataclass(frozen=True, slots=True)
class StoredOrder:
    """An order found through its Idempotency-Key, with the fingerprint of the request that placed it."""

    fingerprint: str
    id: int
    user_id: int
    product_id: int
    quantity: int
    created_at: datetime
    replica: str


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
        raise unavailable() from failure

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
        try:
            async with self.connection() as conn, conn.cursor() as cur:
                yield cur
        except CONNECTION_ERRORS as exc:
            self._suspect()
            raise _answer_for(exc) from exc
        except asyncio.CancelledError as exc:
            _raise_if_cancelled_by_server(exc)
            raise

    @asynccontextmanager
    async def transaction(self, *, explicit: bool = False) -> AsyncIterator[aiopg.Cursor]:
        """A cursor inside BEGIN … COMMIT; any exception rolls back, and a connection that cannot roll back is
        closed rather than returned to the pool half-way through a transaction.

        ``explicit``: the caller's own statements carry BEGIN and COMMIT (saving two round trips); a transaction
        still open when the block ends without one is rolled back here."""
        try:
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
        except CONNECTION_ERRORS as exc:
            self._suspect()
            raise _answer_for(exc) from exc
        except asyncio.CancelledError as exc:
            _raise_if_cancelled_by_server(exc)
            raise

    @staticmethod
    async def commit(cur: aiopg.Cursor, statement: str, params: dict[str, Any] | None = None) -> None:
        """Run the statement that commits. If the connection breaks during it, the commit may or may not have
        happened on the server: that is said (503 with outcome unknown), never "nothing was sold"."""
        try:
            await cur.execute(statement, params)
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
                           now=row[7], room_generation=row[8])

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
    ) -> tuple[int, datetime, int] | None:
        """(order id, created_at, stock left) or None when the product is missing or short, or its rules refuse
        (a product with a waiting room is never bought here: its pass is counted under the row lock)."""
        async with self.cursor() as cur:
            # One statement in autocommit: it is its own commit.
            await Store.commit(
                cur, BUY_ATOMIC,
                {"user_id": user_id, "product_id": product_id, "quantity": quantity, "replica": replica},
            )
            row = await cur.fetchone()
            return None if row is None else (row[0], row[1], row[2])

    # --- batched --------------------------------------------------------------------------------------------------

    @staticmethod
    async def lock_for_batch(cur: aiopg.Cursor, product_id: int, count: int) -> BatchLock | None:
        await cur.execute(LOCK_STOCK_FOR_BATCH, {"product_id": product_id, "count": count})
        row = await cur.fetchone()
        if row is None:
            return None
        return BatchLock(stock=row[0], per_user_limit=row[1], now=row[2], order_ids=list(row[3]),
                         rules=SaleRules(*row[4:8]), room_generation=row[8])

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
                "ids": list(order_ids),
                "user_ids": list(user_ids),
                "quantities": list(quantities),
                "released_keys": list(released_keys),
                "room_generation": room_generation,
            },
        )

    # --- per-user limits and idempotency keys ---------------------------------------------------------------------

    @staticmethod
    async def owned(cur: aiopg.Cursor, product_id: int, user_ids: Sequence[int]) -> dict[int, int]:
        await cur.execute(OWNED, {"product_id": product_id, "user_ids": sorted(set(user_ids))})
        return {row[0]: row[1] for row in await cur.fetchall()}

    @staticmethod
    async def claim_keys(cur: aiopg.Cursor, keys: Sequence[str], fingerprints: Sequence[str],
                         order_ids: Sequence[int]) -> set[str]:
        """The keys this transaction now holds; the others were taken by a committed transaction."""
        await cur.execute(CLAIM_KEYS, {"keys": list(keys), "fingerprints": list(fingerprints),
                                       "order_ids": list(order_ids)})
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
                ProductStatus(product=Product(*row[:15]), sold=row[15], orders=row[16], passes_used=row[17])
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


def _segments(history: Any) -> tuple[tuple[float, int, int], ...]:
    return tuple((float(at), int(before), int(rate)) for at, before, rate in history or ())


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


def split_hosts(url: str) -> list[str]:
    """``postgresql://u:p@h1:1,h2:2/db?q`` → one URL per host, same credentials, database and options."""
    parts = urlsplit(url)
    credentials, at, hosts = parts.netloc.rpartition("@")
    if "," not in hosts:
        return [url]
    return [urlunsplit(parts._replace(netloc=f"{credentials}{at}{host}")) for host in hosts.split(",")]


async def _create_pool(url: str, size: int, timeout: float) -> aiopg.Pool:
    """A pool with its ``size`` connections already open: a replica's first burst must not wait for PostgreSQL to
    start a backend per connection (one fork each, milliseconds apiece on a busy machine), so every connection is
    opened now, before the replica reports ready. One that fails to open is left to be opened when needed."""
    pool = await aiopg.create_pool(url, minsize=1, maxsize=size, timeout=timeout, connect_timeout=max(1, int(timeout)))
    opened = await asyncio.gather(*(pool.acquire() for _ in range(size)), return_exceptions=True)
    for conn in opened:
        if not isinstance(conn, BaseException):
            await pool.release(conn)
    return pool


def _raise_if_cancelled_by_server(exc: asyncio.CancelledError) -> None:
    """aiopg reports a statement that PostgreSQL cancelled (statement_timeout, pg_cancel_backend) as
    ``CancelledError``, although nobody cancelled this task. Left alone it would pass every ``except Exception``
    and end a batch's task with its waiters unanswered. The cancelled statement failed, so its transaction did not
    commit (PostgreSQL does not act on a cancel while it commits): nothing was sold. A real cancellation of the
    task (``cancelling()`` > 0) goes on as it is."""
    task = asyncio.current_task()
    if task is not None and task.cancelling() == 0:
        raise statement_cancelled() from exc


def _answer_for(exc: BaseException) -> CheckoutError:
    """The answer for a connection error. One raised while an answer was already on its way out (closing the cursor
    of a connection that broke during COMMIT) must not replace that answer: "outcome unknown" must not become
    "nothing was sold"."""
    earlier = exc.__context__
    while earlier is not None:
        if isinstance(earlier, CheckoutError):
            return earlier
        earlier = earlier.__context__
    return unavailable()


async def ensure_database(url: str, *, timeout: float = 5.0) -> bool:
    """Create the database named in ``url`` when the server says it does not exist. True if it was created.

    A fresh local PostgreSQL has only ``postgres``; creating ours on first start keeps `serve` zero-configuration.
    With several hosts, each is asked in turn (see ``Store``: aiopg cannot move past a host that is down).
    """
    missing = None
    for candidate in split_hosts(url):
        try:
            conn = await aiopg.connect(candidate, timeout=timeout)
        except psycopg2.OperationalError as exc:
            if "does not exist" in str(exc):
                missing = candidate
                break
            continue  # down, or a standby refused by target_session_attrs
        except CONNECTION_ERRORS:
            continue
        await conn.close()
        return False
    if missing is None:
        raise unavailable()
    parts = urlsplit(missing)
    name = parts.path.lstrip("/")
    if not name.replace("_", "").replace("-", "").isalnum():
        raise CheckoutError(400, "invalid_request", f"refusing to create a database named {name!r}")
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    try:
        async with aiopg.connect(admin_url, timeout=timeout) as admin, admin.cursor() as cur:
            # Identifiers cannot be parameters; the name was checked to be alphanumeric above.
            await cur.execute(f'CREATE DATABASE "{name}"')
    except (psycopg2.errors.DuplicateDatabase, psycopg2.errors.UniqueViolation):
        # Another replica won the race: told so by name when its database was committed before our check, and as a
        # duplicate row of pg_database's name index when both checks passed at once.
        return False
    except CONNECTION_ERRORS as exc:
        raise unavailable() from exc
    log.info("created database %s", name)
    return True
