"""The campaign's buyers: concurrent purchases written to a ``History``, and the retries that settle those whose
outcome is unknown."""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

from tornado.httpclient import HTTPClientError
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from campaign.history import ABOUT_THE_RETRY, Answer, History, Operation, QueueCall, settles_the_key
from campaign.plan import Plan

REQUEST_TIMEOUT = 5.0  # seconds; a purchase not answered by then is an operation with an unknown outcome
PASSLESS_SHARE = 0.1  # of purchases of the waiting room's product, sent without a pass: each must be refused
# Of the other purchases, sent without an Idempotency-Key: the keyless path (and its sold-out shortcut, refused
# from a replica's memory once a product is sold out) is judged under the same faults. Such a purchase with no
# answer cannot be retried (a retry would be another purchase): the checker accounts for it by its order, if any.
KEYLESS_SHARE = 0.2
REFUSED_RETRIES = 3  # a retry refused for itself (its pass, the limiter) is asked this often before PostgreSQL is


async def purchase(client: SimpleAsyncHTTPClient, url: str, op: Operation) -> tuple[int | None, dict[str, Any]]:
    body = json.dumps({"user_id": op.user, "product_id": op.product, "quantity": op.quantity})
    headers = {"Content-Type": "application/json"}
    if op.keyed:
        headers["Idempotency-Key"] = op.key
    if op.queue_pass is not None:
        headers["Queue-Pass"] = op.queue_pass
    return await call(client, f"{url}/purchase", "POST", body, headers)


async def call(client: SimpleAsyncHTTPClient, url: str, method: str, body: str | None = None,
               headers: dict[str, str] | None = None) -> tuple[int | None, dict[str, Any]]:
    """(status, JSON body) of one request, or (None, {}) when no answer came within REQUEST_TIMEOUT."""
    try:
        response = await client.fetch(url, method=method, body=body, raise_error=False, headers=headers,
                                       request_timeout=REQUEST_TIMEOUT, connect_timeout=REQUEST_TIMEOUT)
    except (TimeoutError, HTTPClientError, OSError):
        return None, {}
    if response.code == 599:  # tornado's "no answer"
        return None, {}
    try:
        return response.code, json.loads(response.body or b"{}")
    except ValueError:
        return response.code, {"raw": response.body[:200].decode("latin-1")}


async def admitted(client: SimpleAsyncHTTPClient, url: str, product: int, user: int, calls: list[QueueCall]) \
        -> str | None:
    """Join the product's waiting room and wait (a few seconds at most) for the pass; None if the queue could not
    be reached or the turn did not come (the buyer tries again later, as a buyer's page would). Every answer is
    written to ``calls``: the checker holds joins and polls to the same contract as purchases."""
    status, body = await call(client, f"{url}/products/{product}/queue", "POST", json.dumps({"user_id": user}),
                              {"Content-Type": "application/json"})
    calls.append(QueueCall("join", product, user, status, body, time.time()))
    if status != 202:
        return None
    ticket = body["ticket"]
    for _ in range(20):
        if status in (200, 202):
            if body.get("status") == "admitted":
                return str(body["pass"])
            if body.get("status") != "waiting":
                return None  # sold out, ended, or the pass expired
        await asyncio.sleep(0.2)
        status, body = await call(client, f"{url}/queue/{ticket}", "GET")
        calls.append(QueueCall("poll", product, user, status, body, time.time()))
    return None


async def workload(url: str, plan: Plan, product_ids: list[int], duration: float) -> History:
    history = History()
    rooms = {product_ids[i] for i, p in enumerate(plan.products) if p.room}
    client = SimpleAsyncHTTPClient(force_instance=True, max_clients=plan.buyers)
    weights = [p.weight for p in plan.products]
    deadline = time.monotonic() + duration

    passes: dict[tuple[int, int], str] = {}  # (buyer, product) -> its pass, shared by the concurrent buyers
    spent: set[tuple[int, int]] = set()  # (buyer, product) whose place in line has bought (a pass buys once)

    async def buyer(index: int) -> None:
        rng = random.Random(f"{plan.seed}/buyer/{index}")  # each buyer's sequence is the seed's
        keyless = random.Random(f"{plan.seed}/keyless/{index}")  # apart, so that the rest is the same as before
        n = 0
        while time.monotonic() < deadline:
            n += 1
            product = rng.choices(range(len(product_ids)), weights)[0]
            op = Operation(key=f"{plan.seed}/{index}/{n}", user=rng.randint(1, plan.users),
                           product=product_ids[product], quantity=rng.randint(1, 3), started=time.time(),
                           room=product_ids[product] in rooms)
            op.keyed = op.room or keyless.random() >= KEYLESS_SHARE
            if op.room and rng.random() >= PASSLESS_SHARE:
                if (op.user, op.product) in spent:
                    continue  # its place has bought; joining again gives the same place
                held = passes.get((op.user, op.product)) or await admitted(client, url, op.product, op.user,
                                                                           history.calls)
                if held is None:
                    await asyncio.sleep(0.05)
                    continue  # not admitted (yet), or the room is closed: no purchase to try
                passes[(op.user, op.product)] = op.queue_pass = held
                op.started = time.time()
            history.operations.append(op)
            op.status, op.body = await purchase(client, url, op)
            op.ended = time.time()
            if op.status == 403:
                passes.pop((op.user, op.product), None)  # expired or refused: join again next time
                if op.body.get("error", {}).get("code") == "queue_pass_used":
                    spent.add((op.user, op.product))
            await asyncio.sleep(rng.uniform(0, 0.02))

    try:
        await asyncio.gather(*(buyer(i) for i in range(plan.buyers)))
    finally:
        client.close()
    return history


async def resolve(url: str, unknown: list[Operation], *, attempts: int = 30) -> None:
    """Retry each keyed operation whose outcome is unknown, with its key, until an answer says what became of its
    first try (``settles_the_key``); every answer is kept in ``op.retries``. A retry refused for itself (429, 403,
    503 overloaded) settles nothing: such an operation is asked again a few times, then left for PostgreSQL to
    settle by its key (``settle_from_database``) once nothing is in flight."""
    client = SimpleAsyncHTTPClient(force_instance=True, max_clients=20)
    try:
        async def one(op: Operation) -> None:
            refused = 0
            for _ in range(attempts):
                status, body = await purchase(client, url, op)
                op.retries.append(Answer(status, body, time.time()))
                if settles_the_key(status, body):
                    op.resolved, op.resolved_body, op.resolved_by = status, body, "retry"
                    return
                if status in ABOUT_THE_RETRY:
                    refused += 1
                    if refused >= REFUSED_RETRIES:
                        return
                await asyncio.sleep(0.5)

        await asyncio.gather(*(one(op) for op in unknown if op.keyed))
    finally:
        client.close()


def refused_for_itself(op: Operation) -> bool:
    """An unsettled operation whose last retry was refused for itself, not failed: PostgreSQL settles it."""
    if not op.retries:
        return False
    last = op.retries[-1]
    return last.status in ABOUT_THE_RETRY or (last.status == 503 and last.body.get("error", {}).get("outcome")
                                              == "nothing_sold")
