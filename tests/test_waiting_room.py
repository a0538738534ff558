"""Waiting rooms, against real PostgreSQL and Redis: first-come admission across replicas at the product's rate,
one place per buyer, sold out reaching every waiting ticket at once, each bad pass a 403, and a product with a
waiting room sold exactly, only to buyers with a pass."""

from __future__ import annotations

import asyncio
import json
import math
import time
from datetime import UTC, datetime, timedelta

import pytest
import redis.exceptions
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from hypercheckout.checkout.errors import CheckoutError
from hypercheckout.checkout.models import PurchaseRequest
from hypercheckout.checkout.queue import Signer, admission_time, admitted_by
from hypercheckout.settings import STRATEGIES, Settings
from hypercheckout.store import WaitingRoom
from tests.helpers import assert_invariant, buy, get, orders_of, post_raw, run_cli, settings_env, sql
from tests.replicas import running_replicas
from tests.test_sale_window import one_replica

SHARED = {"HC_COOKIE_SECRET": "test-cookie-secret"}  # every replica must share it to read each other's tickets


def room_product(database_url: str, stock: int, *, rate: int, pass_seconds: int = 120,
                 starts_at: datetime | None = None) -> int:
    """A product with an open waiting room, straight in the database (replicas started after it read it)."""
    return sql(database_url,
               "INSERT INTO products (name, stock, initial_stock, starts_at, waiting_room, admit_per_second, "
               "pass_seconds, admission_origin) VALUES ('queued', %(stock)s, %(stock)s, %(starts)s, true, %(rate)s, "
               "%(pass)s, now()) RETURNING id",
               {"stock": stock, "starts": starts_at, "rate": rate, "pass": pass_seconds})[0][0]


async def join(client: SimpleAsyncHTTPClient, base_url: str, product: int, user: int) -> dict:  # type: ignore[type-arg]
    answer = await post_raw(client, f"{base_url}/products/{product}/queue", f'{{"user_id": {user}}}')
    assert answer.status == 202, answer.body
    return answer.body


async def standing(client: SimpleAsyncHTTPClient, base_url: str, ticket: str) -> dict:  # type: ignore[type-arg]
    answer = await get(client, f"{base_url}/queue/{ticket}")
    assert answer.status == 200, answer.body
    return answer.body


async def admitted_pass(client: SimpleAsyncHTTPClient, base_url: str, ticket: str, timeout: float = 10) -> str:
    started = time.monotonic()
    while True:
        body = await standing(client, base_url, ticket)
        if body["status"] == "admitted":
            return str(body["pass"])
        assert body["status"] == "waiting" and time.monotonic() - started < timeout, body
        await asyncio.sleep(0.02)


def test_tokens_are_signed_and_admission_is_arithmetic() -> None:
    signer = Signer("secret")
    token = signer.sign("t1", 5, 7, 9)
    assert signer.fields(token, "t1", 3) == [5, 7, 9]
    assert signer.fields(token, "p2", 3) is None  # a ticket is never a pass
    assert signer.fields(token.replace(".7.", ".6."), "t1", 3) is None  # another place in line
    assert Signer("another secret").fields(token, "t1", 3) is None
    room = WaitingRoom(admit_per_second=10, pass_seconds=60, origin=datetime.fromtimestamp(1000, UTC),
                       admitted_before=0)
    assert [admitted_by(room, t) for t in (999.0, 1000.0, 1000.05, 1000.1, 1002.0)] == [0, 0, 0, 1, 20]
    assert admission_time(room, 20) == 1002.0
    # The rate changed at 1002 to 40/s: 20 admitted before, then four times as fast, with no jump.
    later = WaitingRoom(admit_per_second=40, pass_seconds=60, origin=datetime.fromtimestamp(1002, UTC),
                        admitted_before=20, history=((1000.0, 0, 10),))
    assert [admitted_by(later, t) for t in (1002.0, 1002.5)] == [20, 40]
    assert admission_time(later, 40) == 1002.5
    # A place passed before the change keeps its admission time (so its pass keeps its expiry).
    assert (admission_time(later, 20), admission_time(later, 5)) == (1002.0, 1000.5)
    forgotten = WaitingRoom(admit_per_second=40, pass_seconds=60, origin=datetime.fromtimestamp(1002, UTC),
                            admitted_before=20, history=((1001.0, 10, 10),))
    assert admission_time(forgotten, 10) == 0.0  # older than every segment kept: long expired


