"""Paid checkouts (issue 26) against a real database and the payment simulator, through the official stripe library:
the payment, not the buyer, confirms a hold; money and units agree whichever way the payment goes — declined, late,
after the units were sold, its webhook lost, a crash between the order and the capture — and webhooks that are not
the provider's change nothing."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from hypercheckout.app import Services
from hypercheckout.payments import settle as settle_module
from hypercheckout.payments.provider import ProviderUnavailable
from hypercheckout.payments.simulator import Simulator, make_app
from hypercheckout.processes import free_port
from hypercheckout.settings import Settings
from tests.helpers import Answer, assert_invariant, buy, get, post_raw, set_stock, sql

PRICE = 1500


@pytest.fixture
def simulator(io_loop) -> Iterator[tuple[Simulator, str]]:  # type: ignore[no-untyped-def]
    sim = Simulator()
    port = free_port()
    server = make_app(sim).listen(port, address="127.0.0.1")
    yield sim, f"http://127.0.0.1:{port}"
    server.stop()
    io_loop.run_sync(sim.close)


@pytest.fixture
def settings(settings: Settings, simulator: tuple[Simulator, str]) -> Settings:
    sim, url = simulator
    # Reconciliation is run by the tests themselves (services.payments.reconcile), not in the background.
    return settings.replace(payments="simulator", stripe_api_key=sim.api_key,
                            stripe_webhook_secret=sim.webhook_secret, stripe_api_base=url,
                            payment_reconcile_s=3600.0, payment_grace_s=0.0, hold_sweep_ms=3_600_000)


@pytest.fixture
def sim(simulator: tuple[Simulator, str], base_url: str, database_url: str) -> Simulator:
    simulator[0].webhook_urls = [f"{base_url}/webhooks/payments"]
    set_stock(database_url, 10)
    sql(database_url, "UPDATE products SET price = %s, currency = 'eur'", (PRICE,))
    return simulator[0]


async def checkout(client: Any, base_url: str, *, user: int = 1, qty: int = 1,
                   headers: dict[str, str] | None = None) -> Answer:
    body = json.dumps({"user_id": user, "product_id": 1, "quantity": qty})
    return await post_raw(client, f"{base_url}/checkouts", body, headers)


async def settled(client: Any, base_url: str, checkout_id: str, payment: str) -> dict[str, Any]:
    """The checkout once its payment reads ``payment`` (webhooks arrive when they arrive)."""
    body: dict[str, Any] = {}
    for _ in range(400):
        body = (await get(client, f"{base_url}/checkouts/{checkout_id}")).body
        if body["payment"]["status"] == payment:
            return body
        await asyncio.sleep(0.025)
    raise AssertionError(f"payment never became {payment}: {body}")


def lapse(database_url: str, checkout_id: str | None = None) -> None:
    """Make holds run out now, as time would have: every earlier look at their payments was before it."""
    sql(database_url, "UPDATE checkouts SET expires_at = clock_timestamp() - interval '1 second', "
                      "payment_checked_at = LEAST(payment_checked_at, clock_timestamp() - interval '2 seconds') "
                      "WHERE status = 'held' AND (%s::text IS NULL OR id = %s::text)", (checkout_id, checkout_id))


def money(database_url: str) -> list[tuple[Any, ...]]:
    return sql(database_url, "SELECT payment_status, count(*), sum(amount)::bigint, sum(quantity)::bigint "
                             "FROM checkouts GROUP BY 1 ORDER BY 1")


def assert_money_agrees(database_url: str, sim: Simulator) -> None:
    """Money taken = price x units ordered; every authorization captured (with its order) or cancelled; no
    intent captured twice."""
    ordered = sql(database_url, "SELECT COALESCE(sum(o.quantity), 0) FROM orders o JOIN checkouts c "
                                "ON c.order_id = o.id WHERE c.payment_status IS NOT NULL")[0][0]
    captured = sum(i.amount_received for i in sim.intents.values())
    assert captured == PRICE * ordered, (captured, ordered)
    assert all(i.captures <= 1 for i in sim.intents.values())
    assert not [i.id for i in sim.intents.values() if i.status == "requires_capture"]
    rows = dict(sql(database_url, "SELECT payment_intent, payment_status FROM checkouts "
                                  "WHERE payment_intent IS NOT NULL"))
    for intent in sim.intents.values():
        assert {"succeeded": "captured", "canceled": "cancelled"}.get(intent.status, "pending") == rows[intent.id]


@pytest.mark.gen_test(timeout=30)
async def test_a_paid_checkout_is_confirmed_by_its_payment_and_captured_once(http_client, base_url,
                                                                            database_url: str, sim: Simulator) -> None:
    held = await checkout(http_client, base_url, user=7, qty=2)
    assert held.status == 201, held.body
    payment = held.body["payment"]
    assert (payment["status"], payment["amount"], payment["currency"]) == ("pending", 2 * PRICE, "eur")
    assert payment["client_secret"].startswith(payment["intent_id"]) and "/pay/" in payment["pay_url"]
    intent = sim.intents[payment["intent_id"]]
    assert (intent.amount, intent.currency, intent.capture_method, intent.metadata) == (
        2 * PRICE, "eur", "manual", {"checkout_id": held.body["checkout_id"]})
    # The buyer cannot confirm what nobody paid for.
    early = await post_raw(http_client, f"{base_url}/checkouts/{held.body['checkout_id']}/confirm", "")
    assert (early.status, early.body["error"]["code"]) == (409, "payment_required"), early.body
    assert assert_invariant(database_url, 10) == 8 and sql(database_url, "SELECT count(*) FROM orders") == [(0,)]
    sim.confirm(intent.id, "pm_card_visa")
    done = await settled(http_client, base_url, held.body["checkout_id"], "captured")
    assert done["status"] == "confirmed" and done["order_id"] >= 1 and done["payment"]["pay_url"] is None
    assert (intent.status, intent.amount_received, intent.captures) == ("succeeded", 2 * PRICE, 1)
    assert assert_invariant(database_url, 10) == 8
    assert_money_agrees(database_url, sim)
    # The buyer's confirm now answers with the order the payment made.
    late = await post_raw(http_client, f"{base_url}/checkouts/{held.body['checkout_id']}/confirm", "")
    assert late.status == 200 and late.body["order_id"] == done["order_id"], late.body


@pytest.mark.gen_test(timeout=30)
async def test_webhooks_not_signed_by_the_provider_change_nothing(http_client, base_url, database_url: str,
                                                                  sim: Simulator) -> None:
    sim.webhook_urls = []  # the real events do not arrive (any of them would settle it); the ones below are all
    held = await checkout(http_client, base_url)
    intent = sim.intents[held.body["payment"]["intent_id"]]
    sim.confirm(intent.id, "pm_card_visa")
    event = json.dumps({"id": "evt_forged", "object": "event", "type": "payment_intent.amount_capturable_updated",
                        "created": int(time.time()), "data": {"object": {**intent.as_json()}}})
    url = f"{base_url}/webhooks/payments"
    forger = Simulator(webhook_secret="whsec_not_the_providers")
    for headers in ({}, {"Stripe-Signature": "t=1,v1=deadbeef"}, {"Stripe-Signature": forger.sign(event)},
                    {"Stripe-Signature": sim.sign(event, at=int(time.time()) - 301)},  # too old: a replay
                    {"Stripe-Signature": sim.sign(event + " ")}):  # signed, then changed
        refused = await post_raw(http_client, url, event, headers)
        assert (refused.status, refused.body["error"]["code"]) == (400, "invalid_signature"), (headers, refused.body)
    assert sql(database_url, "SELECT status, payment_status FROM checkouts") == [("held", "pending")]
    assert sql(database_url, "SELECT count(*) FROM payment_events") == [(0,)]
    # The genuine one, delivered twice: recorded once, the checkout settled once.
    signed = {"Stripe-Signature": sim.sign(event)}
    first = await post_raw(http_client, url, event, signed)
    again = await post_raw(http_client, url, event, signed)
    assert (first.status, first.body["duplicate"], again.status, again.body["duplicate"]) == (200, False, 200, True)
    assert sql(database_url, "SELECT id FROM payment_events") == [("evt_forged",)]
    assert sql(database_url, "SELECT status, payment_status FROM checkouts") == [("confirmed", "captured")]
    assert intent.captures == 1
    assert_money_agrees(database_url, sim)


@pytest.mark.gen_test(timeout=30)
async def test_a_declined_card_leaves_the_hold_for_another_card(http_client, base_url, database_url: str,
                                                               sim: Simulator) -> None:
    held = await checkout(http_client, base_url)
    intent = sim.intents[held.body["payment"]["intent_id"]]
    sim.confirm(intent.id, "pm_card_chargeDeclined")
    await asyncio.sleep(0.3)  # its payment_failed webhook settles nothing
    still = await get(http_client, f"{base_url}/checkouts/{held.body['checkout_id']}")
    assert (still.body["status"], still.body["payment"]["status"]) == ("held", "pending")
    assert still.body["payment"]["pay_url"]  # the buyer may pay again
    # Back from the payment page, the buyer's confirm says what happened: declined, try another card.
    asked = await post_raw(http_client, f"{base_url}/checkouts/{held.body['checkout_id']}/confirm", "")
    assert (asked.status, asked.body["error"]["code"]) == (409, "payment_required"), asked.body
    assert asked.body["error"]["payment"] == {"provider_status": "requires_payment_method", "declined": True}
    sim.confirm(intent.id, "pm_card_visa")
    done = await settled(http_client, base_url, held.body["checkout_id"], "captured")
    assert done["status"] == "confirmed"
    assert_money_agrees(database_url, sim)


@pytest.mark.gen_test(timeout=30)
async def test_a_payment_after_its_hold_ran_out_is_rebooked_from_units_still_available(
    http_client, base_url, database_url: str, sim: Simulator, services: Services,
) -> None:
    held = await checkout(http_client, base_url, qty=3)
    intent = sim.intents[held.body["payment"]["intent_id"]]
    lapse(database_url)
    sim.confirm(intent.id, "pm_card_visa")
    done = await settled(http_client, base_url, held.body["checkout_id"], "captured")
    assert done["status"] == "confirmed" and done["rebooked"] is True
    assert assert_invariant(database_url, 10) == 7
    assert services.payments is not None and services.payments.counts.rebooked == 1
    assert_money_agrees(database_url, sim)
    # The operator sees the same in /metrics.
    scraped = (await http_client.fetch(f"{base_url}/metrics")).body.decode()
    for event, count in (("created", 1), ("captured", 1), ("rebooked", 1), ("cancelled", 0)):
        assert f'hypercheckout_payments_total{{event="{event}"}} {count}.0' in scraped, event


@pytest.mark.gen_test(timeout=30)
async def test_a_payment_after_its_units_were_sold_is_cancelled_never_captured(
    http_client, base_url, database_url: str, sim: Simulator,
) -> None:
    set_stock(database_url, 1)
    held = await checkout(http_client, base_url, user=1)
    intent = sim.intents[held.body["payment"]["intent_id"]]
    lapse(database_url)
    sql(database_url, "UPDATE products SET price = 0")  # the last unit goes to a buyer of the free product now
    sold = await buy(http_client, base_url, user=2)
    assert sold.status == 200, sold.body
    sim.confirm(intent.id, "pm_card_visa")
    done = await settled(http_client, base_url, held.body["checkout_id"], "cancelled")
    assert done["status"] == "expired" and "order_id" not in done
    told = await post_raw(http_client, f"{base_url}/checkouts/{held.body['checkout_id']}/confirm", "")
    assert (told.status, told.body["error"]["code"]) == (409, "checkout_cancelled"), told.body
    assert (intent.status, intent.captures, intent.amount_received) == ("canceled", 0, 0)
    assert assert_invariant(database_url, 1) == 0


@pytest.mark.gen_test(timeout=30)
async def test_a_lost_webhook_is_settled_by_the_buyers_confirm_or_by_reconciliation(
    http_client, base_url, database_url: str, sim: Simulator, services: Services,
) -> None:
    sim.faults.lose = 1.0  # every delivery lost (and retried seconds later; the test does not wait for that)
    asked = await checkout(http_client, base_url, user=1)
    reconciled = await checkout(http_client, base_url, user=2)
    for held in (asked, reconciled):
        sim.confirm(held.body["payment"]["intent_id"], "pm_card_visa")
    await asyncio.sleep(0.2)
    assert sql(database_url, "SELECT count(*) FROM orders") == [(0,)]
    # The buyer back from paying asks: the service asks the provider, and the payment confirms it.
    confirmed = await post_raw(http_client, f"{base_url}/checkouts/{asked.body['checkout_id']}/confirm", "")
    assert confirmed.status == 200 and confirmed.body["checkout_id"] == asked.body["checkout_id"], confirmed.body
    # The other buyer is gone; the hold runs out, and reconciliation settles it from what the provider says.
    lapse(database_url, reconciled.body["checkout_id"])
    assert services.payments is not None
    assert await services.payments.reconcile() == {"captured": 1}
    assert money(database_url) == [("captured", 2, 2 * PRICE, 2)]
    assert_money_agrees(database_url, sim)


@pytest.mark.gen_test(timeout=30)
async def test_an_order_whose_capture_failed_is_captured_by_reconciliation(
    http_client, base_url, database_url: str, sim: Simulator, services: Services,
) -> None:
    """The state a crash between the order's commit and the capture leaves (here: the provider down at that very
    moment): an order, its payment 'capturing'; reconciliation captures it, once."""
    payments = services.payments
    assert payments is not None
    capture = payments.provider.capture

    async def down(intent_id: str) -> Any:
        raise ProviderUnavailable("down at the worst moment")

    payments.provider.capture = down  # type: ignore[method-assign]
    sim.webhook_urls = []
    held = await checkout(http_client, base_url, qty=2)
    intent = sim.intents[held.body["payment"]["intent_id"]]
    sim.confirm(intent.id, "pm_card_visa")
    answer = await post_raw(http_client, f"{base_url}/checkouts/{held.body['checkout_id']}/confirm", "")
    assert (answer.status, answer.body["error"]["code"]) == (503, "payments_unavailable"), answer.body
    assert sql(database_url, "SELECT status, payment_status FROM checkouts") == [("confirmed", "capturing")]
    assert intent.status == "requires_capture"
    payments.provider.capture = capture  # type: ignore[method-assign]
    payments.capture_after = 0.0
    assert await payments.reconcile() == {"captured": 1}
    assert (intent.status, intent.captures) == ("succeeded", 1)
    assert await payments.reconcile() == {}  # nothing left in doubt
    assert_money_agrees(database_url, sim)


@pytest.mark.gen_test(timeout=30)
async def test_a_released_or_abandoned_checkout_cancels_its_payment(http_client, base_url, database_url: str,
                                                                   sim: Simulator, services: Services) -> None:
    sim.webhook_urls = []  # an event would settle the paid one before its buyer releases it
    released = await checkout(http_client, base_url, user=1)
    abandoned = await checkout(http_client, base_url, user=2)
    paid_then_released = await checkout(http_client, base_url, user=3)
    sim.confirm(paid_then_released.body["payment"]["intent_id"], "pm_card_visa")
    for held in (released, paid_then_released):
        answer = await post_raw(http_client, f"{base_url}/checkouts/{held.body['checkout_id']}/release", "")
        assert answer.status == 200 and answer.body["payment"]["status"] == "cancelled", answer.body
    lapse(database_url, abandoned.body["checkout_id"])
    assert services.payments is not None
    assert await services.payments.reconcile() == {"cancelled": 1}
    assert {i.status for i in sim.intents.values()} == {"canceled"}
    # The abandoned hold's unit is available (lapsed), given back to stock by the next sweep or buyer that needs it.
    assert assert_invariant(database_url, 10) == 9 and money(database_url) == [("cancelled", 3, 3 * PRICE, 3)]
    assert sql(database_url, "SELECT count(*) FROM orders") == [(0,)]
    assert_money_agrees(database_url, sim)


@pytest.mark.gen_test(timeout=30)
async def test_the_provider_down_holds_nothing_and_the_same_key_works_after(http_client, base_url,
                                                                           database_url: str, sim: Simulator) -> None:
    sim.faults.outage = True
    key = {"Idempotency-Key": "pay-once-1"}
    refused = await checkout(http_client, base_url, headers=key)
    assert (refused.status, refused.body["error"]["code"]) == (503, "payments_unavailable"), refused.body
    assert refused.headers["Retry-After"]
    assert assert_invariant(database_url, 10) == 10
    sim.faults.outage = False
    held = await checkout(http_client, base_url, headers=key)
    assert held.status == 201 and held.body["payment"]["status"] == "pending", held.body
    replay = await checkout(http_client, base_url, headers=key)
    assert replay.status == 200 and replay.body["payment"]["intent_id"] == held.body["payment"]["intent_id"]
    assert len(sim.intents) == 1 and assert_invariant(database_url, 10) == 9


@pytest.mark.gen_test(timeout=30)
async def test_a_cancel_decided_on_a_stale_read_never_cancels_a_payment_whose_order_is_committed(
    http_client, base_url, database_url: str, sim: Simulator, services: Services,
) -> None:
    """Two replicas at once: one read the payment of a lapsed hold as unpaid and goes to cancel it; the other,
    told it was authorized meanwhile, has committed its order. The cancel must not happen: the order's money would
    be gone. (Run against the code before 0013, this cancelled the authorization and left an order unpaid.)"""
    payments = services.payments
    assert payments is not None
    sim.webhook_urls = []
    held = await checkout(http_client, base_url)
    checkout_id = held.body["checkout_id"]
    stale = await payments.provider.retrieve(held.body["payment"]["intent_id"])  # unpaid, as the first replica saw
    lapse(database_url)
    sim.confirm(stale.id, "pm_card_visa")
    capture = payments.provider.capture

    async def down(intent_id: str) -> Any:
        raise ProviderUnavailable("the second replica stops right after its order's commit")

    payments.provider.capture = down  # type: ignore[method-assign]
    with pytest.raises(ProviderUnavailable):
        await payments.settle(checkout_id)
    payments.provider.capture = capture  # type: ignore[method-assign]
    assert sql(database_url, "SELECT status, payment_status FROM checkouts") == [("confirmed", "capturing")]
    # The first replica goes on with what it read: it may not cancel; it settles the payment as it now is.
    assert await payments._cancel(checkout_id, stale) == "captured"
    assert (sim.intents[stale.id].status, sim.intents[stale.id].captures) == ("succeeded", 1)
    assert_money_agrees(database_url, sim)


@pytest.mark.gen_test(timeout=30)
async def test_a_cancel_that_did_not_finish_is_finished_by_reconciliation(
    http_client, base_url, database_url: str, sim: Simulator, services: Services,
) -> None:
    payments = services.payments
    assert payments is not None
    sim.webhook_urls = []
    held = await checkout(http_client, base_url)
    lapse(database_url)
    sql(database_url, "UPDATE checkouts SET payment_status = 'cancelling'")  # claimed, then the replica died
    payments.capture_after = 0.0
    assert await payments.reconcile() == {"cancelled": 1}
    assert sim.intents[held.body["payment"]["intent_id"]].status == "canceled"
    # A payment made after its claim can commit no order: the confirm statements want 'pending'.
    assert sql(database_url, "SELECT count(*) FROM orders") == [(0,)]
    assert_money_agrees(database_url, sim)


@pytest.mark.gen_test(timeout=30)
async def test_a_creation_webhook_read_before_the_intent_was_recorded_keeps_the_buyers_pay_page(
    http_client, base_url, database_url: str, sim: Simulator, services: Services, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The provider's payment_intent.created can reach a replica before the replica that made the intent has
    recorded it. That replica reads the checkout without an intent and records the event's intent as a hint, which
    carries no client secret; if the maker recorded the intent and its secret in between, the secret must stay: the
    buyer's page pays with it. (Seen as a flaky browser test: back from a declined card, the page had no pay_url
    and #pay stayed disabled.)"""
    payments = services.payments
    assert payments is not None
    sim.webhook_urls = []
    held = await checkout(http_client, base_url)
    checkout_id, intent = held.body["checkout_id"], held.body["payment"]["intent_id"]
    assert held.body["payment"]["pay_url"]
    recorded = await settle_module.holds.find(services.store, checkout_id)
    before_the_maker_recorded_it = dataclasses.replace(recorded, payment_intent=None, payment_secret=None)

    async def stale_read(store: Any, wanted: str) -> Any:
        return before_the_maker_recorded_it if wanted == checkout_id else await recorded_find(store, wanted)

    recorded_find = settle_module.holds.find
    monkeypatch.setattr(settle_module.holds, "find", stale_read)
    assert await payments.settle(checkout_id, intent_hint=intent) == "pending"
    monkeypatch.undo()
    shown = (await get(http_client, f"{base_url}/checkouts/{checkout_id}")).body
    assert shown["payment"]["pay_url"] == held.body["payment"]["pay_url"]
    assert sql(database_url, "SELECT payment_intent FROM checkouts") == [(intent,)]
