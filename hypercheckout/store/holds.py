"""The SQL of checkouts (holds): taking units for a while, confirming them into an order, giving them back.

Every statement that moves units runs under the product's row lock, which every purchase and every hold of the
product takes first (then a checkout's row, never the other way round). Under it, in one statement each, units move
between ``products.stock`` (available), ``products.held`` and ``orders``, so that in every committed state
stock + held + Σ orders.quantity = initial_stock (0008_checkouts.sql). A checkout leaves ``held`` once: each
statement that moves it out says ``WHERE status = 'held'``, and the row lock makes the second mover find it gone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import aiopg

from hypercheckout.store.arrays import int_array
from hypercheckout.store.database import Store
from hypercheckout.store.models import SaleRules
from hypercheckout.store.prepared import Prepared, execute

# A checkout's hot statements — this one, INSERT_HOLDS and CONFIRM_NOW — are prepared once on each connection
# (store/prepared.py), as a batch of purchases' are.
# The product's row locked, with what a hold is decided on. now(): the transaction's time, for the sale window.
LOCK_FOR_HOLD = Prepared("lock_for_hold", """
SELECT stock, held, per_user_limit, now(), starts_at, ends_at, max_per_order, waiting_room, room_generation,
       hold_seconds
FROM products WHERE id = %(product_id)s FOR UPDATE
""", {"product_id": "bigint"})
# Which of these keys a committed checkout holds already (read under the row lock: a first try of the same product
# committed before we got it). A first try for another product still committing is caught by INSERT_HOLDS's
# ON CONFLICT, which waits for it.
KEYS_TAKEN = "SELECT idempotency_key FROM checkouts WHERE idempotency_key = ANY(%(keys)s::text[])"
# Holds whose time ran out go back to stock, exactly once (status 'held' -> 'expired' under the row lock), stamped
# with the instant they stopped counting. Also answers how many units were held before (the snapshot's row, which
# the statement's own update does not show) and when the next running hold runs out.
# The last subquery reads the statement's snapshot, where the holds just given back are still 'held', but their
# expiry is behind clock_timestamp() as they were.
RECLAIM = """
WITH lapsed AS (
    UPDATE checkouts SET status = 'expired', ended_at = expires_at
    WHERE product_id = %(product_id)s AND status = 'held' AND expires_at <= clock_timestamp()
    RETURNING quantity
), back AS (
    UPDATE products p SET stock = p.stock + t.units, held = p.held - t.units
    FROM (SELECT COALESCE(sum(quantity), 0)::integer AS units, count(*) AS holds FROM lapsed) AS t
    WHERE p.id = %(product_id)s AND t.holds > 0
    RETURNING t.holds, t.units
)
SELECT COALESCE((SELECT holds FROM back), 0), COALESCE((SELECT units FROM back), 0),
       (SELECT held FROM products WHERE id = %(product_id)s),
       (SELECT extract(epoch FROM min(expires_at) - clock_timestamp())::float8 FROM checkouts
        WHERE product_id = %(product_id)s AND status = 'held' AND expires_at > clock_timestamp())
"""
# The granted holds of a batch, each with its own id, and their units moved from stock to held. A key another
# transaction committed meanwhile (a first try for another product) is skipped and missing from what this returns.
# Every hold of the batch runs for hold_seconds from one reading of PostgreSQL's clock. With payments on (paid), a
# hold of a priced product owes price x quantity at the price of now, and waits for its payment ('pending').
INSERT_HOLDS = Prepared("insert_holds", """
WITH priced AS (SELECT price, currency FROM products WHERE id = %(product_id)s), placed AS (
    INSERT INTO checkouts (id, product_id, user_id, quantity, expires_at, replica, room_generation,
                           idempotency_key, fingerprint, amount, currency, payment_status)
    SELECT h.id, %(product_id)s, h.user_id, h.quantity,
           (SELECT clock_timestamp()) + make_interval(secs => %(hold_seconds)s), %(replica)s, %(room_generation)s,
           h.key, h.fingerprint, h.quantity * priced.price, priced.currency,
           CASE WHEN h.pays AND priced.price > 0 THEN 'pending' END
    FROM unnest(%(ids)s::text[], %(user_ids)s::bigint[], %(quantities)s::integer[], %(keys)s::text[],
                %(fingerprints)s::text[], %(pays)s::boolean[]) AS h (id, user_id, quantity, key, fingerprint, pays),
         priced
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id, expires_at, created_at, quantity, amount, currency, payment_status
), taken AS (
    UPDATE products p SET stock = p.stock - t.units, held = p.held + t.units
    FROM (SELECT COALESCE(sum(quantity), 0)::integer AS units FROM placed) AS t
    WHERE p.id = %(product_id)s
    RETURNING p.stock, p.held
)
SELECT placed.id, placed.expires_at, placed.created_at, taken.stock, taken.held, placed.amount, placed.currency,
       placed.payment_status