def test_tickets_are_admitted_in_the_order_they_joined_across_two_replicas(settings: Settings) -> None:
    # The start is set once every buyer has joined: a start a few seconds ahead passed, on a busy machine, while
    # the replicas were still starting, and the joiners were no longer all before it.
    pid = room_product(settings.database_url, 100, rate=5, starts_at=datetime.now(UTC) + timedelta(hours=1))

    async def scenario(urls: list[str]) -> None:
        client = SimpleAsyncHTTPClient(force_instance=True, max_clients=20)
        try:
            tickets = [await join(client, urls[n % 2], pid, 500 + n) for n in range(10)]
            assert [t["position"] for t in tickets] == list(range(1, 11))  # first come, before the start
            assert all(t["status"] == "waiting" for t in tickets)
            again = await join(client, urls[1], pid, 500)  # the first buyer again, at the other replica
            assert again["ticket"] == tickets[0]["ticket"] and again["position"] == 1
            # The sale starts two seconds from now; each replica sees that at its next re-read of the schedule,
            # which must come before the start for the two to agree from the first admission (asked again with a
            # later start if the machine was too slow for that).
            while True:
                start = sql(settings.database_url, "UPDATE products SET starts_at = now() + interval '2 seconds' "
                            "WHERE id = %s RETURNING extract(epoch FROM starts_at)::float8", (pid,))[0][0]
                seen_by = time.monotonic() + 60
                for replica in urls:
                    while (await standing(client, replica, tickets[9]["ticket"]))["estimated_wait_s"] > 60:
                        assert time.monotonic() < seen_by, "a replica never saw the new start"
                        await asyncio.sleep(0.05)
                if sql(settings.database_url, "SELECT extract(epoch FROM clock_timestamp())::float8 < %s",
                       (start,))[0][0]:
                    break
            admitted_at: dict[int, float] = {}
            deadline = time.monotonic() + 30
            while len(admitted_at) < 10:
                assert time.monotonic() < deadline, admitted_at
                for n, ticket in enumerate(tickets):
                    if n in admitted_at:
                        continue
                    body = await standing(client, urls[(n + 1) % 2], ticket["ticket"])  # the other replica
                    if body["status"] == "admitted":
                        admitted_at[n] = time.monotonic()
                await asyncio.sleep(0.02)
            order = sorted(admitted_at, key=lambda n: admitted_at[n])
            assert order == list(range(10)), admitted_at
            # The pace (5 a second from the start) is the arithmetic's, held exactly by the tests of admitted_by
            # and admission_time; the moments this loop saw them are a busy machine's, and not asserted.
        finally:
            client.close()

    with running_replicas(settings, 2, **SHARED) as urls:
        asyncio.run(scenario(urls))


