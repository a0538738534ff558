"""Holds under real concurrency: two replicas, buyers holding, confirming, releasing, abandoning and buying at once,
holds running out and being swept meanwhile — and a watcher reading the database the whole time. At every instant
it reads, available + held + sold is the stock that was set; at the end every answer is backed by the database."""

from __future__ import annotations

import asyncio
import json
import random
import threading
from dataclasses import dataclass, field
from typing import Any

import psycopg2
import pytest
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from hypercheckout.settings import Settings
from tests.helpers import Answer, assert_invariant, post_raw, set_stock, sql
from tests.replicas import running_replicas

INITIAL = 120
BUYERS = 360

# One snapshot: the product's row, the units of its orders and of its checkouts still held, and of those the ones
# whose hold ran out (available, not yet given back).
SNAPSHOT = """
SELECT p.stock, p.held, p.initial_stock,
       (SELECT COALESCE(sum(quantity), 0) FROM orders WHERE product_id = p.id),
       (SELECT COALESCE(sum(quantity), 0) FROM checkouts WHERE product_id = p.id AND status = 'held'),
       (SELECT COALESCE(sum(quantity), 0) FROM checkouts
        WHERE product_id = p.id AND status = 'held' AND expires_at <= now())
FROM products p WHERE p.id = 1
"""


@dataclass
class Watch:
    readings: int = 0
    violations: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)


def watch(database_url: str, seen: Watch) -> None:
    conn = psycopg2.connect(database_url)
    conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
    try:
        while not seen.stop.is_set():
            with conn.cursor() as cur:
                cur.execute(SNAPSHOT)
                stock, held, initial, sold, in_holds, lapsed = cur.fetchone()
            conn.rollback()
            seen.readings += 1
            available, running = stock + lapsed, held - lapsed
            if not (available + running + sold == initial and held == in_holds and min(stock, running) >= 0):
                seen.violations.append(f"stock {stock} held {held} (lapsed {lapsed}, in checkouts {in_holds}) "
                                       f"sold {sold} initial {initial}")
    finally:
        conn.close()


async def send(client: Any, url: str, path: str, body: dict[str, Any] | None = None) -> Answer:
    """A request, sent again after Retry-After while admission control refuses it (nothing done)."""
    for _ in range(60):
        answer = await post_raw(client, f"{url}{path}", json.dumps(body) if body is not None else "")
        if answer.status != 503 or answer.body.get("error", {}).get("code") != "overloaded":
            return answer
        await asyncio.sleep(1)
    raise AssertionError(f"{path} still overloaded")


@dataclass
class Buyer:
    user: int
    plan: str  # buy, confirm, release, abandon
    quantity: int
    answers: dict[str, Answer] = field(default_factory=dict)


async def run_buyers(urls: list[str], buyers: list[Buyer], rng: random.Random) -> None:
    client = SimpleAsyncHTTPClient(force_instance=True, max_clients=len(buyers))

    async def one(i: int, buyer: Buyer) -> None:
        await asyncio.sleep(rng.random() * 2)
        body = {"user_id": buyer.user, "product_id": 1, "quantity": buyer.quantity}
        if buyer.plan == "buy":
            buyer.answers["buy"] = await send(client, urls[i % 2], "/purchase", body)
            return
        held = buyer.answers["hold"] = await send(client, urls[i % 2], "/checkouts", body)
        if held.status != 201 or buyer.plan == "abandon":
            return
        await asyncio.sleep(rng.random() * 3.5)  # the hold is 2 s: many confirms come too late
        other = urls[(i + 1) % 2]  # another replica than the one that held
        buyer.answers[buyer.plan] = await send(client, other, f"/checkouts/{held.body['checkout_id']}/{buyer.plan}")
        if buyer.plan == "confirm" and rng.random() < 0.3:  # a retry of the confirm
            buyer.answers["again"] = await send(client, urls[i % 2], f"/checkouts/{held.body['checkout_id']}/confirm")

    try:
        await asyncio.gather(*(one(i, b) for i, b in enumerate(buyers)))
    finally:
        client.close()


