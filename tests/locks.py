"""Holding a product's row lock from outside the service, the way an operator's psql session or a slow transaction
would, and finding the backends that wait behind it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2

from tests.helpers import sql


@contextmanager
def row_locked(database_url: str, product: int = 1) -> Iterator[None]:
    """The product's row is locked (FOR UPDATE in an open transaction) until the block ends."""
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT stock FROM products WHERE id = %s FOR UPDATE", (product,))
        yield
    finally:
        conn.rollback()
        conn.close()


@contextmanager
def open_transaction(database_url: str) -> Iterator[psycopg2.extensions.cursor]:
    """A cursor in a transaction of its own, committed when the block ends (unless rolled back within it)."""
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cur:
            yield cur
        conn.commit()
    finally:
        conn.close()


def lock_waiters(database_url: str) -> list[int]:
    """Process ids of the backends waiting for a lock, oldest wait first."""
    rows = sql(database_url, """
        SELECT pid FROM pg_stat_activity
        WHERE datname = current_database() AND wait_event_type = 'Lock' ORDER BY query_start
    """)
    return [row[0] for row in rows]


async def wait_for_lock_waiters(database_url: str, count: int, timeout: float = 10) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(found := lock_waiters(database_url)) < count:
        assert time.monotonic() < deadline, f"{len(found)} backends wait for the lock, wanted {count}"
        await asyncio.sleep(0.02)
    return found


def cancel_backend(database_url: str, pid: int) -> None:
    assert sql(database_url, "SELECT pg_cancel_backend(%s)", (pid,)) == [(True,)]
