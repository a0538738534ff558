"""The original HyperCheckout's load test and scenarios, and ours, as Locust user classes (run.py runs them one
after another).

* ``OriginalUser`` — the original's own load test: 300 users spawned 100 a second, each waiting 1 to 3 s between
  purchases; only 200 and 409 are successes.
* ``WriteLimitUser`` — write limit: 100 users, limiter off, plenty of stock: how many orders per second.
* ``RateLimitShieldUser`` — rate-limit shield: 100 aggressive users with the limiter on: most answers are 429
  (``rate_limited``, then ``banned``), and the sale goes on for everyone else.
* ``FlashSaleDrainUser`` — flash-sale drain: 5,000 users against 10,000 units: stock drains to exactly 0, then
  every answer is 409. The run ends by itself ``HC_LOAD_AFTER_SOLD_OUT`` seconds after the first sold-out answer.
* ``HerdUser`` — the herd: 10,000 users arrive within 10 s, each wanting one unit of a 10,000-unit sale, as real
  buyers would: each tries until it has bought or the product is sold out, and honours ``Retry-After``.
* ``DropUser`` — the drop: buyers of several products (``HC_LOAD_PRODUCTS``) whose sales start at the same instant
  a few seconds ahead. Each arrives early, is told ``sale_not_started``, waits the ``Retry-After`` it was given and
  fires at the start; then like the herd, until it has bought or its product is sold out.
* ``CheckoutUser`` — the checkout drop: buyers hold a unit, then confirm it, release it or walk away.
* ``PaidUser`` — the paid drop: buyers hold a priced unit and pay on the payment simulator (``HC_LOAD_SIMULATOR``):
  most pay, some with a declined card (they walk away), some never pay; what is not paid for is sold again.
* ``QueuedUser`` — the queued drop: buyers of a product with a waiting room join its queue before the start, poll
  their ticket (every 0.5 to 10 s, sooner the closer their turn), and buy one unit with their pass once admitted.

409, 429 and 503 ``overloaded`` (refused by admission control, nothing sold, ``Retry-After`` set) are expected
answers of a flash sale, counted as successes; anything else (another 5xx, a 4xx, a dropped connection) is a
failure. A buyer told ``overloaded`` waits ``Retry-After`` before trying again, as a real client does.
Every answer is also counted per second, per outcome and per replica, and every order
id of a 200 is kept: at the end they go to ``HC_LOAD_OUTCOMES`` (JSON) for the report and the invariant check.
``FastHttpUser`` because the plain ``HttpUser`` tops out near 850 requests/s per core. The herd runs in several
Locust processes (``--processes``): one process with 10,000 users queues them for hundreds of milliseconds
inside itself, which would be counted as the service's latency. Each worker then writes its own tally
(``HC_LOAD_OUTCOMES.<pid>``) and tells the master, by message, when buyers are done or the sale is sold out.

Verified buyers (``HC_LOAD_ISSUER``: the directory of the cluster's local issuer, as `hypercheckout up --buyer-auth
jwt` makes it): each user mints its own token (subject ``load-<n>``) at start and sends it on every request, with no
``user_id`` in any body; the service knows the buyer from the token alone.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import gevent
from locust import FastHttpUser, between, constant, events, task
from locust.runners import MasterRunner, WorkerRunner

from hypercheckout.buyers.issuer import LocalIssuer

PRODUCT = int(os.environ.get("HC_LOAD_PRODUCT", "1"))
AFTER_SOLD_OUT = float(os.environ.get("HC_LOAD_AFTER_SOLD_OUT", "3"))
# How long a holding buyer thinks between its hold and its confirm, release or payment: "LO,HI" seconds, drawn
# uniformly (each holding user class has its own default).
THINK_SECONDS = os.environ.get("HC_LOAD_THINK_S", "")
EXPECTED = {200, 409, 429}  # and 503 with the code "overloaded"
ISSUER = LocalIssuer(Path(os.environ["HC_LOAD_ISSUER"])) if os.environ.get("HC_LOAD_ISSUER") else None
TOKEN_SECONDS = 6 * 3600  # longer than any scenario


class Tally:
    """Answers by second and outcome, by replica, and the order ids of every 200."""

    def __init__(self) -> None:
        self.per_second: defaultdict[int, Counter[str]] = defaultdict(Counter)
        self.replicas: Counter[str] = Counter()
        self.order_ids: list[int] = []
        self.ok_ms: list[float] = []  # the latency of every 200, client-side
        self.sold_out_at: float | None = None

    def add(self, outcome: str, replica: str | None, order_id: int | None, ms: float) -> None:
        self.per_second[int(time.time())][outcome] += 1
        if replica:
            self.replicas[replica] += 1
        if order_id is not None:
            self.order_ids.append(order_id)
            self.ok_ms.append(round(ms, 2))

    def as_json(self) -> dict[str, object]:
        return {
            "per_second": {str(second): dict(counts) for second, counts in sorted(self.per_second.items())},
            "replicas": dict(self.replicas),
            "order_ids": self.order_ids,
            "ok_ms": self.ok_ms,
            "sold_out_at": self.sold_out_at,
        }


tally = Tally()
buyer_ids = itertools.count(1)
ids_per_worker = 100_000_000  # each Locust process numbers its buyers in a range of its own


@events.test_stop.add_listener
def write_tally(environment, **_kwargs) -> None:  # type: ignore[no-untyped-def]
    path = os.environ.get("HC_LOAD_OUTCOMES")
    if path and not isinstance(environment.runner, MasterRunner):
        with open(f"{path}.{os.getpid()}", "w") as out:
            json.dump(tally.as_json(), out)


@events.init.add_listener
def coordinate(environment, **_kwargs) -> None:  # type: ignore[no-untyped-def]
    """Progress lines, and ending the run: after the sale sold out, or once every buyer of the herd is done."""
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        return  # the master reports and decides
    done = {"buyers": 0}

    def finish_soon(*_args: object, **_kw: object) -> None:
        if "finishing" not in done:
            done["finishing"] = True
            gevent.spawn_later(AFTER_SOLD_OUT, runner.quit)

    def buyers_done(message: object = None, **_kw: object) -> None:
        done["buyers"] += getattr(message, "data", 1) or 1
        if done["buyers"] >= environment.parsed_options.num_users and "finishing" not in done:
            done["finishing"] = True
            gevent.spawn(runner.quit)  # not from this greenlet: quitting kills the users, the caller among them

    environment.finish_soon = finish_soon
    environment.buyers_done = buyers_done
    if isinstance(runner, MasterRunner):
        runner.register_message("finish_soon", finish_soon)
        runner.register_message("buyers_done", buyers_done)

    def report() -> None:
        started, sent = time.time(), 0
        while True:
            gevent.sleep(2)
            total = environment.stats.total.num_requests
            print(f"    {time.time() - started:5.0f} s  users {runner.user_count:5d}  answers {total:7d}  "
                  f"({(total - sent) / 2:,.0f}/s)", flush=True)
            sent = total

    gevent.spawn(report)


def tell_master(environment, name: str) -> None:  # type: ignore[no-untyped-def]
    """Run ``name`` where the run is decided: in this process, or on the master."""
    if isinstance(environment.runner, WorkerRunner):
        environment.runner.send_message(name, 1)
    else:
        getattr(environment, name)()




class Buyer(FastHttpUser):
    abstract = True
    quantities: tuple[int, ...] = (1,)
    honours_429 = False  # the rate-limit shield's bots do not; real buyers (the herd) do
    strict = False  # True: only 200 and 409 are successes (the original's load test)

    def on_start(self) -> None:
        index = getattr(self.environment.runner, "worker_index", 0)
        self.user_id = index * ids_per_worker + next(buyer_ids)
        self.auth: dict[str, str] = {}
        if ISSUER is not None:
            self.auth = {"Authorization": f"Bearer {ISSUER.mint(f'load-{self.user_id}', ttl=TOKEN_SECONDS)}"}

    def body(self, **fields: int) -> dict[str, int]:
        """A request body: with verified buyers the token names the buyer, and the body carries no number."""
        return fields if ISSUER is not None else {"user_id": self.user_id, **fields}

    def headers(self, **extra: str) -> dict[str, str]:
        return {**self.auth, **extra}

    def buy(self, product: int = PRODUCT, *, headers: dict[str, str] | None = None,
            name: str = "POST /purchase") -> tuple[int, int | None]:
        """Buy; returns the status and, for a 409, the stock the answer says is left. An ``overloaded`` or
        ``sale_not_started`` answer makes this buyer wait its Retry-After, as a real client would."""
        body = self.body(product_id=product, quantity=random.choice(self.quantities))
        started = time.perf_counter()
        with self.client.post("/purchase", json=body, name=name, headers=self.headers(**(headers or {})),
                              catch_response=True) as response:
            ms = 1000 * (time.perf_counter() - started)
            status = response.status_code
            order_id = remaining = None
            code = None
            if status == 200:
                order_id = response.json().get("order_id")
            elif status in (409, 429, 503) and response.text:
                error = response.json().get("error", {})
                code, remaining = error.get("code"), error.get("remaining")
            if self.strict and status not in (200, 409):
                outcome = "overloaded" if code == "overloaded" else "5xx" if status >= 500 else "other"
                response.failure(f"{status}: {(response.text or '')[:200]}")
            elif status == 409 and code == "sale_not_started" and response.headers.get("Retry-After"):
                outcome = "not_started"
                response.success()
            elif status in EXPECTED:
                outcome = str(status)
                response.success()
            elif status == 503 and code == "overloaded" and response.headers.get("Retry-After"):
                outcome = "overloaded"
                response.success()
            else:
                outcome = "5xx" if status >= 500 else "other"
                response.failure(f"{status}: {(response.text or '')[:200]}")
            tally.add(outcome, response.headers.get("X-Replica") if response.headers else None, order_id, ms)
        if outcome in ("overloaded", "not_started") or (status == 429 and self.honours_429):
            gevent.sleep(float(response.headers.get("Retry-After", "1")))
        return status, remaining


class OriginalUser(Buyer):
    """The original project's own load test, as it ran it: each user buys one unit, waits 1 to 3 s, buys again.
    Only 200 and 409 are successes there: a 503 ``overloaded`` (or a 429) is a failure, as its Locust counted it."""

    wait_time = between(1, 3)
    strict = True

    @task
    def purchase(self) -> None:
        self.buy()


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


HERD_SPAWN_SECONDS = float(os.environ.get("HC_LOAD_HERD_SPAWN_S", "3"))
HERD_ARRIVAL_SECONDS = float(os.environ.get("HC_LOAD_HERD_ARRIVAL_S", "10"))
herd_started = {"at": 0.0}


@events.test_start.add_listener
def herd_clock(**_kwargs) -> None:  # type: ignore[no-untyped-def]
    herd_started["at"] = time.time()


class UntilServed(Buyer):
    """One unit of ``product``, tried until bought or sold out, Retry-After honoured. A buyer who is done stays
    (idle): Locust would replace a stopped user with a new buyer, and the crowd is these buyers, no more."""

    abstract = True
    honours_429 = True
    done = False
    product = PRODUCT

    def wait_time(self) -> float:
        return 3600.0 if self.done else 0.0

    @task
    def purchase(self) -> None:
        if self.done:
            return
        status, remaining = self.buy(self.product)
        if status == 200 or (status == 409 and remaining == 0):
            self.done = True
            tell_master(self.environment, "buyers_done")


class HerdUser(UntilServed):
    """Scenario 4: buyers of product HC_LOAD_PRODUCT (1) until served.

    Every buyer arrives at an instant of its own, uniformly within HC_LOAD_HERD_ARRIVAL_S (10 s), after all are
    spawned (HC_LOAD_HERD_SPAWN_S): Locust spawns a second's worth of users at once, and a thousand buyers
    starting in the same instant of one process would wait for each other inside Locust — time that would be
    counted as the service's."""

    def on_start(self) -> None:
        super().on_start()
        arrival = herd_started["at"] + HERD_SPAWN_SECONDS + random.uniform(0, HERD_ARRIVAL_SECONDS)
        gevent.sleep(max(0.0, arrival - time.time()))


