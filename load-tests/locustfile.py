"""The original HyperCheckout's three load scenarios, as Locust user classes (run.py runs them one after another).

* ``WriteLimitUser`` — write limit: 100 users, limiter off, plenty of stock: how many orders per second.
* ``RateLimitShieldUser`` — rate-limit shield: 100 aggressive users with the limiter on: most answers are 429
  (``rate_limited``, then ``banned``), and the sale goes on for everyone else.
* ``FlashSaleDrainUser`` — flash-sale drain: 5,000 users against 10,000 units: stock drains to exactly 0, then
  every answer is 409. The run ends by itself ``HC_LOAD_AFTER_SOLD_OUT`` seconds after the first sold-out answer.

409 and 429 are expected answers of a flash sale, counted as successes; anything else (5xx, 4xx, a dropped
connection) is a failure. Every answer is also counted per second, per outcome and per replica, and every order
id of a 200 is kept: at the end they go to ``HC_LOAD_OUTCOMES`` (JSON) for the report and the invariant check.
``FastHttpUser`` because the plain ``HttpUser`` tops out near 850 requests/s per core.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
from collections import Counter, defaultdict

import gevent
from locust import FastHttpUser, between, constant, events, task

PRODUCT = int(os.environ.get("HC_LOAD_PRODUCT", "1"))
AFTER_SOLD_OUT = float(os.environ.get("HC_LOAD_AFTER_SOLD_OUT", "3"))
EXPECTED = {200, 409, 429}


class Tally:
    """Answers by second and outcome, by replica, and the order ids of every 200."""

    def __init__(self) -> None:
        self.per_second: defaultdict[int, Counter[str]] = defaultdict(Counter)
        self.replicas: Counter[str] = Counter()
        self.order_ids: list[int] = []
        self.sold_out_at: float | None = None

    def add(self, status: int, replica: str | None, order_id: int | None) -> None:
        outcome = str(status) if status in EXPECTED else ("5xx" if status >= 500 else "other")
        self.per_second[int(time.time())][outcome] += 1
        if replica:
            self.replicas[replica] += 1
        if order_id is not None:
            self.order_ids.append(order_id)

    def as_json(self) -> dict[str, object]:
        return {
            "per_second": {str(second): dict(counts) for second, counts in sorted(self.per_second.items())},
            "replicas": dict(self.replicas),
            "order_ids": self.order_ids,
            "sold_out_at": self.sold_out_at,
        }


tally = Tally()
buyer_ids = itertools.count(1)


@events.test_stop.add_listener
def write_tally(environment, **_kwargs) -> None:  # type: ignore[no-untyped-def]
    path = os.environ.get("HC_LOAD_OUTCOMES")
    if path:
        with open(path, "w") as out:
            json.dump(tally.as_json(), out)


@events.init.add_listener
def show_progress(environment, **_kwargs) -> None:  # type: ignore[no-untyped-def]
    """One line every 2 s: the run's progress without Locust's full table."""

    def report() -> None:
        started = time.time()
        while True:
            gevent.sleep(2)
            last = tally.per_second.get(int(time.time()) - 1, Counter())
            users = environment.runner.user_count if environment.runner else 0
            print(f"    {time.time() - started:5.0f} s  users {users:5d}  last second: "
                  + "  ".join(f"{k} {v}" for k, v in sorted(last.items())), flush=True)

    gevent.spawn(report)


class Buyer(FastHttpUser):
    abstract = True
    quantities: tuple[int, ...] = (1,)

    def on_start(self) -> None:
        self.user_id = next(buyer_ids)

    def buy(self) -> tuple[int, int | None]:
        """Buy; returns the status and, for a 409, the stock the answer says is left."""
        body = {"user_id": self.user_id, "product_id": PRODUCT, "quantity": random.choice(self.quantities)}
        with self.client.post("/purchase", json=body, name="POST /purchase", catch_response=True) as response:
            status = response.status_code
            order_id = remaining = None
            if status == 200:
                order_id = response.json().get("order_id")
            elif status == 409:
                remaining = response.json()["error"].get("remaining")
            if status in EXPECTED:
                response.success()
            else:
                response.failure(f"{status}: {(response.text or '')[:200]}")
            tally.add(status, response.headers.get("X-Replica") if response.headers else None, order_id)
            return status, remaining


class WriteLimitUser(Buyer):
    """Scenario 1: every user buys one unit after another as fast as it is answered."""

    wait_time = constant(0)

    @task
    def purchase(self) -> None:
        self.buy()


class RateLimitShieldUser(Buyer):
    """Scenario 2: aggressive users, each one buyer hammering without a pause; the limiter answers most."""

    wait_time = constant(0)

    @task
    def purchase(self) -> None:
        self.buy()


class FlashSaleDrainUser(Buyer):
    """Scenario 3: many buyers, each buying 1 to 3 units now and then, until the stock is gone."""

    wait_time = between(0.2, 1.0)
    quantities = (1, 1, 2, 3)

    @task
    def purchase(self) -> None:
        if self.buy() == (409, 0) and tally.sold_out_at is None:
            tally.sold_out_at = time.time()
            gevent.spawn_later(AFTER_SOLD_OUT, self.environment.runner.quit)
