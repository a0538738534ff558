"""Idempotency-Key: a retry never buys twice, a reused key with another body is refused, duplicates racing on two
replicas place one order, and keys are forgotten after their time — for every strategy, inside a batch too."""

from __future__ import annotations

import asyncio

import pytest

from hypercheckout.app import Services
from hypercheckout.checkout.idempotency import KeyJanitor
from hypercheckout.settings import Settings
from tests.helpers import assert_invariant, buy, fire_retrying, orders_of, set_stock, sql, stock_of
from tests.replicas import running_replicas

STRATEGIES = ["pessimistic", "atomic", "batched"]


def key(name: str) -> dict[str, str]:
    return {"Idempotency-Key": name}


@pytest.mark.gen_test
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.settings()
async def test_a_retry_returns_the_first_answer_and_buys_nothing_more(
    http_client, base_url, database_url: str, services: Services, strategy: str,
) -> None:
    from hypercheckout.checkout.service import Checkout
    from hypercheckout.checkout.strategy import make_strategy

    services.checkout = Checkout(make_strategy(strategy, services.store, replica="test-1"), services.sold_out,
                                 services.store, services.schedule)
    first = await buy(http_client, base_url, user=7, qty=2, headers=key("order-7-a"))
    again = await buy(http_client, base_url, user=7, qty=2, headers=key("order-7-a"))
    assert (first.status, again.status) == (200, 200)
    assert again.body == first.body  # same order id, same time, same replica
    assert again.headers.get("Idempotent-Replayed") == "true" and "Idempotent-Replayed" not in first.headers
    assert orders_of(database_url) == {first.body["order_id"]: (7, 2)}
    assert stock_of(database_url) == 10_000 - 2
    # A new key is a new purchase.
    other = await buy(http_client, base_url, user=7, qty=2, headers=key("order-7-b"))
    assert other.status == 200 and other.body["order_id"] != first.body["order_id"]


@pytest.mark.gen_test
async def test_the_same_key_with_another_body_is_a_422_and_writes_nothing(http_client, base_url,
                                                                          database_url: str) -> None:
    first = await buy(http_client, base_url, user=8, qty=1, headers=key("k-8"))
    assert first.status == 200
    for changed in ({"user": 9, "qty": 1}, {"user": 8, "qty": 2}):
        reused = await buy(http_client, base_url, **changed, headers=key("k-8"))
        assert reused.status == 422 and reused.body["error"]["code"] == "idempotency_key_reused"
    assert len(orders_of(database_url)) == 1 and stock_of(database_url) == 9_999


@pytest.mark.gen_test
@pytest.mark.parametrize("bad", ["x" * 256, "caf\u00e9", "tab\there"])
async def test_a_malformed_key_is_a_400(http_client, base_url, database_url: str, bad: str) -> None:
    answer = await buy(http_client, base_url, headers={"Idempotency-Key": bad})
    assert answer.status == 400 and answer.body["error"]["code"] == "invalid_request"
    assert orders_of(database_url) == {}


@pytest.mark.gen_test
async def test_a_refused_request_leaves_no_key_behind(http_client, base_url, database_url: str) -> None:
    """Only orders are remembered: a 409 has no effect to replay, so its retry is decided afresh."""
    set_stock(database_url, 1)
    assert (await buy(http_client, base_url, user=1, qty=2, headers=key("k-short"))).status == 409
    assert sql(database_url, "SELECT count(*) FROM idempotency_keys") == [(0,)]
    set_stock(database_url, 5)
    assert (await buy(http_client, base_url, user=1, qty=2, headers=key("k-short"))).status == 200


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_duplicates_racing_on_two_replicas_place_one_order(settings: Settings, strategy: str) -> None:
    set_stock(settings.database_url, 1_000)
    # 10 keys, each sent 8 times at once (4 to each replica), among 80 buyers with keys of their own.
    wanted = [(100 + k, 1) for k in range(10) for _ in range(8)] + [(200 + n, 1) for n in range(80)]
    headers = [key(f"dup-{k}") for k in range(10) for _ in range(8)] + [key(f"own-{n}") for n in range(80)]
    with running_replicas(settings, count=2, HC_STRATEGY=strategy) as urls:
        answers, _ = asyncio.run(fire_retrying(urls, wanted, headers))
    orders = orders_of(settings.database_url)
    assert len(orders) == 90  # one per key
    for k in range(10):
        group = answers[k * 8:(k + 1) * 8]
        placed = {a.body["order_id"] for a in group if a.status == 200}
        assert len(placed) == 1, [(a.status, a.body) for a in group]  # every 200 names the same order
        assert all(a.status == 200 or a.body["error"]["code"] == "request_in_progress" for a in group)
        assert orders[placed.pop()] == (100 + k, 1)
    assert all(a.status == 200 for a in answers[80:])
    assert_invariant(settings.database_url, 1_000)


@pytest.mark.gen_test
async def test_keys_are_forgotten_after_their_time(http_client, base_url, database_url: str,
                                                  services: Services) -> None:
    first = await buy(http_client, base_url, user=3, headers=key("old"))
    await buy(http_client, base_url, user=4, headers=key("new"))
    sql(database_url, "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = 'old'")
    janitor = KeyJanitor(services.store, ttl=24 * 3600, interval=3600)
    assert await janitor.sweep() == 1
    assert sql(database_url, "SELECT key FROM idempotency_keys") == [("new",)]
    # The order stays; the key no longer replays it.
    again = await buy(http_client, base_url, user=3, headers=key("old"))
    assert again.status == 200 and again.body["order_id"] != first.body["order_id"]
    assert len(orders_of(database_url)) == 3
