"""The SQL of verified buyers: the number a (issuer, subject) pair is kept under (0009_buyers.sql)."""

from __future__ import annotations

import aiopg

# The buyer's number, made on its first request. Two first requests at once: the second's insert finds the
# first's row (ON CONFLICT) and returns nothing; it is asked again and finds it.
# Made without waiting for its WAL to reach the disk (synchronous_commit off, for this statement only): a new buyer
# costs no fsync of its own, in a sale where nearly every buyer is new. What a PostgreSQL crash can lose is rows of
# the last few hundred milliseconds — and only rows nothing durable refers to yet: an order, a hold or a place of
# the buyer committed after it flushes the WAL up to itself, this row included. A buyer whose row was lost is given
# a new number, under which it owns nothing, as it did not.
BUYER_ID = """
WITH found AS (
    SELECT id FROM buyers WHERE issuer = %(issuer)s AND subject = %(subject)s
), made AS (
    INSERT INTO buyers (issuer, subject)
    SELECT %(issuer)s, %(subject)s FROM (SELECT set_config('synchronous_commit', 'off', true)) AS relaxed
    WHERE NOT EXISTS (SELECT 1 FROM found)
    ON CONFLICT (issuer, subject) DO NOTHING
    RETURNING id
)
SELECT id FROM found UNION ALL SELECT id FROM made
"""


async def buyer_id(cur: aiopg.Cursor, issuer: str, subject: str) -> int | None:
    await cur.execute(BUYER_ID, {"issuer": issuer, "subject": subject})
    row = await cur.fetchone()
    return None if row is None else int(row[0])


# A buyer's newest orders, with the checkout each confirmed (if any): one index range (orders_by_buyer).
ORDERS_OF = """
SELECT o.id, o.product_id, o.quantity, o.created_at, o.replica, c.id
FROM orders o LEFT JOIN checkouts c ON c.order_id = o.id
WHERE o.user_id = %(user_id)s
ORDER BY o.id DESC LIMIT %(limit)s
"""


async def orders_of(cur: aiopg.Cursor, user_id: int, limit: int) -> list[dict[str, object]]:
    await cur.execute(ORDERS_OF, {"user_id": user_id, "limit": limit})
    return [{"order_id": row[0], "product_id": row[1], "quantity": row[2], "created_at": row[3].isoformat(),
             "replica": row[4], **({"checkout_id": row[5]} if row[5] else {})}
            for row in await cur.fetchall()]