def test_the_admission_rate_holds_on_every_replica(settings: Settings) -> None:
    """300 buyers joined on two replicas; once the sale starts, every read of their tickets on either replica
    finds admitted exactly the places the rate allows between PostgreSQL's clock before and after the read (a
    place either way for the replicas' estimate of that clock) — bounds a slower machine only widens, where a
    rate measured over a wall-clock interval failed on a busy one."""
    rate = 20  # 300 places last 15 s: reads on a slow machine still find the line moving
    url = settings.database_url
    pid = room_product(url, 1000, rate=rate, starts_at=datetime.now(UTC) + timedelta(hours=1))

    def postgres_now() -> float:
        return float(sql(url, "SELECT extract(epoch FROM clock_timestamp())::float8")[0][0])

    async def check_read(client: SimpleAsyncHTTPClient, replica: str, tickets: list[str], start: float) -> int:
        before = postgres_now()
        statuses = await asyncio.gather(*(standing(client, replica, t) for t in tickets))
        after = postgres_now()
        admitted = {n + 1 for n, body in enumerate(statuses) if body["status"] == "admitted"}  # places 1..300
        surely = math.floor(rate * (before - start)) - 1  # admitted by the time the read began
        at_most = math.floor(rate * (after - start)) + 1  # admitted by the time it ended
        assert set(range(1, surely + 1)) <= admitted, (surely, sorted(admitted)[:5])
        assert all(place <= at_most for place in admitted), (at_most, sorted(admitted)[-5:])
        return len(admitted)

    async def scenario(urls: list[str]) -> None:
        client = SimpleAsyncHTTPClient(force_instance=True, max_clients=50)
        try:
            tickets = [(await join(client, urls[n % 2], pid, 1000 + n))["ticket"] for n in range(300)]
            start = float(sql(url, "UPDATE products SET starts_at = now() + interval '1 second' WHERE id = %s "
                                   "RETURNING extract(epoch FROM starts_at)::float8", (pid,))[0][0])
            deadline = time.monotonic() + 60
            for replica in urls:  # each has seen the start once it admits the first place
                while (await standing(client, replica, tickets[0]))["status"] != "admitted":
                    assert time.monotonic() < deadline, "a replica never saw the start"
                    await asyncio.sleep(0.05)
            counts = []
            while len(counts) < 6:
                counts.append(await check_read(client, urls[len(counts) % 2], tickets, start))
                await asyncio.sleep(0.5)
            assert counts == sorted(counts) and counts[-1] > counts[0], counts  # the line moves on
        finally:
            client.close()

    with running_replicas(settings, 2, **SHARED) as urls:
        asyncio.run(scenario(urls))


def test_sold_out_reaches_every_waiting_ticket_on_every_replica_within_a_second(settings: Settings) -> None:
    pid = room_product(settings.database_url, 2, rate=2)

    async def scenario(seller: str, other: str) -> None:
        client = SimpleAsyncHTTPClient(force_instance=True, max_clients=20)
        try:
            tickets = [(await join(client, other, pid, 700 + n))["ticket"] for n in range(8)]
            queue_pass = await admitted_pass(client, other, tickets[0])
            bought = await buy(client, seller, user=700, product=pid, qty=2, headers={"Queue-Pass": queue_pass})
            assert bought.status == 200, bought.body
            # `other` sold nothing of it: only the seller's word over Redis can tell it.
            started = time.monotonic()
            while True:
                statuses = {(await standing(client, other, t))["status"] for t in tickets[2:]}
                if statuses == {"sold_out"}:
                    break
                assert time.monotonic() - started < 1.0, statuses
                await asyncio.sleep(0.02)
            print(f"\nsold out seen by every waiting ticket on the other replica in {time.monotonic() - started:.3f} s")
            # A restock reopens the line: the tickets stand where the clock puts them again.
            done = await asyncio.to_thread(run_cli, "product", "update", str(pid), "--stock", "5",
                                           env=settings_env(settings))
            assert done.returncode == 0, done.stderr
            started = time.monotonic()
            while (await standing(client, other, tickets[-1]))["status"] == "sold_out":
                assert time.monotonic() - started < 1.0
                await asyncio.sleep(0.02)
        finally:
            client.close()

    with running_replicas(settings, 2, HC_SOLDOUT_RECHECK_MS="600000", **SHARED) as (seller, other):
        asyncio.run(scenario(seller, other))


