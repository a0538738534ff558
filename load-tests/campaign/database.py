"""What PostgreSQL holds after a run, read in one snapshot once nothing is in flight, and the keys it settles."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import psycopg2

from campaign.history import NOT_SOLD, Operation
from hypercheckout.cluster import Cluster

IN_FLIGHT = re.compile(r"^hypercheckout_purchases_in_flight(?:\{[^}]*\})? (\S+)$", re.MULTILINE)


@dataclass
class ProductState:
    id: int
    stock: int
    initial: int
    per_user_limit: int | None


@dataclass
class Order:
    id: int
    keys: tuple[str, ...]  # the Idempotency-Keys answered with it (none for a keyless purchase)
    user: int
    product: int
    quantity: int
    created_at: float = 0.0  # epoch seconds, PostgreSQL's clock (this machine's)


def last_order_id(database_url: str) -> int:
    """The newest order's id before a run: every order after it is the run's (ids come from a sequence), whatever
    product it is for — a late order of an earlier run's product is seen too."""
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT coalesce(max(id), 0) FROM orders")
        (last,) = cur.fetchone()
    conn.close()
    return int(last)


def read_database(database_url: str, product_ids: list[int], *, after_order: int, key_prefix: str) \
        -> tuple[list[ProductState], list[Order]]:
    """The run's products and every order that may be the run's — on its products, newer than ``after_order``,
    or answered to one of its keys — one row per order with all its keys, from one snapshot."""
    conn = psycopg2.connect(database_url)
    try:
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with conn, conn.cursor() as cur:
            cur.execute("SELECT id, stock, initial_stock, per_user_limit FROM products WHERE id = ANY(%s)",
                        (product_ids,))
            products = [ProductState(*row) for row in cur.fetchall()]
            cur.execute(
                "SELECT o.id, coalesce(array_agg(k.key ORDER BY k.key) FILTER (WHERE k.key IS NOT NULL), '{}'), "
                "o.user_id, o.product_id, o.quantity, extract(epoch FROM o.created_at)::float8 "
                "FROM orders o LEFT JOIN idempotency_keys k ON k.order_id = o.id "
                "WHERE o.id > %(after)s OR o.product_id = ANY(%(ids)s) "
                "OR o.id IN (SELECT order_id FROM idempotency_keys WHERE key LIKE %(prefix)s) "
                "GROUP BY o.id ORDER BY o.id",
                {"after": after_order, "ids": product_ids, "prefix": key_prefix.replace("%", r"\%") + "%"})
            orders = [Order(id, tuple(keys), user, product, quantity, created)
                      for id, keys, user, product, quantity, created in cur.fetchall()]
    finally:
        conn.close()
    return products, orders


def wait_quiet(cluster: Cluster, database_url: str, timeout: float = 60) -> None:
    """Wait until no purchase is in flight: every replica serves none, and no PostgreSQL session but this one is
    in a statement or a transaction — twice in a row, so that a request between two looks is not missed. Until
    then a first try may still commit, and reading the database would judge a history that is not over."""
    ports = [int(p) for p in cluster.env["HC_REPLICA_PORTS"].split(",")]
    deadline = time.monotonic() + timeout
    quiet = 0
    while quiet < 2:
        quiet = quiet + 1 if _replicas_idle(ports) and _postgres_idle(database_url) else 0
        if quiet < 2:
            if time.monotonic() > deadline:
                raise RuntimeError("purchases still in flight after healing")
            time.sleep(0.2)


def _replicas_idle(ports: list[int]) -> bool:
    for port in ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                text = response.read().decode()
        except (urllib.error.URLError, OSError):
            return False
        found = IN_FLIGHT.search(text)
        if found is None or float(found.group(1)) != 0:
            return False
    return True


def _postgres_idle(database_url: str) -> bool:
    conn = psycopg2.connect(database_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            # The replicas' sessions only: 'idle' is a pooled connection between transactions.
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                        "AND datname = current_database() AND pid <> pg_backend_pid() AND state <> 'idle'")
            (busy,) = cur.fetchone()
    finally:
        conn.close()
    return busy == 0


def settle_from_database(database_url: str, ops: list[Operation]) -> None:
    """Settle keyed operations by their key's row: an order if the key has one, else nothing was sold (once
    nothing is in flight: see ``wait_quiet``). Their client was never told otherwise, so this is their outcome."""
    if not ops:
        return
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT key, order_id FROM idempotency_keys WHERE key = ANY(%s)", ([op.key for op in ops],))
        placed = dict(cur.fetchall())
    conn.close()
    for op in ops:
        order_id = placed.get(op.key)
        op.resolved, op.resolved_body = (200, {"order_id": order_id}) if order_id else (NOT_SOLD, {})
        op.resolved_by = "database"
