"""Never oversell, never lose an acknowledged order: many buyers at once, two replicas, one real database."""

from __future__ import annotations

import asyncio
import random

import pytest

from hypercheckout.settings import Settings
from tests.helpers import assert_invariant, fire_retrying, orders_of, set_stock, sql
from tests.replicas import running_replicas

INITIAL = 500
PURCHASES = 1000


@pytest.mark.parametrize("strategy", ["pessimistic", "atomic", "batched"])
def test_a_thousand_concurrent_buyers_never_oversell(settings: Settings, strategy: str) -> None:
    set_stock(settings.database_url, INITIAL)
    rng = random.Random(strategy)
    wanted = [(user, rng.randint(1, 3)) for user in range(1, PURCHASES + 1)]

    with running_replicas(settings, count=2, HC_STRATEGY=strategy) as urls:
        # 500 at once at each replica, past its in-flight bound: the excess is refused (503 overloaded, nothing
        # sold) and sent again, as a client told Retry-After does.
        answers, _ = asyncio.run(fire_retrying(urls, wanted))

    assert {a.status for a in answers} <= {200, 409}, {a.status for a in answers}
    orders = orders_of(settings.database_url)
    placed = [(a, want) for a, want in zip(answers, wanted, strict=True) if a.status == 200]
    # Every 200 names an order that exists, for that buyer, with exactly the quantity asked.
    for answer, (user, qty) in placed:
        assert orders[answer.body["order_id"]] == (user, qty)
        assert answer.body["quantity"] == qty
    # No order exists that a client was not told about.
    assert len(orders) == len(placed) == len({a.body["order_id"] for a, _ in placed})
    for answer, (_, qty) in ((a, w) for a, w in zip(answers, wanted, strict=True) if a.status == 409):
        assert answer.body["error"]["code"] == "out_of_stock"
        assert 0 <= answer.body["error"]["remaining"] < qty
    left = assert_invariant(settings.database_url, INITIAL)
    # Demand (~2,000 units) exceeds supply, so nothing that fits a 1-unit buyer may be left unsold.
    assert left < 3
    assert {a.body["replica"] for a, _ in placed} == {"replica-1", "replica-2"}
    if strategy == "batched":
        # Orders settled in one transaction share its timestamp: batching really happened.
        transactions = sql(settings.database_url, "SELECT count(DISTINCT created_at) FROM orders")[0][0]
        assert transactions < len(orders)