FROM placed, taken
""", {
    "product_id": "bigint", "hold_seconds": "double precision", "replica": "text", "room_generation": "bigint",
    "ids": "text[]", "user_ids": "bigint[]", "quantities": "integer[]", "keys": "text[]", "fingerprints": "text[]",
    "pays": "boolean[]",
})
CHECKOUT_COLUMNS = """c.id, c.product_id, c.user_id, c.quantity,
       CASE WHEN c.status = 'held' AND c.expires_at <= clock_timestamp() THEN 'expired' ELSE c.status END,
       c.created_at, c.expires_at, c.ended_at, c.order_id, o.created_at, c.rebooked, c.replica, c.room_generation,
       c.fingerprint, c.status = 'held' AND c.expires_at <= clock_timestamp(), c.amount, c.currency,
       c.payment_status, c.payment_intent, c.payment_secret"""
# A checkout as its buyer sees it: a hold past its expiry reads 'expired' whether or not it was given back yet.
GET_CHECKOUT = f"""
SELECT {CHECKOUT_COLUMNS} FROM checkouts c LEFT JOIN orders o ON o.id = c.order_id WHERE c.id = %(checkout_id)s
"""
CHECKOUT_BY_KEY = f"""
SELECT {CHECKOUT_COLUMNS} FROM checkouts c LEFT JOIN orders o ON o.id = c.order_id
WHERE c.idempotency_key = %(key)s
"""
# A running hold becomes its order, in one statement, one round trip, in autocommit: the product's row locked first
# (the lock order of every statement here), then the checkout turned into its order, its units leaving held for
# sold (stock does not move). The product's lock is held for this statement and its commit only, not for a
# transaction's round trips. Nothing when the checkout is unknown, not held, or ran out, or waits for a payment and
# this is not the payment confirming it: the caller then looks at it (a replay, a refusal, or a re-booking of a hold
# that ran out). A paid checkout's order and its payment's 'capturing' are committed together.
CONFIRM_NOW = Prepared("confirm_now", """
WITH locked AS (
    SELECT p.id, p.stock FROM products p
    WHERE p.id = (SELECT product_id FROM checkouts WHERE id = %(checkout_id)s) FOR UPDATE
), reserved AS (SELECT nextval('orders_id_seq') AS id), confirmed AS (
    UPDATE checkouts c SET status = 'confirmed', ended_at = clock_timestamp(), order_id = (SELECT id FROM reserved),
                           payment_status = CASE WHEN c.payment_status IS NOT NULL THEN 'capturing' END
    FROM locked
    WHERE c.id = %(checkout_id)s AND c.product_id = locked.id AND c.status = 'held'
      AND c.expires_at > clock_timestamp()
      AND (c.payment_status IS NULL OR (%(by_payment)s AND c.payment_status = 'pending'))
    RETURNING c.order_id, c.user_id, c.product_id, c.quantity, c.room_generation
), placed AS (
    INSERT INTO orders (id, user_id, product_id, quantity, replica, room_generation)
    SELECT order_id, user_id, product_id, quantity, %(replica)s, room_generation FROM confirmed
    RETURNING id, created_at
), unheld AS (
    UPDATE products p SET held = p.held - c.quantity FROM confirmed c WHERE p.id = c.product_id
    RETURNING p.stock, p.held
)
SELECT placed.id, placed.created_at, confirmed.user_id, confirmed.product_id, confirmed.quantity, unheld.stock,
       unheld.held