@pytest.mark.gen_test(timeout=30)
async def test_each_bad_pass_is_a_403_and_sells_nothing(http_client, base_url, settings: Settings,  # type: ignore[no-untyped-def]
                                                       services) -> None:
    url = settings.database_url
    first, second = room_product(url, 10, rate=1000), room_product(url, 10, rate=1000)
    short = room_product(url, 10, rate=1000, pass_seconds=1)
    await services.schedule.load()
    client = http_client
    ticket = (await join(client, base_url, first, 1))["ticket"]
    good = await admitted_pass(client, base_url, ticket)
    other = await admitted_pass(client, base_url, (await join(client, base_url, second, 1))["ticket"])
    expiring = await admitted_pass(client, base_url, (await join(client, base_url, short, 1))["ticket"])
    cases = [
        (1, first, None, "queue_pass_required"),
        (1, first, good[:-3] + ("aaa" if not good.endswith("aaa") else "bbb"), "queue_pass_invalid"),  # forged
        (2, first, good, "queue_pass_invalid"),  # someone else's
        (1, first, other, "queue_pass_invalid"),  # another product's
        (1, first, ticket, "queue_pass_invalid"),  # a ticket is not a pass
        (1, first, "p2.1.1.0.9999999999.x", "queue_pass_invalid"),  # made up
    ]
    for user, product, queue_pass, code in cases:
        headers = {} if queue_pass is None else {"Queue-Pass": queue_pass}
        answer = await buy(client, base_url, user=user, product=product, headers=headers)
        assert (answer.status, answer.body["error"]["code"]) == (403, code), (user, queue_pass, answer.body)
    await asyncio.sleep(max(0.0, int(expiring.split(".")[4]) - time.time()) + 0.05)  # p2.product.user.opening.expiry
    late = await buy(client, base_url, user=1, product=short, headers={"Queue-Pass": expiring})
    assert (late.status, late.body["error"]["code"]) == (403, "queue_pass_expired")
    assert all(orders_of(url, p) == {} for p in (first, second, short))
    # The right pass buys, and a retry with the same key replays the order.
    keyed = {"Queue-Pass": good, "Idempotency-Key": "room-1"}
    placed = await buy(client, base_url, user=1, product=first, headers=keyed)
    assert placed.status == 200, placed.body
    replayed = await buy(client, base_url, user=1, product=first, headers=keyed)
    assert replayed.status == 200 and replayed.body["order_id"] == placed.body["order_id"]
    # Once the pass has expired, a retry of the placed order with its key still learns of it (with the stale pass,
    # or with none); a new purchase with that pass is refused.
    placed_late = await buy(client, base_url, user=1, product=short, headers={"Queue-Pass": expiring})
    assert placed_late.status == 403  # expired already: nothing placed with it
    brief = room_product(url, 10, rate=1000, pass_seconds=3)
    await services.schedule.load()
    four = await admitted_pass(client, base_url, (await join(client, base_url, brief, 4))["ticket"])
    kept = await buy(client, base_url, user=4, product=brief, headers={"Queue-Pass": four, "Idempotency-Key": "k4"})
    assert kept.status == 200, kept.body
    await asyncio.sleep(max(0.0, int(four.split(".")[4]) - time.time()) + 0.05)
    for headers in ({"Queue-Pass": four, "Idempotency-Key": "k4"}, {"Idempotency-Key": "k4"}):
        again = await buy(client, base_url, user=4, product=brief, headers=headers)
        assert again.status == 200 and again.body["order_id"] == kept.body["order_id"], (headers, again.body)
    new = await buy(client, base_url, user=4, product=brief, headers={"Queue-Pass": four, "Idempotency-Key": "k5"})
    assert (new.status, new.body["error"]["code"]) == (403, "queue_pass_expired")
    # A product without a waiting room ignores the header, as before.
    assert (await buy(client, base_url, user=3, product=1, headers={"Queue-Pass": "nonsense"})).status == 200
    # Joining a product without a waiting room, or a ticket that was never given, is answered plainly.
    plain = await post_raw(client, f"{base_url}/products/1/queue", '{"user_id": 3}')
    assert (plain.status, plain.body["error"]["code"]) == (409, "no_waiting_room")
    unknown = await get(client, f"{base_url}/queue/t1.{first}.1.2.AAAAAAAAAAAAAAAAAAAAAA")
    assert (unknown.status, unknown.body["error"]["code"]) == (404, "unknown_ticket")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_the_transaction_wants_a_pass_even_when_a_replicas_copy_has_not_seen_the_room(
    settings: Settings, strategy: str,
) -> None:
    async def scenario() -> None:
        async with one_replica(settings, strategy) as (checkout, schedule):
            pid = sql(settings.database_url, "INSERT INTO products (name, stock, initial_stock) "
                                             "VALUES ('plain', 5, 5) RETURNING id")[0][0]
            await schedule.load()
            # The room opens behind this replica's back: its copy says none, the transaction must not.
            sql(settings.database_url, "UPDATE products SET waiting_room = true, admission_origin = now() "
                                       "WHERE id = %s", (pid,))
            for key in (None, f"stale-{strategy}"):
                with pytest.raises(CheckoutError) as refused:
                    await checkout.purchase(PurchaseRequest(1, pid, 1, idempotency_key=key))
                assert (refused.value.status, refused.value.code) == (403, "queue_pass_required")
            assert orders_of(settings.database_url, pid) == {}

    asyncio.run(scenario())


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_buyers_with_passes_get_exactly_the_stock_and_nobody_buys_without_one(settings: Settings,
                                                                                strategy: str) -> None:
    pid = room_product(settings.database_url, 25, rate=1000)
    holders = list(range(2000, 2060))

    async def scenario(urls: list[str]) -> None:
        client = SimpleAsyncHTTPClient(force_instance=True, max_clients=100)
        try:
            tickets = [(await join(client, urls[n % 2], pid, user))["ticket"] for n, user in enumerate(holders)]
            passes = [await admitted_pass(client, urls[0], t) for t in tickets]
            wanted = [(user, {"Queue-Pass": p}) for user, p in zip(holders, passes, strict=True)]
            wanted += [(3000 + n, {}) for n in range(30)]  # no pass
            answers = await asyncio.gather(*(
                buy(client, urls[i % 2], user=user, product=pid, headers=headers)
                for i, (user, headers) in enumerate(wanted)
            ))
            with_pass = [a.status for a in answers[:60]]
            without = {(a.status, a.body["error"]["code"]) for a in answers[60:]}
            assert with_pass.count(200) == 25 and set(with_pass) == {200, 409}, with_pass
            assert without == {(403, "queue_pass_required")}
        finally:
            client.close()

    with running_replicas(settings, 2, HC_STRATEGY=strategy, **SHARED) as urls:
        asyncio.run(scenario(urls))
    assert_invariant(settings.database_url, 25, product=pid)
    assert {user for user, _ in orders_of(settings.database_url, pid).values()} <= set(holders)


