"""The SQL of a purchase: each strategy's statements, per-user limits and Idempotency-Keys. Each one that touches
stock says why it is safe under concurrency."""

from hypercheckout.store.prepared import Prepared

# --- pessimistic: the original's transaction, statement by statement ------------------------------------------
# FOR UPDATE makes concurrent buyers of one product queue on the row lock, so the check and the decrement below
# see the same stock.
# With an Idempotency-Key the order's id is reserved here, so the key can be claimed for it before stock or
# limits are looked at (a retry of a placed order must replay it, even once the product has sold out since).
# now() is the transaction's start, which is also the order's created_at: the sale window is checked against the
# very time the order will carry.
LOCK_STOCK = """
SELECT stock, per_user_limit, CASE WHEN %(reserve_id)s THEN nextval('orders_id_seq') END,
       starts_at, ends_at, max_per_order, waiting_room, now(), room_generation, held
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
    RETURNING id, stock, held
), placed AS (
    INSERT INTO orders (user_id, product_id, quantity, replica)
    SELECT %(user_id)s, sold.id, %(quantity)s, %(replica)s FROM sold
    RETURNING id, created_at
)
SELECT placed.id, placed.created_at, sold.stock, sold.held FROM placed, sold
"""

# --- batched: one transaction for many buyers -------------------------------------------------------------------
# The row lock serialises batches of every replica. Order ids are reserved here, in the locked transaction, so the
# answer to each waiter is known before the INSERT (RETURNING order is not guaranteed to follow VALUES order).
# BEGIN rides on this statement and COMMIT on SETTLE_BATCH: a batch costs two round trips, not four. Both are
# prepared on each connection once (store/prepared.py), as the plain statement below is.
LOCK_STOCK_FOR_BATCH = Prepared("lock_stock_for_batch", """
SELECT stock, per_user_limit, now(),
       ARRAY(SELECT nextval('orders_id_seq') FROM generate_series(1, %(count)s)),
       starts_at, ends_at, max_per_order, waiting_room, room_generation, held
FROM products WHERE id = %(product_id)s
FOR UPDATE
""", {"product_id": "bigint", "count": "integer"}, before="BEGIN;")
# One statement takes the stock granted to the whole batch and writes every order of it.
SETTLE_BATCH = Prepared("settle_batch", """
WITH sold AS (
    UPDATE products SET stock = stock - %(total)s WHERE id = %(product_id)s
), released AS (
    DELETE FROM idempotency_keys WHERE key = ANY(%(released_keys)s::text[])
)
INSERT INTO orders (id, user_id, product_id, quantity, replica, room_generation)
SELECT o.id, o.user_id, %(product_id)s, o.quantity, %(replica)s, %(room_generation)s::bigint
FROM unnest(%(ids)s::bigint[], %(user_ids)s::bigint[], %(quantities)s::integer[]) AS o (id, user_id, quantity)
""", {
    "product_id": "bigint", "replica": "text", "total": "integer", "released_keys": "text[]", "ids": "bigint[]",
    "user_ids": "bigint[]", "quantities": "integer[]", "room_generation": "bigint",
}, after="COMMIT;")

# --- batched, the plain case: one statement, one round trip --------------------------------------------------------
# A batch with no Idempotency-Key and no pass, of a product with no per-user limit and no waiting room, whose stock
# covers the whole batch inside its sale window, has nothing to decide request by request: every one is granted.
# Then one statement settles it, as the atomic strategy's does one purchase. The UPDATE takes the row lock and,
# having waited for it, checks its WHERE again on the newest row version (READ COMMITTED), so `stock >= total` is
# checked on the stock it decrements; the orders are inserted only for the row it returned (their ids drawn in a
# CTE that is materialised once, being volatile, so the ids answered are the ids inserted); the statement is its
# own transaction, committed before its answer comes back. Otherwise it writes nothing and returns no row, and the
# batch is decided the two-statement way above. now() is the statement's transaction's start: the sale window is
# checked against the created_at its orders carry. Prepared on each connection once (store/prepared.py): parsing and
# planning it was half of its cost to PostgreSQL.
SETTLE_PLAIN_BATCH = Prepared("settle_plain_batch", """
WITH sold AS (
    UPDATE products SET stock = stock - %(total)s
    WHERE id = %(product_id)s AND stock >= %(total)s AND per_user_limit IS NULL AND NOT waiting_room
      AND (starts_at IS NULL OR starts_at <= now()) AND (ends_at IS NULL OR now() < ends_at)
      AND (max_per_order IS NULL OR max_per_order >= %(largest)s)
    RETURNING stock, held
), placed AS (
    SELECT nextval('orders_id_seq') AS id, o.user_id, o.quantity, o.n
    FROM sold, unnest(%(user_ids)s::bigint[], %(quantities)s::integer[]) WITH ORDINALITY AS o (user_id, quantity, n)
), inserted AS (
    INSERT INTO orders (id, user_id, product_id, quantity, replica)
    SELECT id, user_id, %(product_id)s, quantity, %(replica)s FROM placed
)
SELECT sold.stock, sold.held, now(), ARRAY(SELECT id FROM placed ORDER BY n) FROM sold
""", {
    "product_id": "bigint", "replica": "text", "total": "integer", "largest": "integer", "user_ids": "bigint[]",
    "quantities": "integer[]",
})

# --- per-user limits and idempotency keys (every strategy) --------------------------------------------------------
# Units each of these buyers already owns of the product: bought, or held by a checkout whose hold still runs. Read
# under the product's row lock, which every purchase and every hold of the product takes before it writes: nobody
# can add to these sums until this transaction ends.
OWNED = """
SELECT user_id, sum(quantity)::integer FROM (
    SELECT user_id, quantity FROM orders
    WHERE product_id = %(product_id)s AND user_id = ANY(%(user_ids)s::bigint[])
    UNION ALL
    SELECT user_id, quantity FROM checkouts
    WHERE product_id = %(product_id)s AND status = 'held' AND expires_at > clock_timestamp()
      AND user_id = ANY(%(user_ids)s::bigint[])
) AS owned
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
