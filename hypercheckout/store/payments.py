"""The SQL of checkouts' payments (0012_payments.sql): the PaymentIntent a checkout is paid with, where its money
stands, the webhook events received, and the payments the reconciler must settle. Units never move here: a paid
checkout's order is committed by store/holds.py's confirm statements, which set 'capturing' in the same statement."""

from __future__ import annotations

from dataclasses import dataclass

import aiopg

# The intent made for a checkout, recorded once (a retry that made the same intent, by its idempotency key,
# records the same id again). A webhook's hint carries no client secret (None): it never erases the secret the
# intent's maker recorded, perhaps a moment before, which the buyer's page pays with.
SET_INTENT = """
UPDATE checkouts SET payment_intent = %(intent)s, payment_secret = COALESCE(%(secret)s, payment_secret),
                     payment_checked_at = now()
WHERE id = %(checkout_id)s AND payment_status IS NOT NULL AND (payment_intent IS NULL OR payment_intent = %(intent)s)
RETURNING id
"""
# Where the money stands, moved only forward: pending -> capturing (by the confirm statements) -> captured, or
# pending -> cancelling (claimed before the provider is asked to cancel) -> cancelled. A move from a state it is no
# longer in changes nothing.
MOVE = """
UPDATE checkouts SET payment_status = %(to)s, payment_checked_at = now()
WHERE id = %(checkout_id)s AND payment_status = ANY(%(from)s::text[])
RETURNING id
"""
CHECKED = "UPDATE checkouts SET payment_checked_at = now() WHERE id = %(checkout_id)s"
# A hold whose payment could not even be started (the provider unreachable): its units go back at once, and its
# Idempotency-Key is let go, so that the buyer's retry with the same key makes a new checkout.
ABANDON = """
WITH ended AS (
    UPDATE checkouts SET status = 'released', ended_at = clock_timestamp(), payment_status = 'cancelled',
                         idempotency_key = NULL, fingerprint = NULL
    WHERE id = %(checkout_id)s AND status = 'held' AND payment_status = 'pending' AND payment_intent IS NULL
    RETURNING product_id, quantity
)
UPDATE products p SET stock = p.stock + e.quantity, held = p.held - e.quantity FROM ended e WHERE p.id = e.product_id
RETURNING p.id
"""
LOCK_PRODUCT_OF = """
SELECT p.id FROM products p WHERE p.id = (SELECT product_id FROM checkouts WHERE id = %(checkout_id)s) FOR UPDATE
"""
RECORD_EVENT = """
INSERT INTO payment_events (id, type, payment_intent) VALUES (%(id)s, %(type)s, %(intent)s)
ON CONFLICT (id) DO NOTHING RETURNING id
"""
CHECKOUT_OF_INTENT = "SELECT id FROM checkouts WHERE payment_intent = %(intent)s"
# Payments the reconciler asks the provider about: an order whose capture was not seen to succeed (a crash, the
# provider down) a few seconds on; a payment still open a grace period after its hold ended or ran out (its webhook
# lost, or the buyer gone: a late authorization is settled, an unpaid intent cancelled). Oldest first.
IN_DOUBT = """
SELECT id FROM checkouts
WHERE payment_status IN ('pending', 'capturing', 'cancelling')
  AND (CASE WHEN payment_status IN ('capturing', 'cancelling')
            THEN COALESCE(ended_at, expires_at) + make_interval(secs => %(capture_after)s)
            ELSE LEAST(expires_at, COALESCE(ended_at, expires_at)) + make_interval(secs => %(grace)s) END) <= now()
  -- Asked about since the hold ended, and recently: not again yet (a provider that keeps saying "unpaid, and not
  -- cancellable" is asked every recheck seconds, not every pass).
  AND NOT COALESCE(payment_checked_at > now() - make_interval(secs => %(recheck)s)
                   AND payment_checked_at >= COALESCE(ended_at, expires_at), false)
ORDER BY expires_at LIMIT %(limit)s
"""
# One replica reconciles at a time: a session lock, held for one pass.
RECONCILER_LOCK = 0x6863_7061_79  # "hcpay"
TRY_LOCK = "SELECT pg_try_advisory_lock(%(key)s)"
UNLOCK = "SELECT pg_advisory_unlock(%(key)s)"
# The money and the units of a product, for the checker and `hypercheckout payments status`.
MONEY = """
SELECT c.product_id, c.payment_status, count(*), COALESCE(sum(c.amount), 0)::bigint,
       COALESCE(sum(c.quantity), 0)::bigint
FROM checkouts c
WHERE c.payment_status IS NOT NULL AND (%(product_id)s::bigint IS NULL OR c.product_id = %(product_id)s)
GROUP BY c.product_id, c.payment_status ORDER BY c.product_id, c.payment_status
"""


@dataclass(frozen=True, slots=True)
class MoneyRow:
    product_id: int
    payment_status: str
    checkouts: int
    amount: int
    units: int


async def set_intent(cur: aiopg.Cursor, checkout_id: str, intent: str, secret: str | None) -> bool:
    await cur.execute(SET_INTENT, {"checkout_id": checkout_id, "intent": intent, "secret": secret})
    return await cur.fetchone() is not None


async def move(cur: aiopg.Cursor, checkout_id: str, to: str, *, from_: tuple[str, ...]) -> bool:
    await cur.execute(MOVE, {"checkout_id": checkout_id, "to": to, "from": list(from_)})
    return await cur.fetchone() is not None


async def checked(cur: aiopg.Cursor, checkout_id: str) -> None:
    await cur.execute(CHECKED, {"checkout_id": checkout_id})


async def abandon(cur: aiopg.Cursor, checkout_id: str) -> bool:
    """In a transaction: the product's row lock first (the lock order of every statement moving units)."""
    await cur.execute(LOCK_PRODUCT_OF, {"checkout_id": checkout_id})
    if await cur.fetchone() is None:
        return False
    await cur.execute(ABANDON, {"checkout_id": checkout_id})
    return await cur.fetchone() is not None


async def record_event(cur: aiopg.Cursor, event_id: str, kind: str, intent: str | None) -> bool:
    """True the first time this event is seen."""
    await cur.execute(RECORD_EVENT, {"id": event_id, "type": kind, "intent": intent})
    return await cur.fetchone() is not None


async def checkout_of_intent(cur: aiopg.Cursor, intent: str) -> str | None:
    await cur.execute(CHECKOUT_OF_INTENT, {"intent": intent})
    row = await cur.fetchone()
    return None if row is None else str(row[0])


async def in_doubt(cur: aiopg.Cursor, *, grace: float, capture_after: float, recheck: float,
                   limit: int = 100) -> list[str]:
    await cur.execute(IN_DOUBT, {"grace": grace, "capture_after": capture_after, "recheck": recheck,
                                 "limit": limit})
    return [row[0] for row in await cur.fetchall()]


async def try_lock(cur: aiopg.Cursor) -> bool:
    await cur.execute(TRY_LOCK, {"key": RECONCILER_LOCK})
    return bool((await cur.fetchone())[0])


async def unlock(cur: aiopg.Cursor) -> None:
    await cur.execute(UNLOCK, {"key": RECONCILER_LOCK})


async def money(cur: aiopg.Cursor, product_id: int | None = None) -> list[MoneyRow]:
    await cur.execute(MONEY, {"product_id": product_id})
    return [MoneyRow(*row) for row in await cur.fetchall()]