class FlashSaleDrainUser(Buyer):
    """Scenario 3: many buyers, each buying 1 to 3 units now and then, until the stock is gone."""

    wait_time = between(0.2, 1.0)
    quantities = (1, 1, 2, 3)

    @task
    def purchase(self) -> None:
        if self.buy() == (409, 0) and tally.sold_out_at is None:
            tally.sold_out_at = time.time()
            tell_master(self.environment, "finish_soon")


DROP_PRODUCTS = [int(p) for p in os.environ.get("HC_LOAD_PRODUCTS", "").split(",") if p]


class DropUser(UntilServed):
    """Scenario 5: a buyer of one of the drop's products (spread evenly by buyer id), until served; before the
    start it is told ``sale_not_started`` and waits the ``Retry-After`` it was given (``Buyer.buy``)."""

    def on_start(self) -> None:
        super().on_start()
        self.product = DROP_PRODUCTS[self.user_id % len(DROP_PRODUCTS)]


def error_code(response: Any) -> str | None:
    try:
        return response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


class QueuedUser(Buyer):
    """Scenario 6: a buyer of product HC_LOAD_PRODUCT, which sells through a waiting room. It joins before the
    start (once: the same ticket if it asks again), polls its ticket as a buyer's page would — often when its
    turn is near, seldom when it is far — and buys one unit with its pass once admitted (the same
    Idempotency-Key for a retry after 503 overloaded). It polls every half of its estimated wait, between 0.5 and
    10 s: the closer its turn, the sooner it sees it. Done when served, or when its ticket says sold out or ended.
    """

    done = False
    ticket: str | None = None
    pause = 0.0

    def wait_time(self) -> float:
        return 3600.0 if self.done else self.pause

    def finish(self) -> None:
        self.done = True
        tell_master(self.environment, "buyers_done")

    @task
    def step(self) -> None:
        if self.done:
            return
        if self.ticket is None:
            self.join()
        else:
            self.poll()

    def join(self) -> None:
        with self.client.post(f"/products/{PRODUCT}/queue", json=self.body(), headers=self.headers(),
                              name="POST /products/{id}/queue", catch_response=True) as response:
            if response.status_code == 202:
                response.success()
                self.ticket = response.json()["ticket"]
                self.key = f"queued-{self.user_id}"
                self.pause = 1.0
            elif response.status_code in (429, 503) and response.headers.get("Retry-After"):
                response.success()  # overloaded or limited: asked to come back, as a real client does
                self.pause = float(response.headers["Retry-After"])
            elif response.status_code == 409 and error_code(response) in ("out_of_stock", "sale_ended"):
                response.success()  # the room admits nobody any more: nothing to wait for, as the shop page says
                self.finish()
            else:
                response.failure(f"{response.status_code}: {(response.text or '')[:200]}")
                self.pause = 1.0

    def poll(self) -> None:
        with self.client.get(f"/queue/{self.ticket}", name="GET /queue/{ticket}", headers=self.headers(),
                             catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {(response.text or '')[:200]}")
                self.pause = 1.0
                return
            response.success()
            standing = response.json()
        status = standing["status"]
        if status == "waiting":
            wait = standing["estimated_wait_s"]
            self.pause = 1.0 if wait is None else min(10.0, max(0.5, wait / 2)) * random.uniform(0.9, 1.1)
            return
        if status != "admitted":  # sold out, ended, or the pass expired: nothing to buy
            self.finish()
            return
        bought, _ = self.buy(headers={"Queue-Pass": standing["pass"], "Idempotency-Key": self.key},
                             name="POST /purchase (admitted)")
        if bought == 503:
            self.pause = 0.0  # overloaded: Buyer.buy waited its Retry-After; the same key again
        else:
            self.finish()  # bought, sold out, or refused (a failure Buyer.buy has counted)


class HoldingUser(Buyer):
    """What the checkout and paid drops' buyers share: arrivals spread as the herd's, a pause of their choosing,
    done once finished, every answer counted (expected refusals as successes). No task of its own."""

    abstract = True
    done = False
    pause = 0.0
    fates: tuple[tuple[str, ...], tuple[float, ...]] = (("confirm",), (1.0,))
    think_seconds: tuple[float, float] = (1.0, 8.0)  # unless HC_LOAD_THINK_S says otherwise

    def wait_time(self) -> float:
        return 3600.0 if self.done else self.pause

    def on_start(self) -> None:
        super().on_start()
        self.fate = random.choices(*self.fates)[0]
        arrival = herd_started["at"] + HERD_SPAWN_SECONDS + random.uniform(0, HERD_ARRIVAL_SECONDS)
        gevent.sleep(max(0.0, arrival - time.time()))

    def think(self) -> None:
        """Between the hold and what the buyer then does with it."""
        low, high = (float(s) for s in THINK_SECONDS.split(",")) if THINK_SECONDS else self.think_seconds
        gevent.sleep(random.uniform(low, high))

    def finish(self) -> None:
        self.done = True
        tell_master(self.environment, "buyers_done")

    def answered(self, response: Any, ms: float, order_id: int | None = None) -> str | None:
        """Count the answer; returns its error code (None for a success). Expected refusals are successes."""
        status, code = response.status_code, error_code(response)
        if status in (200, 201):
            outcome = "200"
            response.success()
        elif status in (409, 429) or (status == 503 and code == "overloaded"):
            outcome = "overloaded" if status == 503 else str(status)
            response.success()
        else:
            outcome = "5xx" if status >= 500 else "other"
            response.failure(f"{status}: {(response.text or '')[:200]}")
        tally.add(outcome, response.headers.get("X-Replica") if response.headers else None, order_id, ms)
        return code

    def take_hold(self) -> tuple[int, str | None, float, dict[str, Any]]:
        """POST /checkouts for one unit: (status, error code, Retry-After, the checkout if it was taken)."""
        started = time.perf_counter()
        with self.client.post("/checkouts", json=self.body(product_id=PRODUCT, quantity=1), headers=self.headers(),
                              name="POST /checkouts", catch_response=True) as response:
            code = self.answered(response, 1000 * (time.perf_counter() - started))
            status, retry_after = response.status_code, float(response.headers.get("Retry-After") or 1)
            return status, code, retry_after, response.json() if status == 201 else {}


class CheckoutUser(HoldingUser):
    """Scenario 7, the checkout drop: a buyer of product HC_LOAD_PRODUCT that holds one unit (POST /checkouts),
    then — its fate drawn at the start — walks away (30 %: the hold runs out), releases it (10 %) or confirms it
    (60 %), 1 to 8 s after the hold (HC_LOAD_THINK_S). Told ``units_held`` (none available, some held), it waits
    the Retry-After (until the next hold runs out) and holds again; a confirm refused ``hold_expired`` holds again
    too. Done when it confirmed, released, walked away, or the product is sold out for good. Arrivals spread as the
    herd's."""

    fates = (("abandon", "release", "confirm"), (0.3, 0.1, 0.6))
    think_seconds = (1.0, 8.0)

    @task
    def step(self) -> None:
        if self.done:
            return
        status, code, retry_after, held = self.take_hold()
        checkout_id = held.get("checkout_id")
        if checkout_id is None:
            if status == 409 and code == "out_of_stock":
                self.finish()  # sold out for good: nothing held that could come back
            else:
                self.pause = retry_after if status in (409, 429, 503) else 1.0
            return
        if self.fate == "abandon":
            self.finish()  # the hold runs out by itself
            return
        self.think()
        path = f"/checkouts/{checkout_id}/{'confirm' if self.fate == 'confirm' else 'release'}"
        started = time.perf_counter()
        with self.client.post(path, name=f"POST /checkouts/{{id}}/{self.fate}", headers=self.headers(),
                              catch_response=True) as response:
            ms = 1000 * (time.perf_counter() - started)
            order_id = response.json().get("order_id") if response.status_code == 200 else None
            code = self.answered(response, ms, order_id if self.fate == "confirm" else None)
        if code == "hold_expired":
            self.pause = 0.0  # its units went to someone else: hold again
        else:
            self.finish()


SIMULATOR = os.environ.get("HC_LOAD_SIMULATOR", "")


class PaidUser(HoldingUser):
    """Scenario 8, the paid drop: a buyer of product HC_LOAD_PRODUCT (priced, payments on) holds one unit, then —
    its fate drawn at the start — pays on the simulator with a test card that is accepted (70 %) and asks the
    service (POST …/confirm, as the buyer page does back from paying), pays with one that is declined and walks
    away (10 %), or never pays (20 %), 1 to 5 s after the hold (HC_LOAD_THINK_S). Its hold refused
    ``units_held``, or its payment come too late (409 ``hold_expired`` or ``checkout_cancelled``), it holds
    again. Done when it has its order, walked away, or the product is sold out for good."""

    fates = (("pay", "declined", "abandon"), (0.7, 0.1, 0.2))
    think_seconds = (1.0, 5.0)

    @task
    def step(self) -> None:
        if self.done:
            return
        status, code, retry_after, held = self.take_hold()
        if not held:
            if status == 409 and code == "out_of_stock":
                self.finish()
            else:
                self.pause = retry_after if status in (409, 429, 503) else 1.0
            return
        if self.fate == "abandon":
            self.finish()  # never pays: the hold runs out, its payment is cancelled, the unit sold again
            return
        self.think()
        card = "pm_card_visa" if self.fate == "pay" else "pm_card_chargeDeclined"
        with self.client.post(f"{SIMULATOR}/_simulator/intents/{held['payment']['intent_id']}/pay",
                              json={"payment_method": card}, name="pay (simulator)", catch_response=True) as paid:
            too_late = paid.status_code == 400 and "payment_intent_unexpected_state" in (paid.text or "")
            if paid.status_code == 200 or too_late:
                paid.success()  # too late: the hold ran out and its payment was cancelled; the buyer holds again
            else:
                paid.failure(f"{paid.status_code}: {(paid.text or '')[:200]}")
        if too_late:
            self.pause = 0.0
            return
        if self.fate == "declined":
            self.finish()
            return
        for _ in range(5):  # back from paying: the service asks the provider
            started = time.perf_counter()
            with self.client.post(f"/checkouts/{held['checkout_id']}/confirm", headers=self.headers(),
                                  name="POST /checkouts/{id}/confirm (paid)", catch_response=True) as response:
                ms = 1000 * (time.perf_counter() - started)
                order_id = response.json().get("order_id") if response.status_code == 200 else None
                code = self.answered(response, ms, order_id)
            if response.status_code == 200:
                self.finish()
                return
            if code in ("hold_expired", "checkout_cancelled"):
                self.pause = 0.0  # paid too late: its units went to someone else, and nothing was charged
                return
            gevent.sleep(1.0)
        self.finish()
