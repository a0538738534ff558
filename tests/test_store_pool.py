"""The store's boundary with aiopg's pool: whatever the pool raises before a connection is handed out, nothing has
been done yet, and the answer is a 503 saying so — never a 500."""

from __future__ import annotations

import asyncio
import gc
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import aiopg
import psycopg2
import pytest
import uvloop

from hypercheckout.checkout.errors import CheckoutError
from hypercheckout.processes import free_port, wait_until
from hypercheckout.store import Store, _create_pool, split_hosts


class PoolHandingOutAClosedConnection:
    """aiopg's Pool._acquire asserts that the free connection it pops is open; a connection that breaks between
    its sweep of closed ones and the pop fails that assertion (seen when PostgreSQL died under load)."""

    async def acquire(self) -> None:
        raise AssertionError("<aiopg.connection::Connection isexecuting=False, closed=2, echo=False, >")


def test_a_closed_connection_from_the_pool_is_a_503_with_nothing_sold() -> None:
    store = Store(PoolHandingOutAClosedConnection())  # type: ignore[arg-type]

    async def buy_something() -> CheckoutError:
        with pytest.raises(CheckoutError) as refused:
            async with store.transaction():
                raise AssertionError("not reached: no connection was handed out")
        return refused.value

    refusal = asyncio.run(buy_something())
    assert (refusal.status, refusal.code, refusal.extra["outcome"]) == (503, "unavailable", "nothing_sold")


def test_a_multi_host_url_is_one_url_per_host_with_the_same_credentials_and_options() -> None:
    url = "postgresql://postgres:s3cret@127.0.0.1:5432,127.0.0.1:5433/hypercheckout?target_session_attrs=read-write"
    assert split_hosts(url) == [
        "postgresql://postgres:s3cret@127.0.0.1:5432/hypercheckout?target_session_attrs=read-write",
        "postgresql://postgres:s3cret@127.0.0.1:5433/hypercheckout?target_session_attrs=read-write",
    ]
    assert split_hosts("postgresql://postgres@127.0.0.1:5432/db") == ["postgresql://postgres@127.0.0.1:5432/db"]


def _with_name(url: str, name: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}application_name={name}"


def _connections_named(url: str, name: str) -> int:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (name,))
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def test_a_pool_left_for_another_host_closes_its_connections(database_url: str) -> None:
    """After a failover the old primary may still be up (read-only, or fenced but reachable): the pool the store
    leaves must close its idle connections there, not keep them open for as long as the replica runs."""
    old_url, new_url = _with_name(database_url, "hc-old-host"), _with_name(database_url, "hc-new-host")
    gone = f"postgresql://postgres@127.0.0.1:{free_port()}/hypercheckout"  # the first host: nothing listens

    async def follow() -> None:
        store = Store(await _create_pool(old_url, 3, 5.0), urls=[gone, new_url], url=old_url, size=3, timeout=5.0)
        assert _connections_named(database_url, "hc-old-host") == 3
        try:
            await store._follow_primary()
            assert store.primary_changes == 1
            await asyncio.to_thread(wait_until, lambda: _connections_named(database_url, "hc-old-host") == 0,
                                    timeout=30, what="the old pool's connections to close")
            async with store.cursor() as cur:  # the new pool serves
                await cur.execute("SELECT 1")
        finally:
            await store.close()

    gc.disable()  # not left to the collector: aiopg closes a forgotten connection in __del__, with a warning
    try:
        asyncio.run(follow())
    finally:
        gc.enable()


def refused_connect_then_reused_descriptor() -> Callable[[], Coroutine[Any, Any, str]]:
    """A connection attempt PostgreSQL refuses (a restart), then a socket given the descriptor number libpq had:
    can the loop watch it? What a replica does with the next buyer's connection, or the pool with a new one."""

    async def scenario() -> str:
        loop = asyncio.get_running_loop()
        with socket.socket() as probe:
            libpqs = probe.fileno()  # the number the next socket of this thread gets: libpq's
        closed_port = free_port()
        with pytest.raises(psycopg2.OperationalError):
            await aiopg.connect(f"host=127.0.0.1 port={closed_port} user=x dbname=x sslmode=disable "
                                "gssencmode=disable", timeout=10)
        opened = [socket.socket() for _ in range(2)]
        try:
            [reused] = [s for s in opened if s.fileno() == libpqs]
            try:
                loop.add_reader(reused.fileno(), lambda: None)
            except (RuntimeError, OSError) as exc:
                return f"refused: {exc}"
            loop.remove_reader(reused.fileno())
            return "watched"
        finally:
            for s in opened:
                s.close()

    return scenario


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
def test_a_refused_connection_leaves_its_descriptor_number_usable(event_loop: str) -> None:
    """aiopg 1.4 forgets a writer on a descriptor libpq closed; uvloop then keeps a closed poll for that number and
    refuses every later socket given it ("the handler is closed"): after a PostgreSQL restart, a replica dropped
    buyers' connections. hypercheckout/store/aiopg_fix.py removes the writer; without it the uvloop case fails."""
    run = uvloop.run if event_loop == "uvloop" else asyncio.run
    for _ in range(3):
        assert run(refused_connect_then_reused_descriptor()()) == "watched"
