"""The SQL of verified buyers: the number a (issuer, subject) pair is kept under (0009_buyers.sql)."""

from __future__ import annotations

import aiopg

# Buyers' numbers, made on their first request.
# Made without waiting for its WAL to reach the disk (synchronous_commit off, for this statement only): a new buyer
# costs no fsync of its own, in a sale where nearly every buyer is new. What a PostgreSQL crash can lose is rows of
# the last few hundred milliseconds — and only rows nothing durable refers to yet: an order, a hold or a place of
# the buyer committed after it flushes the WAL up to itself, this row included. A buyer whose row was lost is given
# a new number, under which it owns nothing, as it did not.
#
# The numbers of many buyers at once (those first seen in the same moment): one statement, one connection, however
# many arrive together. A pair another transaction is inserting meanwhile is in neither half (not yet visible, and
# its insert skipped): it is missing from the answer, and asked again.
BUYER_IDS = """
WITH wanted AS (
    SELECT DISTINCT issuer, subject FROM unnest(%(issuers)s::text[], %(subjects)s::text[]) AS w (issuer, subject)
), found AS (
    SELECT b.id, b.issuer, b.subject FROM buyers b JOIN wanted w ON (b.issuer, b.subject) = (w.issuer, w.subject)
), made AS (
    INSERT INTO buyers (issuer, subject)
    SELECT w.issuer, w.subject FROM wanted w, (SELECT set_config('synchronous_commit', 'off', true)) AS relaxed
    WHERE NOT EXISTS (SELECT 1 FROM found f WHERE (f.issuer, f.subject) = (w.issuer, w.subject))
    ON CONFLICT (issuer, subject) DO NOTHING
    RETURNING id, issuer, subject
)
SELECT id, issuer, subject FROM found UNION ALL SELECT id, issuer, subject FROM made
"""


async def buyer_ids(cur: aiopg.Cursor, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
    await cur.execute(BUYER_IDS, {"issuers": [p[0] for p in pairs], "subjects": [p[1] for p in pairs]})
    return {(row[1], row[2]): int(row[0]) for row in await cur.fetchall()}


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