@pytest.mark.gen_test
@pytest.mark.settings(rate_limit=1.0, rate_burst=1)
async def test_joining_is_rate_limited_like_buying(http_client, base_url, settings: Settings,  # type: ignore[no-untyped-def]
                                                   services) -> None:
    pid = room_product(settings.database_url, 10, rate=10)
    await services.schedule.load()
    first = await post_raw(http_client, f"{base_url}/products/{pid}/queue", '{"user_id": 9}')
    again = await post_raw(http_client, f"{base_url}/products/{pid}/queue", '{"user_id": 9}')
    assert first.status == 202 and (again.status, again.body["error"]["code"]) == (429, "rate_limited")
    for bad in ('{"user_id": 0}', '{"user_id": true}', '{"user": 1}', "[]", ""):
        answer = await post_raw(http_client, f"{base_url}/products/{pid}/queue", bad)
        assert (answer.status, answer.body["error"]["code"]) == (400, "invalid_request"), bad


@pytest.mark.gen_test
async def test_the_dashboard_and_metrics_show_each_rooms_queue(http_client, base_url, settings: Settings,  # type: ignore[no-untyped-def]
                                                               services) -> None:
    pid = room_product(settings.database_url, 10, rate=2, starts_at=datetime.now(UTC) + timedelta(hours=1))
    await services.schedule.load()
    for user in range(1, 6):
        await join(http_client, base_url, pid, user)
    services.snapshots._cached = None  # type: ignore[attr-defined]  # read afresh, not the 0.25 s cache
    snapshot = await services.snapshots.get()
    product = next(p for p in snapshot["products"] if p["id"] == pid)
    assert product["queue"] == {"length": 5, "admitted": 0}  # an hour before the start
    assert (product["admit_per_second"], product["passes_used"]) == (2, 0)
    assert "queue" not in next(p for p in snapshot["products"] if p["id"] == 1)
    text = (await http_client.fetch(f"{base_url}/metrics")).body.decode()
    assert f'hypercheckout_queue_length{{product="{pid}"}} 5.0' in text
    assert f'hypercheckout_queue_admitted{{product="{pid}"}} 0.0' in text
    # "Passes used" counts orders bought with a pass of this opening, not every buyer with an order (issue 45):
    # one bought while the room was closed (no opening) and one of an earlier opening are not this room's passes.
    sql(settings.database_url, "INSERT INTO orders (user_id, product_id, quantity, replica, room_generation) VALUES "
        "(1, %(p)s, 1, 't', NULL), (2, %(p)s, 1, 't', 0), (3, %(p)s, 1, 't', 1)", {"p": pid})
    sql(settings.database_url, "UPDATE products SET room_generation = 1, stock = stock - 3 WHERE id = %s", (pid,))
    services.snapshots._cached = None  # type: ignore[attr-defined]
    product = next(p for p in (await services.snapshots.get())["products"] if p["id"] == pid)
    assert (product["orders"], product["passes_used"]) == (3, 1)


