"""Checkouts (holds): reserve, then confirm or release; expiry gives units back exactly once; available + held + sold
is the stock that was set at every step — through the HTTP API, for every strategy, against the real database."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from hypercheckout.app import Services
from hypercheckout.checkout import holds
from hypercheckout.checkout.errors import CheckoutError
from hypercheckout.checkout.models import Order, PurchaseRequest
from hypercheckout.checkout.service import Checkout
from hypercheckout.checkout.strategy import make_strategy
from hypercheckout.store import Store
from tests.helpers import Answer, assert_invariant, buy, get, orders_of, post_raw, set_stock, sql, stock_of

STRATEGIES = ["pessimistic", "atomic", "batched"]
NO_SWEEP = {"hold_sweep_ms": 3_600_000}  # nothing gives lapsed holds back behind the test's back


async def hold(client: Any, base_url: str, *, user: int = 1, product: int = 1, qty: int = 1,
               headers: dict[str, str] | None = None) -> Answer:
    body = json.dumps({"user_id": user, "product_id": product, "quantity": qty})
    return await post_raw(client, f"{base_url}/checkouts", body, headers)


async def act(client: Any, base_url: str, checkout_id: str, action: str) -> Answer:
    return await post_raw(client, f"{base_url}/checkouts/{checkout_id}/{action}", "")


def use_strategy(services: Services, strategy: str) -> None:
    services.checkout = Checkout(make_strategy(strategy, services.store, replica="test-1"), services.sold_out,
                                 services.store, services.schedule)


def lapse(database_url: str, checkout_id: str | None = None) -> None:
    """Make holds run out now, as time would (PostgreSQL's clock decides expiry)."""
    sql(database_url, "UPDATE checkouts SET expires_at = clock_timestamp() - interval '1 second' "
                      "WHERE status = 'held' AND (%s::text IS NULL OR id = %s::text)", (checkout_id, checkout_id))


async def product(client: Any, base_url: str, product_id: int = 1) -> dict[str, Any]:
    answer = await get(client, f"{base_url}/products/{product_id}")
    assert answer.status == 200
    return answer.body


@pytest.mark.gen_test
@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_a_hold_takes_units_and_its_confirm_is_its_one_order(
    http_client, base_url, database_url: str, services: Services, strategy: str,
) -> None:
    use_strategy(services, strategy)
    set_stock(database_url, 10)
    held = await hold(http_client, base_url, user=5, qty=3)
    assert held.status == 201, held.body
    checkout_id = held.body["checkout_id"]
    assert checkout_id.startswith("co_") and len(checkout_id) >= 24
    assert held.body["status"] == "held" and held.body["quantity"] == 3 and held.body["user_id"] == 5
    assert held.headers["Location"] == f"/checkouts/{checkout_id}"
    shown = await product(http_client, base_url)
    assert (shown["available"], shown["held"], shown["sold"]) == (7, 3, 0)
    assert assert_invariant(database_url, 10) == 7 and orders_of(database_url) == {}

    confirmed = await act(http_client, base_url, checkout_id, "confirm")
    assert confirmed.status == 200, confirmed.body
    assert confirmed.body["checkout_id"] == checkout_id and confirmed.body["message"] == "Order placed successfully"
    order_id = confirmed.body["order_id"]
    assert orders_of(database_url) == {order_id: (5, 3)}
    again = await act(http_client, base_url, checkout_id, "confirm")
    assert again.status == 200 and again.body == confirmed.body and again.headers["Idempotent-Replayed"] == "true"
    assert orders_of(database_url) == {order_id: (5, 3)}

    status = await get(http_client, f"{base_url}/checkouts/{checkout_id}")
    assert status.status == 200
    assert (status.body["status"], status.body["order_id"], status.body["rebooked"]) == ("confirmed", order_id, False)
    shown = await product(http_client, base_url)
    assert (shown["available"], shown["held"], shown["sold"]) == (7, 0, 3)
    released = await act(http_client, base_url, checkout_id, "release")
    assert released.status == 409 and released.body["error"]["code"] == "checkout_confirmed"
    assert assert_invariant(database_url, 10) == 7


@pytest.mark.gen_test
@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_a_release_gives_the_units_back_at_once_and_once(
    http_client, base_url, database_url: str, services: Services, strategy: str,
) -> None:
    use_strategy(services, strategy)
    set_stock(database_url, 2)
    first = await hold(http_client, base_url, user=1, qty=2)
    assert first.status == 201
    # Nothing available, units held: not sold out — a 409 saying they may come back, and when to ask again.
    for attempt in (buy(http_client, base_url, user=2), hold(http_client, base_url, user=3)):
        refused = await attempt
        assert refused.status == 409 and refused.body["error"]["code"] == "units_held", refused.body
        assert refused.body["error"]["held"] == 2 and 1 <= int(refused.headers["Retry-After"]) <= 600
    assert (await product(http_client, base_url))["status"] == "held"

    checkout_id = first.body["checkout_id"]
    for _ in range(3):  # idempotent: the units come back once
        released = await act(http_client, base_url, checkout_id, "release")
        assert released.status == 200 and released.body["status"] == "released", released.body
        assert assert_invariant(database_url, 2) == 2
    refused = await act(http_client, base_url, checkout_id, "confirm")
    assert refused.status == 409 and refused.body["error"]["code"] == "checkout_released"
    assert orders_of(database_url) == {}
    assert (await buy(http_client, base_url, user=2, qty=2)).status == 200
    sold_out = await buy(http_client, base_url, user=4)
    assert sold_out.status == 409 and sold_out.body["error"]["code"] == "out_of_stock"
    assert assert_invariant(database_url, 2) == 0


@pytest.mark.gen_test
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.settings(**NO_SWEEP)
async def test_an_expired_hold_counts_as_available_before_anything_sweeps_it(
    http_client, base_url, database_url: str, services: Services, strategy: str,
) -> None:
    use_strategy(services, strategy)
    set_stock(database_url, 3)
    late = (await hold(http_client, base_url, user=1, qty=2)).body["checkout_id"]
    kept = (await hold(http_client, base_url, user=2, qty=1)).body["checkout_id"]
    lapse(database_url, late)
    # Recorded as held, not yet given back — and already shown as available, the hold as expired.
    assert sql(database_url, "SELECT stock, held FROM products WHERE id = 1")[0] == (0, 3)
    shown = await product(http_client, base_url)
    assert (shown["available"], shown["held"], shown["sold"], shown["status"]) == (2, 1, 0, "live")
    assert (await get(http_client, f"{base_url}/checkouts/{late}")).body["status"] == "expired"
    # A purchase takes the lapsed units (giving them back first, once).
    bought = await buy(http_client, base_url, user=3, qty=2)
    assert bought.status == 200, bought.body
    assert sql(database_url, "SELECT status FROM checkouts WHERE id = %s", (late,))[0][0] == "expired"
    assert assert_invariant(database_url, 3) == 0
    # Its buyer comes back too late: the units went to someone else, nothing is sold to it.
    refused = await act(http_client, base_url, late, "confirm")
    assert refused.status == 409 and refused.body["error"]["code"] == "hold_expired", refused.body
    assert len(orders_of(database_url)) == 1
    # The other hold still runs and confirms.
    assert (await act(http_client, base_url, kept, "confirm")).status == 200
    assert assert_invariant(database_url, 3) == 0


@pytest.mark.gen_test
@pytest.mark.settings(**NO_SWEEP)
async def test_a_late_confirm_is_rebooked_when_units_are_still_available(
    http_client, base_url, database_url: str,
) -> None:
    set_stock(database_url, 5)
    checkout_id = (await hold(http_client, base_url, user=9, qty=2)).body["checkout_id"]
    lapse(database_url, checkout_id)
    confirmed = await act(http_client, base_url, checkout_id, "confirm")
    assert confirmed.status == 200, confirmed.body
    status = (await get(http_client, f"{base_url}/checkouts/{checkout_id}")).body
    assert (status["status"], status["rebooked"], status["order_id"]) == ("confirmed", True, confirmed.body["order_id"])
    assert orders_of(database_url) == {confirmed.body["order_id"]: (9, 2)}
    assert assert_invariant(database_url, 5) == 3


@pytest.mark.gen_test
@pytest.mark.settings(**NO_SWEEP)
async def test_the_sweeper_gives_each_lapsed_hold_back_exactly_once_beside_other_sweepers(
    http_client, base_url, database_url: str, services: Services,
) -> None:
    import asyncio

    set_stock(database_url, 60)
    ids = [(await hold(http_client, base_url, user=u, qty=2)).body["checkout_id"] for u in range(1, 31)]
    lapse(database_url)
    # Five sweepers, a purchase taking lapsed units and releases of already lapsed holds, all at once.
    results = await asyncio.gather(
        *(holds.sweep(services.store) for _ in range(5)),
        buy(http_client, base_url, user=99, qty=10),  # nothing in stock: only lapsed units can serve it
        *(act(http_client, base_url, checkout_id, "release") for checkout_id in ids[:5]),
    )
    swept = results[:5]
    assert results[5].status == 200, results[5].body
    assert all(r.status == 200 and r.body["status"] == "expired" for r in results[6:])
    assert sum(n for s in swept for n in s.values()) <= 30
    assert sql(database_url, "SELECT count(*) FROM checkouts WHERE status = 'expired'")[0][0] == 30
    assert assert_invariant(database_url, 60) == 50
    assert await holds.sweep(services.store) == {}


@pytest.mark.gen_test
async def test_a_key_replays_the_same_checkout_and_another_body_is_refused(
    http_client, base_url, database_url: str,
) -> None:
    set_stock(database_url, 10)
    first = await hold(http_client, base_url, user=4, qty=1, headers={"Idempotency-Key": "hold-4"})
    again = await hold(http_client, base_url, user=4, qty=1, headers={"Idempotency-Key": "hold-4"})
    assert (first.status, again.status) == (201, 200)
    assert again.body == first.body and again.headers["Idempotent-Replayed"] == "true"
    other = await hold(http_client, base_url, user=4, qty=2, headers={"Idempotency-Key": "hold-4"})
    assert other.status == 422 and other.body["error"]["code"] == "idempotency_key_reused"
    assert sql(database_url, "SELECT count(*) FROM checkouts")[0][0] == 1
    assert assert_invariant(database_url, 10) == 9


@pytest.mark.gen_test
@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_the_per_user_limit_counts_held_and_bought_units(
    http_client, base_url, database_url: str, services: Services, strategy: str,
) -> None:
    use_strategy(services, strategy)
    set_stock(database_url, 10)
    sql(database_url, "UPDATE products SET per_user_limit = 3 WHERE id = 1")
    assert (await hold(http_client, base_url, user=6, qty=2)).status == 201
    for attempt in (hold(http_client, base_url, user=6, qty=2), buy(http_client, base_url, user=6, qty=2)):
        refused = await attempt
        assert refused.status == 409 and refused.body["error"]["code"] == "limit_reached", refused.body
    assert (await buy(http_client, base_url, user=6, qty=1)).status == 200
    assert assert_invariant(database_url, 10) == 7


@pytest.mark.gen_test
@pytest.mark.parametrize("path", ["/checkouts/nope", "/checkouts/co_unknown0000000000000000/confirm",
                                  "/checkouts/bad!id/release"])
async def test_an_unknown_checkout_is_a_404(http_client, base_url, path: str) -> None:
    method = "GET" if path.count("/") == 2 else "POST"
    response = await http_client.fetch(f"{base_url}{path}", method=method, body="" if method == "POST" else None,
                                       raise_error=False)
    assert response.code == 404, response.body
    assert json.loads(response.body)["error"]["code"] in ("unknown_checkout", "not_found")


@pytest.mark.gen_test
async def test_a_bad_hold_body_is_a_400_and_writes_nothing(http_client, base_url, database_url: str) -> None:
    for body in ("{", json.dumps({"user_id": 1, "product_id": 1, "quantity": 0}), json.dumps([])):
        answer = await post_raw(http_client, f"{base_url}/checkouts", body)
        assert answer.status == 400 and answer.body["error"]["code"] == "invalid_request"
    assert sql(database_url, "SELECT count(*) FROM checkouts")[0][0] == 0
    assert stock_of(database_url) == 10_000


@pytest.mark.gen_test
async def test_a_waiting_room_keeps_admitting_while_units_are_held_and_a_pass_takes_one_checkout(
    http_client, base_url, database_url: str, services: Services,
) -> None:
    from tests.test_waiting_room import admitted_pass, join, room_product, standing

    pid = room_product(database_url, 2, rate=1000)
    await services.schedule.reread()
    first = await admitted_pass(http_client, base_url, (await join(http_client, base_url, pid, 1))["ticket"])
    held = await hold(http_client, base_url, user=1, product=pid, qty=2, headers={"Queue-Pass": first})
    assert held.status == 201, held.body
    # The pass took its checkout: it buys nothing more, held or not.
    again = await buy(http_client, base_url, user=1, product=pid, headers={"Queue-Pass": first})
    assert again.status == 403 and again.body["error"]["code"] == "queue_pass_used", again.body
    # Nothing available, but units held: the room still places and admits buyers, who are told units_held.
    ticket = (await join(http_client, base_url, pid, 2))["ticket"]
    second = await admitted_pass(http_client, base_url, ticket)
    waiting = await hold(http_client, base_url, user=2, product=pid, headers={"Queue-Pass": second})
    assert waiting.status == 409 and waiting.body["error"]["code"] == "units_held", waiting.body
    assert (await standing(http_client, base_url, ticket))["status"] == "admitted"
    # The units come back and go to the next buyer in line; once everything is sold, the room says so.
    assert (await act(http_client, base_url, held.body["checkout_id"], "release")).status == 200
    taken = await hold(http_client, base_url, user=2, product=pid, qty=2, headers={"Queue-Pass": second})
    assert taken.status == 201, taken.body
    assert (await act(http_client, base_url, taken.body["checkout_id"], "confirm")).status == 200
    assert (await standing(http_client, base_url, ticket))["status"] == "sold_out"
    late = await post_raw(http_client, f"{base_url}/products/{pid}/queue", '{"user_id": 3}')
    assert late.status == 409 and late.body["error"]["code"] == "out_of_stock", late.body
    assert assert_invariant(database_url, 2, product=pid) == 0


@pytest.mark.gen_test
@pytest.mark.settings(soldout_recheck_ms=600_000)  # the memory outlasts any pause of a busy machine here
async def test_a_replica_told_units_are_held_refuses_the_next_buyers_from_memory_until_a_release(
    http_client, base_url, database_url: str,
) -> None:
    """Once PostgreSQL said "none available, some held", the replica answers the next buyers without a key from
    memory for a moment (409 units_held with Retry-After), as it does for sold out — here while the product's row
    is locked, so that an answer can only come from memory; its own release clears that at once."""
    from tests.locks import row_locked

    set_stock(database_url, 1)
    first = await hold(http_client, base_url, user=1)
    told = await hold(http_client, base_url, user=2)
    assert told.status == 409 and told.body["error"]["code"] == "units_held", told.body
    with row_locked(database_url):
        for attempt in (hold(http_client, base_url, user=3), buy(http_client, base_url, user=4)):
            refused = await attempt
            assert refused.status == 409 and refused.body["error"]["code"] == "units_held", refused.body
            assert refused.body["error"]["held"] == 1 and int(refused.headers["Retry-After"]) >= 1
    assert (await act(http_client, base_url, first.body["checkout_id"], "release")).status == 200
    assert (await hold(http_client, base_url, user=3)).status == 201
    assert assert_invariant(database_url, 1) == 0


async def _holds_and_confirms_on_one_connection(database_url: str, stale_between: bool) -> tuple[
        list[Any], list[tuple[str]]]:
    """Three rounds of a hold then its confirm on a pool of one connection, ``DEALLOCATE ALL`` on that connection
    after the first round if ``stale_between``; each round's outcomes, then what the connection has prepared."""
    store = await Store.connect(database_url, size=1, timeout=5)
    try:
        rounds: list[Any] = []
        for n in range(3):
            try:
                held = await holds.hold_one(store, PurchaseRequest(n + 1, 1, 1), "test-1")
                rounds.append(await holds.confirm(store, held.id, "test-1"))
            except CheckoutError as exc:
                rounds.append(exc)
            if n == 0 and stale_between:
                async with store.cursor() as cur:
                    await cur.execute("DEALLOCATE ALL")
        async with store.cursor() as cur:
            await cur.execute("SELECT name FROM pg_prepared_statements ORDER BY name")
            return rounds, await cur.fetchall()
    finally:
        await store.close()


HOLD_STATEMENTS = [("confirm_now",), ("insert_holds",), ("lock_for_hold",)]


def test_a_checkouts_statements_are_prepared_once_on_a_connection(database_url: str) -> None:
    """A hold and its confirm run prepared statements (store/prepared.py), prepared once on a connection: three
    rounds on one connection (a second PREPARE of a name would fail), three orders."""
    set_stock(database_url, 10)
    rounds, prepared = asyncio.run(_holds_and_confirms_on_one_connection(database_url, stale_between=False))
    assert all(isinstance(outcome, Order) for outcome in rounds)
    assert prepared == HOLD_STATEMENTS
    assert len(orders_of(database_url)) == 3
    assert_invariant(database_url, 10)


def test_a_stale_prepared_statement_of_a_hold_is_a_503_that_takes_nothing(database_url: str) -> None:
    """The connection's statements gone: the hold that finds out is 503 and takes no unit, and the next round
    prepares them again on a new connection."""
    set_stock(database_url, 10)
    rounds, prepared = asyncio.run(_holds_and_confirms_on_one_connection(database_url, stale_between=True))
    first, stale, after = rounds
    assert isinstance(first, Order) and isinstance(after, Order)
    assert isinstance(stale, CheckoutError) and (stale.status, stale.code) == (503, "unavailable")
    assert prepared == HOLD_STATEMENTS
    assert sql(database_url, "SELECT count(*) FROM checkouts") == [(2,)]
    assert_invariant(database_url, 10)