@pytest.mark.parametrize("strategy", ["pessimistic", "atomic", "batched"])
def test_units_add_up_at_every_instant_while_buyers_hold_confirm_release_and_abandon(
    settings: Settings, strategy: str,
) -> None:
    url = settings.database_url
    set_stock(url, INITIAL)
    sql(url, "UPDATE products SET hold_seconds = 2 WHERE id = 1")
    rng = random.Random(strategy)
    plans = ["buy"] * 3 + ["confirm"] * 4 + ["release"] * 2 + ["abandon"] * 1
    buyers = [Buyer(user, rng.choice(plans), rng.randint(1, 2)) for user in range(1, BUYERS + 1)]
    seen = Watch()
    watcher = threading.Thread(target=watch, args=(url, seen), daemon=True)
    with running_replicas(settings, count=2, HC_STRATEGY=strategy, HC_HOLD_SWEEP_MS="300") as urls:
        watcher.start()
        try:
            asyncio.run(run_buyers(urls, buyers, rng))
        finally:
            seen.stop.set()
            watcher.join()
    assert seen.readings > 10 and seen.violations == [], seen.violations[:5]

    orders = {row[0]: row[1:] for row in sql(url, "SELECT id, user_id, quantity FROM orders")}
    checkouts = {row[0]: row[1:] for row in sql(url, "SELECT id, status, order_id, user_id, quantity FROM checkouts")}
    told: set[int] = set()
    counts: dict[str, int] = {}
    for buyer in buyers:
        for what, answer in buyer.answers.items():
            key = f"{what} {answer.status} {answer.body.get('error', {}).get('code', '')}".strip()
            counts[key] = counts.get(key, 0) + 1
            assert answer.status in (200, 201, 409), (what, answer.body)
            if answer.status == 409:
                assert answer.body["error"]["code"] in (
                    "out_of_stock", "units_held", "hold_expired", "checkout_confirmed"), answer.body
        if "buy" in buyer.answers and buyer.answers["buy"].status == 200:
            order_id = buyer.answers["buy"].body["order_id"]
            assert orders[order_id] == (buyer.user, buyer.quantity)
            told.add(order_id)
        hold_answer = buyer.answers.get("hold")
        if hold_answer is None or hold_answer.status != 201:
            continue
        checkout_id = hold_answer.body["checkout_id"]
        status, order_id, user, quantity = checkouts[checkout_id]  # every 201 names a checkout that exists
        assert (user, quantity) == (buyer.user, buyer.quantity)
        confirms = [buyer.answers[k] for k in ("confirm", "again") if k in buyer.answers]
        if any(a.status == 200 for a in confirms):
            # A confirm answered 200 has its order, the checkout's one order, whichever retry said so.
            assert status == "confirmed" and {a.body["order_id"] for a in confirms if a.status == 200} == {order_id}
            assert orders[order_id] == (buyer.user, buyer.quantity)
            told.add(order_id)
        else:
            # Refused, released or abandoned: no order.
            assert status != "confirmed" and order_id is None, (buyer.plan, status, confirms)
        if buyer.plan == "release" and buyer.answers["release"].status == 200:
            assert status in ("released", "expired")
    # No order exists that nobody was told about; every confirmed checkout has exactly one order.
    assert set(orders) == told, counts
    confirmed = [c for c in checkouts.values() if c[0] == "confirmed"]
    assert len({c[1] for c in confirmed}) == len(confirmed)
    assert counts.get("confirm 200", 0) > 0 and counts.get("release 200", 0) > 0, counts
    # Confirms came after their hold ran out, and were booked again from units available then.
    assert sql(url, "SELECT count(*) FROM checkouts WHERE rebooked")[0][0] > 0
    assert_invariant(url, INITIAL)
