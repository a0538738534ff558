"""Checkouts in the campaign: buyers who hold units of a product of their own, then confirm, release or abandon
the hold, under the same faults as purchases; what they were told, what PostgreSQL holds afterwards (and at every
instant a watcher read during the run), and the checker's rules for them:

- no unit counted twice: stock + held + Σ orders = the stock the run gave, held = the units of checkouts still
  held — at the end and in every snapshot read during the run;
- every confirmed checkout has exactly one order (its buyer's, its quantity), and every order of the product is
  one confirmed checkout's;
- every released or expired hold gave its units back exactly once (the sum above), and the sweeper leaves no
  hold past its expiry held for long;
- a hold answered 201 (or replayed 200) exists as told; a hold refused with its key has no checkout;
- a confirm answered 200 has its order; a confirm refused has none; a release answered 200 is not confirmed.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psycopg2
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from campaign.client import call
from campaign.history import Answer, code_of

HOLD_SECONDS = 3  # the holds product's hold_seconds: a run of 15-20 s sees many run out
ACTIONS = ("confirm", "confirm", "confirm", "release", "abandon")
RESOLVE_ATTEMPTS = 30
LATE_SWEEP = 10.0  # seconds past its expiry a hold may stay recorded as held (the sweeper runs every second)


@dataclass
class HoldFlow:
    key: str  # the hold's Idempotency-Key
    user: int
    product: int
    quantity: int
    action: str  # confirm, release or abandon
    hold: list[Answer] = field(default_factory=list)  # POST /checkouts: the first answer, then its retries
    checkout_id: str | None = None
    acted: list[Answer] = field(default_factory=list)  # confirm or release: every answer, in order

    @property
    def held(self) -> bool:
        return self.checkout_id is not None


def definite_hold(answer: Answer) -> bool:
    """Whether a POST /checkouts answer settles its key: the checkout (201, or 200 replayed), or a refusal that is
    about the request (4xx other than a retry's own 429/403 and request_in_progress; 503 nothing_sold)."""
    if answer.status in (200, 201, 400, 404, 409, 422) and answer.code != "request_in_progress":
        return True
    return answer.status == 503 and answer.body.get("error", {}).get("outcome") == "nothing_sold"


def definite_action(answer: Answer) -> bool:
    return answer.status in (200, 404, 409)


async def _send_hold(client: SimpleAsyncHTTPClient, url: str, flow: HoldFlow) -> Answer:
    status, body = await call(client, f"{url}/checkouts", "POST",
                              json.dumps({"user_id": flow.user, "product_id": flow.product, "quantity": flow.quantity}),
                              {"Content-Type": "application/json", "Idempotency-Key": flow.key})
    return Answer(status, body, time.time())


async def _send_action(client: SimpleAsyncHTTPClient, url: str, flow: HoldFlow) -> Answer:
    status, body = await call(client, f"{url}/checkouts/{flow.checkout_id}/{flow.action}", "POST", "")
    return Answer(status, body, time.time())


async def hold_workload(url: str, seed: str, product: int, buyers: int, users: int, duration: float) \
        -> list[HoldFlow]:
    """``buyers`` concurrent holders for ``duration`` seconds, each flow: hold (keyed), wait, then confirm,
    release or walk away. Unknown outcomes are left to ``resolve_holds``."""
    flows: list[HoldFlow] = []
    client = SimpleAsyncHTTPClient(force_instance=True, max_clients=buyers * 2)
    deadline = time.monotonic() + duration

    async def holder(index: int) -> None:
        rng = random.Random(f"{seed}/holder/{index}")
        n = 0
        while time.monotonic() < deadline:
            n += 1
            flow = HoldFlow(key=f"{seed}/hold/{index}/{n}", user=rng.randint(1, users), product=product,
                            quantity=rng.randint(1, 2), action=rng.choice(ACTIONS))
            flows.append(flow)
            answer = await _send_hold(client, url, flow)
            flow.hold.append(answer)
            if answer.status in (200, 201):
                flow.checkout_id = answer.body.get("checkout_id")
            if flow.held and flow.action != "abandon":
                await asyncio.sleep(rng.uniform(0, HOLD_SECONDS * 1.5))  # a third come after the hold ran out
                flow.acted.append(await _send_action(client, url, flow))
            await asyncio.sleep(rng.uniform(0.05, 0.3) if flow.held else rng.uniform(0.2, 0.6))

    try:
        await asyncio.gather(*(holder(i) for i in range(buyers)))
    finally:
        client.close()
    return flows


async def resolve_holds(url: str, flows: list[HoldFlow]) -> None:
    """Once healed: retry every hold without a definite answer with its key (a replay says whether it was taken),
    and every confirm or release without one (both are idempotent), until each has a definite answer."""
    client = SimpleAsyncHTTPClient(force_instance=True, max_clients=20)

    async def one(flow: HoldFlow) -> None:
        for _ in range(RESOLVE_ATTEMPTS):
            if flow.hold and definite_hold(flow.hold[-1]):
                break
            answer = await _send_hold(client, url, flow)
            flow.hold.append(answer)
            if answer.status in (200, 201):
                flow.checkout_id = answer.body.get("checkout_id")
            elif not definite_hold(answer):
                await asyncio.sleep(0.5)
        if not flow.held or flow.action == "abandon" or not flow.acted:
            return  # an action never sent (the run ended first) is an abandoned hold
        for _ in range(RESOLVE_ATTEMPTS):
            if definite_action(flow.acted[-1]):
                return
            flow.acted.append(await _send_action(client, url, flow))
            if not definite_action(flow.acted[-1]):
                await asyncio.sleep(0.5)

    try:
        await asyncio.gather(*(one(flow) for flow in flows))
    finally:
        client.close()


# --- what PostgreSQL holds -------------------------------------------------------------------------------------------

# One snapshot of the product: its row, the units ordered, the units of checkouts still held, and those past expiry.
SNAPSHOT = """
SELECT p.stock, p.held, p.initial_stock,
       (SELECT COALESCE(sum(quantity), 0) FROM orders WHERE product_id = p.id),
       (SELECT COALESCE(sum(quantity), 0) FROM checkouts WHERE product_id = p.id AND status = 'held'),
       (SELECT COALESCE(max(extract(epoch FROM now() - expires_at)), 0)::float8 FROM checkouts
        WHERE product_id = p.id AND status = 'held')
FROM products p WHERE p.id = %s
"""


def units_problems(stock: int, held: int, initial: int, sold: int, in_holds: int, expected: int) -> list[str]:
    problems = []
    if initial != expected:
        problems.append(f"holds: the product's initial stock is {initial}, the run gave it {expected}")
    if stock < 0 or held < 0:
        problems.append(f"holds: stock {stock}, held {held}: below zero")
    if held != in_holds:
        problems.append(f"holds: held {held}, but the checkouts still held have {in_holds} units")
    if stock + held + sold != expected:
        problems.append(f"holds: counted twice or lost: stock {stock} + held {held} + sold {sold} != {expected}")
    return problems


class Watcher:
    """Reads the product's snapshot over and over during the run (when PostgreSQL answers) and keeps every
    reading that breaks the sum: the invariant at every instant it could see, not only at the end."""

    def __init__(self, database_url: str, product: int, expected: int) -> None:
        self._url, self._product, self._expected = database_url, product, expected
        self.readings = 0
        self.problems: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="holds-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn = psycopg2.connect(self._url, connect_timeout=2)
            except psycopg2.Error:
                self._stop.wait(0.5)
                continue
            try:
                conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
                while not self._stop.is_set():
                    with conn.cursor() as cur:
                        cur.execute(SNAPSHOT, (self._product,))
                        stock, held, initial, sold, in_holds, _ = cur.fetchone()
                    conn.rollback()
                    self.readings += 1
                    found = units_problems(stock, held, initial, sold, in_holds, self._expected)
                    if found and len(self.problems) < 20:
                        self.problems += [f"{problem} (read during the run)" for problem in found]
                    self._stop.wait(0.05)
            except psycopg2.Error:
                self._stop.wait(0.5)  # a restart or failover: read again once it answers
            finally:
                conn.close()


@dataclass
class Checkout:
    id: str
    user: int
    quantity: int
    status: str
    order_id: int | None
    key: str | None


def read_product(database_url: str, product: int, columns: str, extra: str | None = None) \
        -> tuple[tuple[Any, ...], list[tuple[Any, ...]], dict[int, tuple[int, int]], Any]:
    """In one snapshot: the product's units, its checkouts' ``columns``, its orders (id -> (buyer, quantity)), and
    the first value of ``extra`` (a statement about the product), if any."""
    conn = psycopg2.connect(database_url)
    try:
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with conn, conn.cursor() as cur:
            cur.execute(SNAPSHOT, (product,))
            snapshot = cur.fetchone()
            cur.execute(f"SELECT {columns} FROM checkouts WHERE product_id = %s", (product,))
            checkouts = cur.fetchall()
            cur.execute("SELECT id, user_id, quantity FROM orders WHERE product_id = %s", (product,))
            orders = {row[0]: (row[1], row[2]) for row in cur.fetchall()}
            value = None
            if extra is not None:
                cur.execute(extra, (product,))
                value = cur.fetchone()[0]
    finally:
        conn.close()
    return snapshot, checkouts, orders, value


def read_holds(database_url: str, product: int) \
        -> tuple[tuple[Any, ...], dict[str, Checkout], dict[int, tuple[int, int]]]:
    """The product's snapshot, its checkouts and its orders (id -> (buyer, quantity)), in one snapshot."""
    snapshot, rows, orders, _ = read_product(database_url, product,
                                             "id, user_id, quantity, status, order_id, idempotency_key")
    return snapshot, {row[0]: Checkout(*row) for row in rows}, orders


def check_holds(flows: list[HoldFlow], expected: int, snapshot: tuple[Any, ...], checkouts: dict[str, Checkout],
                orders: dict[int, tuple[int, int]]) -> list[str]:
    stock, held, initial, sold, in_holds, oldest_past_expiry = snapshot
    problems = units_problems(stock, held, initial, sold, in_holds, expected)
    if oldest_past_expiry > LATE_SWEEP:
        problems.append(f"holds: a hold {oldest_past_expiry:.1f} s past its expiry is still held: nothing swept it")
    by_key = {c.key: c for c in checkouts.values() if c.key is not None}
    orders_of: Counter[int] = Counter()
    for checkout in checkouts.values():
        if checkout.status == "confirmed":
            order = orders.get(checkout.order_id or 0)
            if order is None or order != (checkout.user, checkout.quantity):
                problems.append(f"holds: checkout {checkout.id} is confirmed, but its order {checkout.order_id} "
                                f"is {order}")
            orders_of[checkout.order_id or 0] += 1
        elif checkout.order_id is not None:
            problems.append(f"holds: checkout {checkout.id} is {checkout.status} with order {checkout.order_id}")
    for order_id, (user, quantity) in orders.items():
        if orders_of[order_id] != 1:
            problems.append(f"holds: order {order_id} (buyer {user}, {quantity} units) is the order of "
                            f"{orders_of[order_id]} checkouts")
    for flow in flows:
        stored = by_key.get(flow.key)
        answers = flow.hold
        final = answers[-1] if answers else None
        if final is None or not definite_hold(final):
            problems.append(f"holds: hold {flow.key} has no definite answer after its retries")
            continue
        if final.status in (200, 201):
            if stored is None or stored.id != final.body.get("checkout_id") \
                    or (stored.user, stored.quantity) != (flow.user, flow.quantity):
                problems.append(f"holds: hold {flow.key} was answered checkout {final.body.get('checkout_id')}, "
                                f"which does not exist as told ({stored})")
                continue
        elif stored is not None:
            problems.append(f"holds: hold {flow.key} was refused ({final.status} {final.code}) yet has checkout "
                            f"{stored.id}")
            continue
        if stored is None or not flow.acted:
            continue
        last = flow.acted[-1]
        if not definite_action(last):
            problems.append(f"holds: the {flow.action} of {stored.id} has no definite answer after its retries")
        elif flow.action == "confirm" and last.status == 200:
            if stored.status != "confirmed" or last.body.get("order_id") != stored.order_id:
                problems.append(f"holds: the confirm of {stored.id} was answered order {last.body.get('order_id')}, "
                                f"but the checkout is {stored.status} with order {stored.order_id}")
        elif flow.action == "confirm" and stored.status == "confirmed":
            problems.append(f"holds: the confirm of {stored.id} was refused ({last.status} {last.code}), yet it has "
                            f"order {stored.order_id}")
        elif flow.action == "release" and last.status == 200 and stored.status not in ("released", "expired"):
            problems.append(f"holds: the release of {stored.id} was answered {last.body.get('status')}, but the "
                            f"checkout is {stored.status}")
    for flow in flows:
        for n, answer in enumerate([*flow.hold, *flow.acted]):
            if answer.status is not None and answer.status >= 500 and answer.status != 503:
                problems.append(f"contract: {flow.key} (answer {n}) was answered {answer.status}")
            elif answer.status is not None and answer.status >= 400 and code_of(answer.body) is None:
                problems.append(f"contract: {flow.key} (answer {n}) was answered {answer.status} without a JSON error")
    return problems


def hold_figures(flows: list[HoldFlow]) -> dict[str, int]:
    figures: Counter[str] = Counter()
    for flow in flows:
        figures["holds"] += 1
        first = flow.hold[0] if flow.hold else None
        figures[f"hold {first.status if first else 'none'} {first.code or '' if first else ''}".strip()] += 1
        if flow.held:
            figures["held"] += 1
        if flow.acted:
            last = flow.acted[-1]
            figures[f"{flow.action} {last.status} {last.code or ''}".strip()] += 1
            if flow.action == "confirm" and last.status == 200 and last.body.get("order_id"):
                figures["confirmed"] += 1
        figures["retried"] += max(0, len(flow.hold) - 1) + max(0, len(flow.acted) - 1)
    return dict(figures)