FROM placed, confirmed, unheld
""", {"checkout_id": "text", "by_payment": "boolean", "replica": "text"})
# An expired hold confirmed from units available now (re-booked): they leave stock for sold.
REBOOK = """
WITH reserved AS (SELECT nextval('orders_id_seq') AS id), confirmed AS (
    UPDATE checkouts SET status = 'confirmed', rebooked = true, ended_at = clock_timestamp(),
                         order_id = (SELECT id FROM reserved),
                         payment_status = CASE WHEN payment_status IS NOT NULL THEN 'capturing' END
    WHERE id = %(checkout_id)s AND status = 'expired'
      AND (payment_status IS NULL OR (%(by_payment)s AND payment_status = 'pending'))
    RETURNING order_id, user_id, product_id, quantity, room_generation
), placed AS (
    INSERT INTO orders (id, user_id, product_id, quantity, replica, room_generation)
    SELECT order_id, user_id, product_id, quantity, %(replica)s, room_generation FROM confirmed
    RETURNING id, created_at
), taken AS (
    UPDATE products p SET stock = p.stock - c.quantity FROM confirmed c WHERE p.id = c.product_id
    RETURNING p.stock
)
SELECT placed.id, placed.created_at, taken.stock FROM placed, taken
"""
# A running hold given back by its buyer or an operator: its units return to stock at once. One past its expiry
# (not swept yet) is given back as expired, as the sweeper would have.
RELEASE = """
WITH ended AS (
    UPDATE checkouts
    SET status = CASE WHEN expires_at <= clock_timestamp() THEN 'expired' ELSE 'released' END,
        ended_at = LEAST(expires_at, clock_timestamp())
    WHERE id = %(checkout_id)s AND status = 'held'
    RETURNING product_id, quantity, status
), back AS (
    UPDATE products p SET stock = p.stock + e.quantity, held = p.held - e.quantity FROM ended e
    WHERE p.id = e.product_id
)
SELECT status FROM ended
"""
# Products with holds past their expiry that nothing has given back yet: the sweeper's work.
LAPSED_PRODUCTS = """
SELECT DISTINCT product_id FROM checkouts WHERE status = 'held' AND expires_at <= clock_timestamp()
ORDER BY product_id LIMIT %(limit)s
"""
LOCK_PRODUCT = "SELECT id FROM products WHERE id = %(product_id)s FOR UPDATE"
# Units per product whose hold runs out within the next seconds (the dashboard's "expiring").
EXPIRING = """
SELECT product_id, sum(quantity)::integer FROM checkouts
WHERE status = 'held' AND expires_at > now() AND expires_at <= now() + make_interval(secs => %(within)s)
GROUP BY product_id
"""
# Running holds, the oldest expiry first: for operators.
LIST_HELD = f"""
SELECT {CHECKOUT_COLUMNS} FROM checkouts c LEFT JOIN orders o ON o.id = c.order_id
WHERE c.status = 'held' AND (%(product_id)s::bigint IS NULL OR c.product_id = %(product_id)s::bigint)
ORDER BY c.expires_at LIMIT %(limit)s
"""


@dataclass(frozen=True, slots=True)
class HoldLock:
    stock: int
    held: int
    per_user_limit: int | None
    now: datetime
    rules: SaleRules
    room_generation: int
    hold_seconds: int


@dataclass(frozen=True, slots=True)
class Placed:
    """A hold as its insert wrote it."""

    expires_at: datetime
    created_at: datetime
    amount: int
    currency: str
    payment_status: str | None


@dataclass(frozen=True, slots=True)
class Reclaimed:
    holds: int  # lapsed holds given back by this call
    units: int  # their units, available again
    held: int  # units still held (by running holds)
    next_expiry_in: float | None  # seconds until the next running hold runs out (None: nothing held)


@dataclass(frozen=True, slots=True)
class StoredCheckout:
    id: str
    product_id: int
    user_id: int
    quantity: int
    status: str  # held, confirmed, released or expired (a lapsed hold reads expired before it is swept)
    created_at: datetime
    expires_at: datetime
    ended_at: datetime | None
    order_id: int | None
    ordered_at: datetime | None
    rebooked: bool
    replica: str
    room_generation: int | None
    fingerprint: str | None
    lapsed: bool  # still recorded as held, but expired: its units are available, waiting to be given back
    amount: int = 0  # what it owes, in the currency's minor units (price x quantity when it was taken)
    currency: str = "usd"
    payment_status: str | None = None  # None: no payment; pending, capturing, captured, cancelled (0012)
    payment_intent: str | None = None
    payment_secret: str | None = None


async def lock_for_hold(cur: aiopg.Cursor, product_id: int) -> HoldLock | None:
    await execute(cur, LOCK_FOR_HOLD, {"product_id": product_id})
    row = await cur.fetchone()
    if row is None:
        return None
    return HoldLock(stock=row[0], held=row[1], per_user_limit=row[2], now=row[3], rules=SaleRules(*row[4:8]),
                    room_generation=row[8], hold_seconds=row[9])


async def lock_product(cur: aiopg.Cursor, product_id: int) -> bool:
    await cur.execute(LOCK_PRODUCT, {"product_id": product_id})
    return await cur.fetchone() is not None


async def keys_taken(cur: aiopg.Cursor, keys: Sequence[str]) -> set[str]:
    await cur.execute(KEYS_TAKEN, {"keys": list(keys)})
    return {row[0] for row in await cur.fetchall()}


async def reclaim(cur: aiopg.Cursor, product_id: int) -> Reclaimed:
    """Give back the product's lapsed holds (its row must be locked by this transaction)."""
    await cur.execute(RECLAIM, {"product_id": product_id})
    holds, units, held_before, next_in = await cur.fetchone()
    return Reclaimed(holds=int(holds), units=int(units), held=int(held_before or 0) - int(units),
                     next_expiry_in=None if next_in is None else float(next_in))


