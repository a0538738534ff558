"""Paid checkouts in the campaign (issue 26): payers hold units of a priced product of their own, then pay on the
simulator — accepted, declined, declined then accepted, slow, or never — sometimes after their hold ran out,
sometimes releasing after paying, while the nemesis takes the simulator down, delays, duplicates, loses and
reorders its webhooks, and replicas die between an order's commit and its capture (the failpoint). Once healed and
reconciled, the checker's money rules:

- per product: the money captured = price x the units ordered (every order paid, nothing paid without an order);
- every authorization ends captured (with its order) or cancelled; none is captured twice;
- every checkout with an order is 'captured', every 'captured' one has its order, and an intent's checkout says
  what the simulator says of it;
- the units add up (campaign/holds.py's rule), and answers are backed by rows: a hold answered 201 exists.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psycopg2
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from campaign.client import call
from campaign.history import Answer, code_of
from campaign.holds import read_product, units_problems

PAY_HOLD_SECONDS = 3
# What a payer does once it holds: cards by the simulator's test payment methods; "never" walks away unpaid.
BEHAVIOURS = ("visa", "visa", "visa", "declined-then-visa", "declined", "slow", "never", "visa-then-release")
CARDS = {"visa": "pm_card_visa", "declined": "pm_card_chargeDeclined", "slow": "pm_card_slow"}


@dataclass
class PayFlow:
    key: str
    user: int
    quantity: int
    behaviour: str
    hold: list[Answer] = field(default_factory=list)
    checkout_id: str | None = None
    intent_id: str | None = None
    paid: list[Answer] = field(default_factory=list)  # the simulator's answers to the payer's cards
    acted: list[Answer] = field(default_factory=list)  # confirm (asks the provider) or release


def simulator_call(base: str, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    request = urllib.request.Request(f"{base}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


async def pay_workload(url: str, simulator: str, seed: str, product: int, payers: int, users: int,
                       duration: float) -> list[PayFlow]:
    flows: list[PayFlow] = []
    client = SimpleAsyncHTTPClient(force_instance=True, max_clients=payers * 2)
    deadline = time.monotonic() + duration

    async def card(flow: PayFlow, method: str) -> None:
        for _ in range(4):  # the simulator down (503): the buyer presses Pay again a little later
            status, body = await call(client, f"{simulator}/_simulator/intents/{flow.intent_id}/pay", "POST",
                                      json.dumps({"payment_method": method}), {"Content-Type": "application/json"})
            flow.paid.append(Answer(status, body, time.time()))
            if status != 503:
                return
            await asyncio.sleep(0.5)

    async def payer(index: int) -> None:
        rng = random.Random(f"{seed}/payer/{index}")
        n = 0
        while time.monotonic() < deadline:
            n += 1
            flow = PayFlow(key=f"{seed}/pay/{index}/{n}", user=rng.randint(1, users), quantity=rng.randint(1, 2),
                           behaviour=rng.choice(BEHAVIOURS))
            flows.append(flow)
            status, body = await call(client, f"{url}/checkouts", "POST",
                                      json.dumps({"user_id": flow.user, "product_id": product,
                                                  "quantity": flow.quantity}),
                                      {"Content-Type": "application/json", "Idempotency-Key": flow.key})
            flow.hold.append(Answer(status, body, time.time()))
            if status in (200, 201):
                flow.checkout_id = body.get("checkout_id")
                flow.intent_id = (body.get("payment") or {}).get("intent_id")
            if flow.intent_id is not None and flow.behaviour != "never":
                await asyncio.sleep(rng.uniform(0, PAY_HOLD_SECONDS * 1.4))  # some pay after the hold ran out
                steps = flow.behaviour.split("-then-")
                for n, step in enumerate(steps):
                    if step in CARDS:
                        await card(flow, CARDS[step])
                        await asyncio.sleep(rng.uniform(0, 0.5))
                        if steps[n + 1:] == ["release"]:
                            continue  # paid, then let go before the payment confirmed it (or after: a 409)
                    action = "release" if step == "release" else "confirm"  # a confirm asks the provider
                    status, body = await call(client, f"{url}/checkouts/{flow.checkout_id}/{action}", "POST", "")
                    flow.acted.append(Answer(status, body, time.time()))
            await asyncio.sleep(rng.uniform(0.05, 0.4))

    try:
        await asyncio.gather(*(payer(i) for i in range(payers)))
    finally:
        client.close()
    return flows


def settled(database_url: str, product: int) -> bool:
    """Nothing in doubt any more: no order waiting for its capture, no open payment of a hold that ended."""
    conn = psycopg2.connect(database_url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM checkouts WHERE product_id = %s AND (payment_status IN "
                        "('capturing', 'cancelling') "
                        "OR (payment_status = 'pending' AND (status <> 'held' OR expires_at < now())))", (product,))
            return cur.fetchone()[0] == 0
    finally:
        conn.close()


@dataclass
class PaidCheckout:
    id: str
    user: int
    quantity: int
    status: str
    order_id: int | None
    amount: int
    payment_status: str | None
    intent: str | None
    key: str | None


def read_money(database_url: str, product: int) -> tuple[tuple[Any, ...], dict[str, PaidCheckout],
                                                         dict[int, tuple[int, int]], int]:
    snapshot, rows, orders, price = read_product(
        database_url, product, "id, user_id, quantity, status, order_id, amount, payment_status, payment_intent, "
                               "idempotency_key", "SELECT price FROM products WHERE id = %s")
    return snapshot, {row[0]: PaidCheckout(*row) for row in rows}, orders, price


def check_payments(flows: list[PayFlow], expected: int, snapshot: tuple[Any, ...],
                   checkouts: dict[str, PaidCheckout], orders: dict[int, tuple[int, int]], price: int,
                   intents: list[dict[str, Any]]) -> list[str]:
    stock, held, initial, sold, in_holds, _ = snapshot
    problems = [f"payments/{p}" for p in units_problems(stock, held, initial, sold, in_holds, expected)]
    mine = {c.id for c in checkouts.values()}
    intents = [i for i in intents if (i.get("metadata") or {}).get("checkout_id") in mine]
    by_intent = {c.intent: c for c in checkouts.values() if c.intent}
    captured = sum(int(i["amount_received"]) for i in intents)
    if captured != price * sold:
        problems.append(f"money: {captured} captured, but {sold} units ordered at {price} make {price * sold}")
    for intent in intents:
        checkout_id = intent["metadata"]["checkout_id"]
        stored = by_intent.get(intent["id"])
        if intent["captures"] > 1:
            problems.append(f"money: intent {intent['id']} of {checkout_id} captured {intent['captures']} times")
        if intent["status"] == "requires_capture":
            problems.append(f"money: intent {intent['id']} of {checkout_id} is authorized, neither captured nor "
                            "cancelled")
        if intent["status"] == "succeeded":
            if stored is None or stored.order_id is None or stored.payment_status != "captured":
                problems.append(f"money: intent {intent['id']} was captured, but its checkout is {stored}")
            elif int(intent["amount_received"]) != stored.amount:
                problems.append(f"money: intent {intent['id']} took {intent['amount_received']}, its checkout "
                                f"owes {stored.amount}")
        elif stored is not None and stored.payment_status == "captured":
            problems.append(f"money: checkout {stored.id} says captured, its intent is {intent['status']}")
        if stored is None and intent["status"] in ("requires_capture", "succeeded"):
            problems.append(f"money: intent {intent['id']} of {checkout_id} (never recorded) holds money")
    for checkout in checkouts.values():
        if checkout.order_id is not None:
            order = orders.get(checkout.order_id)
            if order != (checkout.user, checkout.quantity):
                problems.append(f"payments: checkout {checkout.id}'s order {checkout.order_id} is {order}")
            if checkout.payment_status != "captured":
                problems.append(f"money: checkout {checkout.id} has order {checkout.order_id}, its payment is "
                                f"{checkout.payment_status}")
        elif checkout.payment_status in ("capturing", "captured"):
            problems.append(f"money: checkout {checkout.id} is {checkout.payment_status} without an order")
        if checkout.payment_status in ("capturing", "cancelling") or (
                checkout.payment_status == "pending" and checkout.status != "held"):
            problems.append(f"money: checkout {checkout.id}'s payment is still {checkout.payment_status} after "
                            "reconciliation")
    if len({c.order_id for c in checkouts.values() if c.order_id}) != len(orders):
        problems.append(f"payments: {len(orders)} orders, not one per paid checkout")
    by_key = {c.key: c for c in checkouts.values() if c.key}
    for flow in flows:
        final = flow.hold[-1] if flow.hold else None
        if final is not None and final.status in (200, 201):
            stored = by_key.get(flow.key)
            if stored is None or stored.id != final.body.get("checkout_id"):
                problems.append(f"payments: hold {flow.key} was answered {final.body.get('checkout_id')}, which "
                                f"does not exist as told")
        for n, answer in enumerate([*flow.hold, *flow.acted]):
            if answer.status is not None and answer.status >= 500 and answer.status != 503:
                problems.append(f"contract: {flow.key} (answer {n}) was answered {answer.status}")
            elif answer.status is not None and answer.status >= 400 and code_of(answer.body) is None:
                problems.append(f"contract: {flow.key} (answer {n}) was answered {answer.status} without a JSON error")
        for answer in flow.acted:
            if answer.status == 200 and answer.body.get("order_id") is not None:
                stored = checkouts.get(flow.checkout_id or "")
                if stored is None or stored.order_id != answer.body["order_id"]:
                    problems.append(f"payments: {flow.key}'s confirm was answered order {answer.body['order_id']}, "
                                    f"its checkout is {stored}")
    return problems


def pay_figures(flows: list[PayFlow], checkouts: dict[str, PaidCheckout]) -> dict[str, int]:
    figures: Counter[str] = Counter()
    for flow in flows:
        figures["pay holds"] += 1
        if flow.intent_id:
            figures["pay held"] += 1
        first = flow.hold[0] if flow.hold else None
        if first is not None and first.status == 503:
            figures[f"pay hold 503 {first.code or ''}".strip()] += 1
    for checkout in checkouts.values():
        figures[f"payment {checkout.payment_status}"] += 1
        if checkout.order_id is not None:
            figures["paid units"] += checkout.quantity
    return dict(figures)
