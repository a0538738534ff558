"""The waiting room's SQL: where a line stands, a buyer's place in it, each line's figures, and which passes have
bought. Places are kept in PostgreSQL (0004_queue_places.sql) so the order of joining survives anything Redis may
lose."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiopg

from hypercheckout.store.arrays import int_array
from hypercheckout.store.models import PRODUCT_COLUMNS, Product

if TYPE_CHECKING:
    from hypercheckout.store.database import Store

# How the line stands now, on the row as it was: places admitted so far — in whole microseconds and integers, the
# arithmetic checkout/queue.py's admitted_by does in memory (numeric: a year of microseconds times a million a
# second would overflow bigint).
LINE_NOW = """(admitted_before + CASE WHEN GREATEST(admission_origin, starts_at) < now()
    THEN div(round(extract(epoch FROM now() - GREATEST(admission_origin, starts_at)) * 1000000)::numeric
             * admit_per_second, 1000000)::bigint
    ELSE 0 END)"""

# One statement, so one transaction: the buyer's place in the room's current line, the one it got before if it
# joined before, else one past the later of the last place given and the line's position now (PostgreSQL's now()),
# counted: the line's counter goes up and the place carries it as its ordinal (LENGTHS reads them). The line's row
# is apart from the product's, so a herd of joins never waits on the stock's row lock. Two joins of one buyer at
# once: the second finds the first's place taken (ON CONFLICT) and answers no place; it is asked again — and the
# line's last place and counter went up for nobody (a slot admitted for nobody, a count one high). Taking the
# line's lock before looking for the buyer's place again closes that, but takes a function of five statements per
# join; its one run of the queued drop (4,543 of 5,000 joined before the start) could not be told from this
# machine's noise (the same code without it: 4,579 to 5,000), so the single statement, whose herd behaviour is
# known, stays until that is measured properly. A room that can admit nobody (the sale ended, nothing left) gives
# no place: a join then writes nothing, and a bot rotating buyer ids cannot fill a finished sale's line. Returns the
# product as it is, whether its sale has ended by PostgreSQL's clock, and the place (NULL: no room, none given, or
# that race).
#
# The join commits without waiting for its WAL to reach the disk (synchronous_commit off, for this transaction
# only): every join of a product takes the line's row lock, and holding it through an fsync made a herd of joins
# queue for the row (issue 22's scenario: joins p50 360 ms, and the admitted buyers' purchases behind them). What a
# PostgreSQL crash can cost is the places of the last few hundred milliseconds (wal_writer_delay x 3): their
# holders keep their signed tickets, a newcomer may be given the same place (admitted in the same slot), nobody
# is put ahead of a place that was kept. Orders and stock keep synchronous commits.
JOIN = f"""
WITH room AS (
    SELECT p.*, {LINE_NOW} AS now_place, COALESCE(p.ends_at <= now(), false) AS ended
    FROM products p CROSS JOIN (SELECT set_config('synchronous_commit', 'off', true)) AS relaxed
    WHERE id = %(product_id)s
), placed_before AS (
    SELECT q.place FROM queue_places q JOIN room r ON q.product_id = r.id AND q.generation = r.room_generation
    WHERE q.user_id = %(user_id)s
), line AS (
    INSERT INTO queue_lines AS l (product_id, generation, last_place, joined)
    SELECT id, room_generation, now_place + 1, 1 FROM room
    WHERE waiting_room AND NOT ended AND (stock > 0 OR held > 0) AND NOT EXISTS (SELECT 1 FROM placed_before)
    ON CONFLICT (product_id, generation) DO UPDATE
        SET last_place = GREATEST(l.last_place + 1, EXCLUDED.last_place), joined = l.joined + 1
    RETURNING product_id, generation, last_place, joined
), placed AS (
    INSERT INTO queue_places (product_id, generation, user_id, place, ordinal)
    SELECT product_id, generation, %(user_id)s, last_place, joined FROM line
    ON CONFLICT DO NOTHING
    RETURNING place
)
SELECT {PRODUCT_COLUMNS}, ended, COALESCE((SELECT place FROM placed_before), (SELECT place FROM placed)) FROM room
"""
# Per product: buyers in its current line (the line's counter), and how many of them the line has reached by now
# (the ordinal of the last place at or before where it stands: one lookup in queue_places_by_place). Never a count
# of the places: watching a line costs the same however long it is.
LENGTHS = f"""
SELECT p.id, COALESCE(l.joined, 0), COALESCE((
    SELECT q.ordinal FROM queue_places q
    WHERE q.product_id = p.id AND q.generation = p.room_generation AND q.place <= {LINE_NOW}
    ORDER BY q.place DESC LIMIT 1), 0)
FROM products p LEFT JOIN queue_lines l ON l.product_id = p.id AND l.generation = p.room_generation
WHERE p.id = ANY(%(ids)s::bigint[])
"""

# Buyers among these whose pass of this opening of the room has bought already (orders_one_per_pass) or taken a
# checkout (checkouts_one_per_pass: a pass takes one, which its confirm turns into its one order), and
# PostgreSQL's clock now, to judge the passes' expiry by. Read under the product's row lock, which every purchase
# holds while it inserts its order, and after the purchases' keys were claimed: a retry told its pass expired (its
# probe of the key found none) was told so before this reading, so a first try judged here finds it expired too.
# (now() would be the transaction's start, before it waited for the row.)
PASSES_USED = """
SELECT extract(epoch FROM clock_timestamp())::float8, ARRAY(
    SELECT user_id FROM orders
    WHERE product_id = %(product_id)s AND room_generation = %(generation)s AND user_id = ANY(%(user_ids)s::bigint[])
    UNION
    SELECT user_id FROM checkouts
    WHERE product_id = %(product_id)s AND room_generation = %(generation)s AND user_id = ANY(%(user_ids)s::bigint[]))
"""


@dataclass(frozen=True, slots=True)
class Place:
    """What a join found: the product as it is, whether its sale has ended, and the buyer's place (None: the
    product has no room, or its room admits nobody now and the buyer had no place, or it raced itself)."""

    product: Product
    ended: bool
    number: int | None


async def take_place(store: Store, product_id: int, user_id: int) -> Place | None:
    """The buyer's place in the product's room's line (None: no such product)."""
    for _ in range(2):
        async with store.cursor() as cur:
            await cur.execute(JOIN, {"product_id": product_id, "user_id": user_id})
            row = await cur.fetchone()
        if row is None:
            return None
        place = Place(Product(*row[:-2]), bool(row[-2]), row[-1])
        if place.number is not None or not place.product.waiting_room or place.ended or (
                place.product.stock <= 0 and place.product.held <= 0):
            return place
    return place  # the same buyer raced itself twice in a row: it may join again


async def line_lengths(store: Store, product_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    async with store.cursor() as cur:
        await cur.execute(LENGTHS, {"ids": list(product_ids)})
        return {row[0]: {"length": int(row[1]), "admitted": int(row[2])} for row in await cur.fetchall()}


async def passes_used(cur: aiopg.Cursor, product_id: int, generation: int, user_ids: Sequence[int]) \
        -> tuple[set[int], float]:
    """The buyers among ``user_ids`` whose pass has bought, and PostgreSQL's clock (epoch seconds) as it is now."""
    await cur.execute(PASSES_USED, {"product_id": product_id, "generation": generation,
                                    "user_ids": int_array(sorted(set(user_ids)))})
    now, used = await cur.fetchone()
    return set(used), float(now)
