"""The SQL of the catalogue: reading products (the sale schedule, the dashboard's status, recent orders) and an
operator's changes to them."""

from __future__ import annotations

from hypercheckout.store.line import LINE_NOW
from hypercheckout.store.models import (
    DEFAULT_ADMIT_PER_SECOND,
    DEFAULT_HOLD_SECONDS,
    DEFAULT_PASS_SECONDS,
    MAX_PASS_SECONDS,
    PRODUCT_COLUMNS,
)

# --- reading ---------------------------------------------------------------------------------------------------------
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
# Products among the given ids that have stock again, or units held that may come back (or no longer exist):
# their sold-out flags are stale.
RESTOCKED = """
SELECT ids.id FROM unnest(%(ids)s::bigint[]) AS ids (id)
LEFT JOIN products p ON p.id = ids.id
WHERE p.id IS NULL OR p.stock > 0 OR p.held > 0
"""
STATUS = """
SELECT p.id, p.name, p.stock, p.initial_stock, p.per_user_limit, p.starts_at, p.ends_at, p.max_per_order,
       p.waiting_room, p.admit_per_second, p.pass_seconds, GREATEST(p.admission_origin, p.starts_at),
       p.admitted_before, p.room_generation, p.admission_history, p.held, p.hold_seconds, lapsed_units(p.id),
       p.price, p.currency,
       COALESCE(sum(o.quantity), 0)::bigint AS sold,
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
UPDATE products SET stock = %(stock)s, initial_stock = %(stock)s, held = 0,
    per_user_limit = CASE WHEN %(set_limit)s THEN NULLIF(%(per_user_limit)s, 0) ELSE per_user_limit END
WHERE id = %(product_id)s RETURNING id
"""
# Checkouts first: a confirmed one references its order.
DELETE_ORDERS = """
WITH checkouts_gone AS (DELETE FROM checkouts WHERE product_id = %(product_id)s)
DELETE FROM orders WHERE product_id = %(product_id)s
"""
CREATE_PRODUCT = f"""
INSERT INTO products (name, stock, initial_stock, per_user_limit, max_per_order, starts_at, ends_at,
                      waiting_room, admit_per_second, pass_seconds, admission_origin, room_generation,
                      hold_seconds, price, currency)
VALUES (%(name)s, %(stock)s, %(stock)s, %(per_user_limit)s, %(max_per_order)s, %(starts_at)s, %(ends_at)s,
        COALESCE(%(waiting_room)s, false), COALESCE(%(admit_per_second)s, {DEFAULT_ADMIT_PER_SECOND}),
        COALESCE(%(pass_seconds)s, {DEFAULT_PASS_SECONDS}), CASE WHEN %(waiting_room)s THEN now() END,
        CASE WHEN %(waiting_room)s THEN 1 ELSE 0 END, COALESCE(%(hold_seconds)s, {DEFAULT_HOLD_SECONDS}),
        COALESCE(%(price)s, 0), COALESCE(%(currency)s, 'usd'))
RETURNING {PRODUCT_COLUMNS}
"""
# Every purchase holds this lock while it inserts an order: taken first, it makes the order count and the sums
# read by the next statements final (under READ COMMITTED each statement sees everything committed before it).
LOCK_PRODUCT = "SELECT id FROM products WHERE id = %(product_id)s FOR UPDATE"
COUNT_ORDERS = "SELECT count(*) FROM orders WHERE product_id = %(product_id)s"
# One statement for any subset of fields: set_x says whether x is given (a given NULL clears it). A new stock
# keeps the orders and the holds, so the initial stock becomes stock + units held + units sold and the invariant
# stock + held + Σ quantity = initial stock still holds.
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
    hold_seconds   = CASE WHEN %(set_hold_seconds)s THEN %(hold_seconds)s::integer ELSE hold_seconds END,
    price          = CASE WHEN %(set_price)s THEN %(price)s::bigint ELSE price END,
    currency       = CASE WHEN %(set_currency)s THEN %(currency)s::text ELSE currency END,
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
                          THEN %(stock)s::integer + held + (SELECT COALESCE(sum(quantity), 0)::integer FROM orders
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