async def insert_holds(cur: aiopg.Cursor, product_id: int, *, ids: Sequence[str], user_ids: Sequence[int],
                       quantities: Sequence[int], keys: Sequence[str | None], fingerprints: Sequence[str | None],
                       hold_seconds: int, replica: str, room_generation: int | None, pays: Sequence[bool],
                       ) -> tuple[dict[str, Placed], int, int]:
    """The holds written (by id), and the product's stock and held after them."""
    await execute(cur, INSERT_HOLDS, {
        "product_id": product_id, "ids": list(ids), "user_ids": int_array(user_ids),
        "quantities": int_array(quantities),
        "keys": list(keys), "fingerprints": list(fingerprints), "hold_seconds": hold_seconds, "replica": replica,
        "room_generation": room_generation, "pays": list(pays),
    })
    rows = await cur.fetchall()
    if not rows:
        return {}, -1, -1
    return {r[0]: Placed(r[1], r[2], r[5], r[6], r[7]) for r in rows}, rows[0][3], rows[0][4]


async def get_checkout(cur: aiopg.Cursor, checkout_id: str) -> StoredCheckout | None:
    await cur.execute(GET_CHECKOUT, {"checkout_id": checkout_id})
    row = await cur.fetchone()
    return None if row is None else StoredCheckout(*row)


async def checkout_by_key(cur: aiopg.Cursor, key: str) -> StoredCheckout | None:
    await cur.execute(CHECKOUT_BY_KEY, {"key": key})
    row = await cur.fetchone()
    return None if row is None else StoredCheckout(*row)


async def confirm_now(cur: aiopg.Cursor, checkout_id: str, replica: str, *, by_payment: bool = False) \
        -> tuple[int, datetime, int, int, int, int, int] | None:
    """(order id, created_at, buyer, product, quantity, stock, held) if the running hold was confirmed, else None.
    ``cur`` in autocommit: the statement is its own transaction. ``by_payment``: its payment confirms it."""
    row = await Store.commit(cur, CONFIRM_NOW,
                             {"checkout_id": checkout_id, "replica": replica, "by_payment": by_payment})
    return None if row is None else tuple(row)  # type: ignore[return-value]


async def rebook(cur: aiopg.Cursor, checkout_id: str, replica: str, *, by_payment: bool = False) \
        -> tuple[int, datetime, int] | None:
    await cur.execute(REBOOK, {"checkout_id": checkout_id, "replica": replica, "by_payment": by_payment})
    row = await cur.fetchone()
    return None if row is None else (row[0], row[1], row[2])


async def release(cur: aiopg.Cursor, checkout_id: str) -> str | None:
    """How the hold ended (released, or expired if its time had run out), or None if it was not held."""
    await cur.execute(RELEASE, {"checkout_id": checkout_id})
    row = await cur.fetchone()
    return None if row is None else str(row[0])


async def lapsed_products(cur: aiopg.Cursor, limit: int = 100) -> list[int]:
    await cur.execute(LAPSED_PRODUCTS, {"limit": limit})
    return [row[0] for row in await cur.fetchall()]


async def expiring(cur: aiopg.Cursor, within: float) -> dict[int, int]:
    await cur.execute(EXPIRING, {"within": within})
    return {row[0]: row[1] for row in await cur.fetchall()}


async def list_held(cur: aiopg.Cursor, product_id: int | None = None, limit: int = 100) -> list[StoredCheckout]:
    await cur.execute(LIST_HELD, {"product_id": product_id, "limit": limit})
    return [StoredCheckout(*row) for row in await cur.fetchall()]
