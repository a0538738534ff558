"""The store's boundary with aiopg's pool: whatever the pool raises before a connection is handed out, nothing has
been done yet, and the answer is a 503 saying so — never a 500."""

from __future__ import annotations

import asyncio

import pytest

from hypercheckout.checkout.errors import CheckoutError
from hypercheckout.store import Store, split_hosts


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
