"""Per-user limits (a sneaker drop: one pair per buyer), enforced in the transaction that takes the stock, so two
requests of one buyer racing on two replicas cannot both pass — for every strategy."""

from __future__ import annotations

import asyncio

import pytest

from hypercheckout.checkout.allocation import allocate
from hypercheckout.settings import Settings
from tests.helpers import assert_invariant, buy, fire_retrying, orders_of, run_cli, set_stock, settings_env, sql
from tests.replicas import running_replicas


def limit(database_url: str, per_user: int | None) -> None:
    sql(database_url, "UPDATE products SET per_user_limit = %s WHERE id = 1", (per_user,))


@pytest.mark.parametrize("strategy", ["pessimistic", "atomic", "batched"])
def test_a_buyer_racing_on_two_replicas_gets_no_more_than_the_limit(settings: Settings, strategy: str) -> None:
    set_stock(settings.database_url, 1_000)
    limit(settings.database_url, 2)
    # Buyer 1 asks 40 times at once; buyers 2-41 once each; buyer 42 asks for 3 at once (over the limit by itself).
    wanted = [(1, 1)] * 40 + [(user, 1) for user in range(2, 42)] + [(42, 3)]
    with running_replicas(settings, count=2, HC_STRATEGY=strategy) as urls:
        answers, _ = asyncio.run(fire_retrying(urls, wanted))
    owned: dict[int, int] = {}
    for user, qty in orders_of(settings.database_url).values():
        owned[user] = owned.get(user, 0) + qty
    assert owned[1] == 2
    assert all(owned[user] == 1 for user in range(2, 42)) and 42 not in owned
    refused = [a for a in answers if a.status != 200]
    assert len(refused) == 39
    assert all(a.status == 409 and a.body["error"]["code"] == "limit_reached" and a.body["error"]["limit"] == 2
               for a in refused)
    assert_invariant(settings.database_url, 1_000)


@pytest.mark.gen_test
async def test_the_limit_counts_earlier_orders_and_the_cli_sets_and_lifts_it(http_client, base_url,
                                                                           settings: Settings) -> None:
    assert (await buy(http_client, base_url, user=5, qty=2)).status == 200
    done = run_cli("reset", "--stock", "100", "--per-user-limit", "2", env=settings_env(settings))
    assert done.returncode == 0, done.stderr  # reset deletes orders: buyer 5 starts again
    assert (await buy(http_client, base_url, user=5, qty=2)).status == 200
    over = await buy(http_client, base_url, user=5, qty=1)
    assert over.status == 409 and over.body["error"]["code"] == "limit_reached"
    assert "has 2, 1 requested" in over.body["error"]["message"]
    run_cli("reset", "--stock", "100", "--per-user-limit", "0", env=settings_env(settings))
    assert sql(settings.database_url, "SELECT per_user_limit FROM products WHERE id = 1") == [(None,)]


def test_the_allocator_counts_a_buyers_earlier_grants_in_the_same_batch() -> None:
    result = allocate(10, [1, 1, 1, 2], users=[7, 7, 8, 8], bought={8: 1}, per_user_limit=2)
    assert result.granted == (True, True, True, False)
    assert result.refusals == (None, None, None, "limit_reached")
    assert result.stock_after == 7
