"""Helpers named for what a test means: buy something, look at the database, check the invariant."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import psycopg2
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPResponse
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from hypercheckout.limiter import RateLimiter
from hypercheckout.redisclient import RedisClient, connect

PURCHASE_HEADERS = {"Content-Type": "application/x-www-form-urlencoded"}  # what `curl -d` sends


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    headers: Any


async def post_raw(client: AsyncHTTPClient, url: str, body: bytes | str,
                   headers: dict[str, str] | None = None) -> Answer:
    response: HTTPResponse = await client.fetch(
        url, method="POST", body=body, headers={**PURCHASE_HEADERS, **(headers or {})}, raise_error=False,
        request_timeout=60,
    )
    if response.code == 599:
        raise AssertionError(f"no HTTP answer from {url}: {response.error}")
    return Answer(response.code, json.loads(response.body) if response.body else {}, response.headers)


async def buy(client: AsyncHTTPClient, base_url: str, *, user: int = 1, product: int = 1, qty: int = 1,
              headers: dict[str, str] | None = None) -> Answer:
    body = json.dumps({"user_id": user, "product_id": product, "quantity": qty})
    return await post_raw(client, f"{base_url}/purchase", body, headers)


async def fire_all(urls: list[str], wanted: list[tuple[int, int]],
                   headers: list[dict[str, str]] | None = None) -> list[Answer]:
    """Send every (user, quantity) purchase at once, spread round-robin over ``urls`` (``headers``: one dict per
    purchase)."""
    client = SimpleAsyncHTTPClient(force_instance=True, max_clients=len(wanted))
    try:
        return await asyncio.gather(*(
            buy(client, urls[i % len(urls)], user=user, qty=qty, headers=headers[i] if headers else None)
            for i, (user, qty) in enumerate(wanted)
        ))
    finally:
        client.close()


async def fire_retrying(urls: list[str], wanted: list[tuple[int, int]],
                        headers: list[dict[str, str]] | None = None, rounds: int = 30) -> tuple[list[Answer], int]:
    """``fire_all``, then what a client told ``Retry-After`` does: every purchase answered 503 ``overloaded`` (nothing
    sold, so safe to send again) is sent again after that many seconds, until each has its final answer. A burst
    past a replica's in-flight bound is refused in part by design (admission control, at its defaults here).
    Returns the final answers, in the order of ``wanted``, and how many refusals came first."""
    answers: list[Answer | None] = [None] * len(wanted)
    waiting, refusals = list(range(len(wanted))), 0
    for _ in range(rounds):
        batch = await fire_all(urls, [wanted[i] for i in waiting], [headers[i] for i in waiting] if headers else None)
        again = []
        for i, answer in zip(waiting, batch, strict=True):
            if answer.status == 503:
                assert_overloaded(answer)
                again.append(i)
            else:
                answers[i] = answer
        refusals += len(again)
        if not again:
            return [a for a in answers if a is not None], refusals
        waiting = again
        await asyncio.sleep(1)  # the Retry-After that assert_overloaded checked
    raise AssertionError(f"{len(waiting)} purchases still refused after {rounds} rounds")


def assert_overloaded(answer: Answer) -> None:
    """The honest refusal of admission control: nothing sold, try again after a second."""
    assert answer.status == 503, answer.body
    error = answer.body["error"]
    assert (error["code"], error["outcome"], answer.headers["Retry-After"]) == (
        "overloaded", "nothing_sold", "1"), answer.body


async def simultaneous(base_url: str, wanted: list[tuple[int, int, int]]) -> list[Answer]:
    """Every (user, product, quantity) purchase on a connection of its own, all connected first and then sent in
    one go: a burst as simultaneous as one client process can make it (an HTTP client would open its connections
    one by one as it sends)."""
    host, _, port = base_url.removeprefix("http://").partition(":")
    connections = await asyncio.gather(*(asyncio.open_connection(host, int(port)) for _ in wanted))
    for (_, writer), (user, product, qty) in zip(connections, wanted, strict=True):
        body = json.dumps({"user_id": user, "product_id": product, "quantity": qty}).encode()
        writer.write(b"POST /purchase HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (host.encode(), len(body), body))

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Answer:
        try:
            raw = await asyncio.wait_for(reader.read(), 60)  # Connection: close, so the answer ends at EOF
        finally:
            writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        return Answer(int(lines[0].split()[1]), json.loads(body) if body else {}, headers)

    return await asyncio.gather(*(answer(reader, writer) for reader, writer in connections))


async def get(client: AsyncHTTPClient, url: str) -> Answer:
    response = await client.fetch(url, raise_error=False)
    return Answer(response.code, json.loads(response.body) if response.body else {}, response.headers)


def sql(database_url: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(database_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def set_stock(database_url: str, stock: int, product: int = 1) -> None:
    sql(database_url, "DELETE FROM checkouts WHERE product_id = %s", (product,))
    sql(database_url, "DELETE FROM orders WHERE product_id = %s", (product,))
    sql(database_url, "UPDATE products SET stock = %s, initial_stock = %s, held = 0 WHERE id = %s",
        (stock, stock, product))


def stock_of(database_url: str, product: int = 1) -> int:
    return sql(database_url, "SELECT stock FROM products WHERE id = %s", (product,))[0][0]


def orders_of(database_url: str, product: int = 1) -> dict[int, tuple[int, int]]:
    """order id → (user_id, quantity)."""
    rows = sql(database_url, "SELECT id, user_id, quantity FROM orders WHERE product_id = %s", (product,))
    return {row[0]: (row[1], row[2]) for row in rows}


def assert_invariant(database_url: str, initial: int, product: int = 1) -> int:
    """stock + held + Σ orders.quantity == initial, stock ≥ 0, and held is the sum of the checkouts still held
    (read in one snapshot); returns the stock left."""
    stock, held, sold, in_holds = sql(database_url, """
        SELECT p.stock, p.held,
               (SELECT COALESCE(sum(quantity), 0) FROM orders WHERE product_id = p.id),
               (SELECT COALESCE(sum(quantity), 0) FROM checkouts WHERE product_id = p.id AND status = 'held')
        FROM products p WHERE p.id = %s""", (product,))[0]
    assert stock >= 0 and held >= 0
    assert held == in_holds, f"held {held} != units of checkouts held {in_holds}"
    assert stock + held + sold == initial, f"stock {stock} + held {held} + sold {sold} != {initial}"
    return stock


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hypercheckout", *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def settings_env(settings: Any) -> dict[str, str]:
    """The HC_* variables that make a subprocess use the same database, Redis and prefix as ``settings``."""
    return {
        "HC_DATABASE_URL": settings.database_url,
        "HC_REDIS_URL": settings.redis_url,
        "HC_REDIS_PREFIX": settings.redis_prefix,
        "HC_LOG_LEVEL": "WARNING",
    }
# Runs a test on one Redis server and on a Redis Cluster (three masters, three replicas): the test must take
# ``redis_url``, or ``settings`` (which takes it).
ON_BOTH_REDIS = pytest.mark.parametrize("redis_url", ["one server", "cluster"], indirect=True)


def limiter_for(url: str, prefix: str, **overrides: Any) -> tuple[RedisClient, RateLimiter]:
    """A limiter on one Redis server or a cluster (``redis+cluster://``), with test defaults."""
    client = connect(url, timeout=0.25, max_connections=64)
    options: dict[str, Any] = {"user_rate": 10.0, "user_burst": 3, "ip_rate": None, "ip_burst": 1,
                               "ban_after": 1000, "ban_window": 60, "ban_seconds": 60, "local_deny_seconds": 0.25,
                               **overrides}
    return client, RateLimiter(client, prefix=prefix, **options)