@pytest.mark.gen_test
async def test_joining_needs_no_redis(  # type: ignore[no-untyped-def]
        http_client, base_url, settings: Settings, services) -> None:
    """Places are kept in PostgreSQL: with every Redis script call failing, buyers still join, in order, and the
    same buyer joining again gets the same ticket."""
    pid = room_product(settings.database_url, 10, rate=10, starts_at=datetime.now(UTC) + timedelta(seconds=60))
    await services.schedule.load()
    client = services.redis
    real = client.evalsha

    async def dead(*args: object) -> object:
        raise redis.exceptions.ConnectionError("Connection refused")

    client.evalsha = dead
    try:
        first, second = await join(http_client, base_url, pid, 5), await join(http_client, base_url, pid, 6)
        assert (first["position"], second["position"]) == (1, 2)
        assert (await join(http_client, base_url, pid, 5))["ticket"] == first["ticket"]
    finally:
        client.evalsha = real


@pytest.mark.gen_test
async def test_a_queue_pass_with_a_byte_outside_ascii_is_a_403_or_ignored_never_a_500(  # type: ignore[no-untyped-def]
        http_client, base_url, settings: Settings, services) -> None:
    """Headers arrive as bytes and are read as Latin-1: a pass with an é in it is simply not a pass."""
    queued = room_product(settings.database_url, 10, rate=1000)
    await services.schedule.load()
    host, _, port = base_url.removeprefix("http://").partition(":")
    for product, expected in ((queued, (403, "queue_pass_invalid")), (1, (200, None))):
        reader, writer = await asyncio.open_connection(host, int(port))
        body = f'{{"user_id": 5, "product_id": {product}, "quantity": 1}}'.encode()
        writer.write(b"POST /purchase HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
                     b"Queue-Pass: p1.1.1.9999999999.\xe9\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        raw = await reader.read()
        writer.close()
        head, _, answer = raw.partition(b"\r\n\r\n")
        status = int(head.split()[1])
        code = json.loads(answer).get("error", {}).get("code") if status != 200 else None
        assert (status, code) == expected, raw
    assert orders_of(settings.database_url, queued) == {}
