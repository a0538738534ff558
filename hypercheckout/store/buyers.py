"""The SQL of verified buyers: the number a (issuer, subject) pair is kept under (0009_buyers.sql)."""

from __future__ import annotations

import aiopg

# The buyer's number, made on its first request. Two first requests at once: the second's insert finds the
# first's row (ON CONFLICT) and returns nothing; it is asked again and finds it.
BUYER_ID = """
WITH found AS (
    SELECT id FROM buyers WHERE issuer = %(issuer)s AND subject = %(subject)s
), made AS (
    INSERT INTO buyers (issuer, subject) SELECT %(issuer)s, %(subject)s WHERE NOT EXISTS (SELECT 1 FROM found)
    ON CONFLICT (issuer, subject) DO NOTHING
    RETURNING id
)
SELECT id FROM found UNION ALL SELECT id FROM made
"""


async def buyer_id(cur: aiopg.Cursor, issuer: str, subject: str) -> int | None:
    await cur.execute(BUYER_ID, {"issuer": issuer, "subject": subject})
    row = await cur.fetchone()
    return None if row is None else int(row[0])
