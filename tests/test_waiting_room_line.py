"""The waiting room's line against real PostgreSQL and Redis, for each way issue 22 found to break first come, first
served at the rate set: a late joiner, a start cleared, an edit that gives the same rate, a new rate, Redis losing
its data mid-queue, and a room closed and opened again. Each asserts what a buyer sees (its ticket's standing) and
the arithmetic behind it (the place on the ticket, the room as PostgreSQL holds it)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg2
import pytest
import redis.asyncio

from hypercheckout.checkout.queue import admission_time, admitted_by
from hypercheckout.settings import Settings
from hypercheckout.store import ProductChanges, WaitingRoom
from hypercheckout.store import line as line_sql
from hypercheckout.store.line import LINE_NOW
from tests.helpers import get, post_raw, sql
from tests.test_waiting_room import join, room_product, standing


def opened_ago(database_url: str, product_id: int, seconds: float) -> None:
    """Date the room's opening ``seconds`` back: the capacity a room accrues while nobody stands in it."""
    sql(database_url, "UPDATE products SET admission_origin = now() - make_interval(secs => %(s)s) WHERE id = %(id)s",
        {"s": seconds, "id": product_id})


def place_of(ticket: str) -> int:
    return int(ticket.split(".")[3])  # t2.<product>.<generation>.<place>.<user>.<mac>


async def room_of(services: Any, product_id: int) -> Any:
    product = await services.store.get_product(product_id)
    assert product is not None and product.room is not None
    return product.room


async def until(client: Any, base_url: str, ticket: str, status: str, timeout: float = 30) -> dict[str, Any]:
    """The ticket's standing once it is ``status`` (polled; a busy machine may take its time)."""
    deadline = time.monotonic() + timeout
    while True:
        body = await standing(client, base_url, ticket)
        if body["status"] == status:
            return body
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.05)


async def change(services: Any, product_id: int, **fields: Any) -> None:
    await services.store.update_product(product_id, ProductChanges(**fields, given=frozenset(fields)))
    await services.schedule.load()


@pytest.mark.gen_test(timeout=60)
async def test_a_late_joiner_is_admitted_after_it_joins_and_joiners_are_paced_at_the_rate(  # type: ignore[no-untyped-def]
        http_client, base_url, settings: Settings, services) -> None:
    """A room at 10/s with 5 s passes, opened 8 s before anyone joins: on the old arithmetic the first joiner's
    slot had passed 7.9 s earlier, so it was `expired` at once (and 20 joiners within the backlog were all let in
    at once). Each joiner's admission must come after its join, one slot (0.1 s) after the one before."""
    pid = room_product(settings.database_url, 100, rate=10, pass_seconds=5)
    opened_ago(settings.database_url, pid, 8)
    await services.schedule.load()
    tickets = []
    for user in range(1, 21):
        joined_at = time.time()
        body = await join(http_client, base_url, pid, user)
        assert body["status"] in ("waiting", "admitted"), body
        tickets.append((joined_at, body["ticket"]))
    room = await room_of(services, pid)
    places = [place_of(t) for _, t in tickets]
    assert places == list(range(places[0], places[0] + 20)), places  # in the order of joining, one slot each
    for joined_at, ticket in tickets:
        admitted_at = admission_time(room, place_of(ticket))
        assert admitted_at is not None and admitted_at >= joined_at - 0.05, (ticket, admitted_at - joined_at)
    # And each holder learns it was admitted, with a pass still valid when it learns it.
    for _, ticket in tickets:
        body = await until(http_client, base_url, ticket, "admitted")
        assert datetime.fromisoformat(body["pass_expires_at"]) > datetime.now(UTC)


@pytest.mark.gen_test(timeout=60)
async def test_clearing_the_start_expires_nobody_and_admits_from_now(  # type: ignore[no-untyped-def]
        http_client, base_url, settings: Settings, services) -> None:
    """Three buyers wait for a start a minute away in a room opened 8 s ago; the operator clears the start. On the
    old arithmetic the room's opening became the origin and all three were `expired`."""
    pid = room_product(settings.database_url, 100, rate=10, pass_seconds=5,
                       starts_at=datetime.now(UTC) + timedelta(seconds=60))
    opened_ago(settings.database_url, pid, 8)
    await services.schedule.load()
    tickets = [(await join(http_client, base_url, pid, user))["ticket"] for user in (1, 2, 3)]
    assert [(await standing(http_client, base_url, t))["status"] for t in tickets] == ["waiting"] * 3
    cleared_at = time.time()
    await change(services, pid, starts_at=None)
    room = await room_of(services, pid)
    for ticket in tickets:
        assert admission_time(room, place_of(ticket)) >= cleared_at - 0.05  # type: ignore[operator]
        body = await until(http_client, base_url, ticket, "admitted")
        assert datetime.fromisoformat(body["pass_expires_at"]) > datetime.now(UTC)


@pytest.mark.gen_test(timeout=60)
async def test_an_edit_with_the_same_rate_moves_nothing_and_a_new_rate_keeps_earlier_passes(  # type: ignore[no-untyped-def]
        http_client, base_url, settings: Settings, services) -> None:
    """The dashboard's Save sends the rate with every edit. On the old arithmetic any edit carrying it re-admitted
    every earlier ticket with a fresh pass and counted slots nobody held as admitted."""
    pid = room_product(settings.database_url, 100, rate=10, pass_seconds=1)
    await services.schedule.load()
    first = (await join(http_client, base_url, pid, 1))["ticket"]
    await until(http_client, base_url, first, "admitted")
    await until(http_client, base_url, first, "expired")
    before = await room_of(services, pid)
    await change(services, pid, name="renamed", admit_per_second=10)
    after = await room_of(services, pid)
    assert (after.origin, after.admitted_before) == (before.origin, before.admitted_before)
    assert (await standing(http_client, base_url, first))["status"] == "expired"

    # A new rate: the line moves on from where it stands; a pass given before keeps its expiry, and one that had
    # expired stays expired.
    await change(services, pid, admit_per_second=20)
    assert (await standing(http_client, base_url, first))["status"] == "expired"
    longer = room_product(settings.database_url, 100, rate=10, pass_seconds=60)
    await services.schedule.load()
    second = (await join(http_client, base_url, longer, 2))["ticket"]
    admitted = await until(http_client, base_url, second, "admitted")
    await change(services, longer, admit_per_second=20)
    again = await standing(http_client, base_url, second)
    assert (again["status"], again["pass_expires_at"]) == ("admitted", admitted["pass_expires_at"])
    third = await join(http_client, base_url, longer, 3)  # one slot on, at the new rate: not let in long before
    assert place_of(third["ticket"]) > admitted_by(await room_of(services, longer), time.time() - 0.05)


@pytest.mark.gen_test(timeout=120)
async def test_a_pass_stays_valid_through_any_number_of_rate_edits(  # type: ignore[no-untyped-def]
        http_client, base_url, settings: Settings, services) -> None:
    """Issue 45, item 2: the line kept its newest 32 segments, so after 33 edits of the rate (the dashboard's live
    rate field) a buyer admitted with a 600 s pass read ``expired``. What an unexpired pass needs is kept however
    many edits there were; only segments that ended longer ago than any pass lasts go."""
    pid = room_product(settings.database_url, 100, rate=1000, pass_seconds=600)
    await services.schedule.load()
    ticket = (await join(http_client, base_url, pid, 1))["ticket"]
    admitted = await until(http_client, base_url, ticket, "admitted")
    for edit in range(40):
        await change(services, pid, admit_per_second=500 + edit)
    again = await standing(http_client, base_url, ticket)
    assert (again["status"], again["pass_expires_at"]) == ("admitted", admitted["pass_expires_at"]), again
    assert len((await room_of(services, pid)).history) == 40
    # A segment that ended more than a day ago (longer than any pass lasts) is no longer kept.
    sql(settings.database_url, "UPDATE products SET admission_history = jsonb_set(jsonb_set(admission_history, "
        "'{0,0}', to_jsonb(extract(epoch FROM now()) - 200000)), '{1,0}', to_jsonb(extract(epoch FROM now()) - "
        "100000)) WHERE id = %s", (pid,))
    await change(services, pid, admit_per_second=2000)
    assert len((await room_of(services, pid)).history) == 40  # the oldest gone, the newest added


@pytest.mark.gen_test(timeout=60)
async def test_redis_losing_its_data_mid_queue_puts_nobody_ahead_of_those_waiting(  # type: ignore[no-untyped-def]
        http_client, base_url, settings: Settings, services) -> None:
    """Rate 1/s, five buyers waiting, Redis flushed (a restart without persistence): on the old numbering (a Redis
    counter) a newcomer got number 1 and was admitted at once, and buyer 5 joining again moved to the front."""
    pid = room_product(settings.database_url, 100, rate=1, pass_seconds=60,
                       starts_at=datetime.now(UTC) + timedelta(seconds=60))
    await services.schedule.load()
    waiting = [(await join(http_client, base_url, pid, user))["ticket"] for user in range(1, 6)]
    client = redis.asyncio.Redis.from_url(settings.redis_url)
    try:
        async for key in client.scan_iter(match=f"{settings.redis_prefix}*"):
            await client.delete(key)
    finally:
        await client.aclose()
    newcomer = await join(http_client, base_url, pid, 6)
    assert place_of(newcomer["ticket"]) > max(place_of(t) for t in waiting)
    assert newcomer["position"] == 6, newcomer
    rejoined = await join(http_client, base_url, pid, 5)
    assert rejoined["ticket"] == waiting[4] and rejoined["position"] == 5


@pytest.mark.gen_test(timeout=60)
async def test_a_room_closed_and_opened_again_starts_a_new_line(  # type: ignore[no-untyped-def]
        http_client, base_url, settings: Settings, services) -> None:
    """A buyer admitted (or one who bought) in a room that is closed and opened again must not get a pass again
    from its old ticket: the new opening is a new line, joined afresh in order."""
    pid = room_product(settings.database_url, 100, rate=50, pass_seconds=60)
    await services.schedule.load()
    old = (await join(http_client, base_url, pid, 1))["ticket"]
    await until(http_client, base_url, old, "admitted")
    await change(services, pid, waiting_room=False)
    await change(services, pid, waiting_room=True, starts_at=datetime.now(UTC) + timedelta(seconds=60))
    assert (await standing(http_client, base_url, old))["status"] == "expired"
    first, again = await join(http_client, base_url, pid, 2), await join(http_client, base_url, pid, 1)
    assert (place_of(first["ticket"]), place_of(again["ticket"])) == (1, 2)
    assert (first["position"], again["position"]) == (1, 2)
    # The old line's places are gone with it: a room reopened many times keeps one line.
    assert sql(settings.database_url, "SELECT count(*) FROM queue_lines WHERE product_id = %s", (pid,)) == [(1,)]


@pytest.mark.gen_test(timeout=60)
async def test_a_room_closed_keeps_no_places(  # type: ignore[no-untyped-def]
        http_client, base_url, settings: Settings, services) -> None:
    """Every buyer id a client writes takes a place; a closed room's line is never used again (opening it starts a
    new one), so its places go when it closes, not when, if ever, it is opened again."""
    pid = room_product(settings.database_url, 100, rate=1, pass_seconds=60)
    await services.schedule.load()
    for user in range(1, 21):
        await join(http_client, base_url, pid, user)
    places = "SELECT count(*) FROM queue_places WHERE product_id = %s"
    assert sql(settings.database_url, places, (pid,)) == [(20,)]
    await change(services, pid, waiting_room=False)
    assert sql(settings.database_url, places, (pid,)) == [(0,)]
    assert sql(settings.database_url, "SELECT count(*) FROM queue_lines WHERE product_id = %s", (pid,)) == [(0,)]


@pytest.mark.gen_test(timeout=60)
async def test_a_closed_rooms_tickets_are_answered_from_memory(  # type: ignore[no-untyped-def]
        http_client, base_url, settings: Settings, services, monkeypatch: pytest.MonkeyPatch) -> None:
    """From issue 45's review: every poll of a closed room's ticket read the product from PostgreSQL, and every
    buyer who was in line keeps polling. A replica whose copy has seen the room close answers from memory; one
    whose copy has not seen it reopen still asks PostgreSQL, and is told the ticket's opening is over."""
    pid = room_product(settings.database_url, 100, rate=1000)
    await services.schedule.load()
    ticket = (await join(http_client, base_url, pid, 1))["ticket"]
    await change(services, pid, waiting_room=False)
    lookups = []
    real = services.store.get_product

    async def counted(product_id: int) -> Any:
        lookups.append(product_id)
        return await real(product_id)

    monkeypatch.setattr(services.store, "get_product", counted)
    for _ in range(20):
        answer = await get(http_client, f"{base_url}/queue/{ticket}")
        assert (answer.status, answer.body["error"]["code"]) == (409, "no_waiting_room"), answer.body
    assert lookups == []
    # Reopened behind this copy's back: the old ticket's opening is over either way.
    sql(settings.database_url, "UPDATE products SET waiting_room = true, room_generation = room_generation + 1, "
                               "admission_origin = now(), admitted_before = 0 WHERE id = %s", (pid,))
    new = (await join(http_client, base_url, pid, 2))["ticket"]  # a ticket of the opening the copy has not seen
    assert (await standing(http_client, base_url, new))["status"] in ("waiting", "admitted")
    assert lookups == [pid]


@pytest.mark.gen_test(timeout=60)
async def test_a_join_to_a_room_that_can_admit_nobody_writes_nothing(  # type: ignore[no-untyped-def]
        http_client, base_url, settings: Settings, services) -> None:
    """Issue 45, item 3: 40 joins to an ended product were 40 x 202 ``ended`` and 40 places nothing deleted (a bot
    rotating buyer ids grew the table for a finished sale). A join to an ended or sold-out room is refused as
    such (409, as a purchase would be) and writes nothing; one that joined before the end still reads its ticket."""
    url = settings.database_url
    ended = room_product(url, 100, rate=1000, starts_at=datetime.now(UTC) - timedelta(hours=2))
    kept = (await join(http_client, base_url, ended, 1))["ticket"]
    sql(url, "UPDATE products SET ends_at = now() - interval '1 second' WHERE id = %s", (ended,))
    sold_out = room_product(url, 0, rate=1000)
    await services.schedule.load()
    for product, code in ((ended, "sale_ended"), (sold_out, "out_of_stock")):
        for user in range(100, 140):
            answer = await post_raw(http_client, f"{base_url}/products/{product}/queue", f'{{"user_id": {user}}}')
            assert (answer.status, answer.body["error"]["code"]) == (409, code), answer.body
    places = "SELECT count(*) FROM queue_places WHERE product_id = %s"
    assert sql(url, places, (ended,)) == [(1,)] and sql(url, places, (sold_out,)) == [(0,)]
    assert (await standing(http_client, base_url, kept))["status"] == "ended"
    again = await post_raw(http_client, f"{base_url}/products/{ended}/queue", '{"user_id": 1}')
    assert (again.status, again.body["status"]) == (202, "ended"), again.body  # its own place, nothing new


RATES = (1, 3, 7, 10, 999, 1000, 333_333, 999_999, 1_000_000)


def test_replicas_and_postgresql_count_admissions_alike(database_url: str) -> None:
    """From issue 45's review: the line's arithmetic is written in SQL (placing joiners, moving the line on at an
    edit, the dashboard's figures) and in Python (each poll), and floats made the two disagree by a place at high
    rates. At every rate and around every admission instant, both give the same count, and each place's
    admission time is the first instant both count it."""
    elapsed = sorted({us for rate in RATES for k in (1, 2, 3, 10, 99, 1000, 123_457) for edge in (-1, 0, 1)
                      if (us := -(-k * 1_000_000 // rate) + edge) > 0})
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cur:  # one transaction: one now()
            cur.execute(f"""
                SELECT admit_per_second, us, {LINE_NOW}, extract(epoch FROM now())::text, admission_origin
                FROM (SELECT rate AS admit_per_second, us, 5::bigint AS admitted_before, NULL::timestamptz AS starts_at,
                             now() - us * interval '1 microsecond' AS admission_origin
                      FROM unnest(%(rates)s::int[]) AS rate, unnest(%(us)s::bigint[]) AS us) AS room
                """, {"rates": list(RATES), "us": elapsed})
            rows = cur.fetchall()
        conn.rollback()
    finally:
        conn.close()
    assert len(rows) == len(RATES) * len(elapsed)
    disagreements = []
    for rate, us, in_sql, now, origin in rows:
        room = WaitingRoom(admit_per_second=rate, pass_seconds=60, origin=origin, admitted_before=5)
        in_memory = admitted_by(room, float(now))
        if in_memory != in_sql:
            disagreements.append((rate, us, in_sql, in_memory))
        at = admission_time(room, in_sql + 1)  # the next place: not yet admitted, by both
        assert at is not None and at > float(now) and admitted_by(room, at) == in_sql + 1, (rate, us)
    assert disagreements == [], disagreements[:10]


def queue_places_read(database_url: str, product_id: int) -> int:
    """Rows of queue_places that reading the product's line figures (line_sql.LENGTHS) goes through."""
    def rows(node: dict[str, Any]) -> int:
        own = node.get("Actual Rows", 0) * node.get("Actual Loops", 1) if node.get("Relation Name") == \
            "queue_places" else 0
        return own + sum(rows(child) for child in node.get("Plans", []))

    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + line_sql.LENGTHS, {"ids": [product_id]})
            (plan,) = cur.fetchone()[0]
    finally:
        conn.close()
    return int(rows(plan["Plan"]))


@pytest.mark.gen_test(timeout=180)
async def test_watching_a_line_costs_the_same_however_long_it_is(  # type: ignore[no-untyped-def]
        settings: Settings, services) -> None:
    """Issue 45, item 4: the dashboard (every 250 ms per replica) and each scrape counted the line's places: 73-108
    ms of PostgreSQL for 200,000. With 1,500 buyers in line, half of them reached, the figures are still right
    and reading them goes through a couple of places, not all of them."""
    url = settings.database_url
    pid = room_product(url, 100, rate=1, pass_seconds=60)
    await services.schedule.load()
    for first in range(1, 1501, 50):
        await asyncio.gather(*(services.rooms.join(pid, user) for user in range(first, first + 50)))
    sql(url, "UPDATE products SET admitted_before = 750 WHERE id = %s", (pid,))  # the line reached half of them
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:  # one transaction: both read the line at the same now()
            cur.execute(line_sql.LENGTHS, {"ids": [pid]})
            figures = cur.fetchall()
            cur.execute("SELECT count(*), count(*) FILTER (WHERE q.place <= " + LINE_NOW + ") FROM queue_places q "
                        "JOIN products p ON p.id = q.product_id AND p.room_generation = q.generation "
                        "WHERE p.id = %s", (pid,))
            counted = cur.fetchone()
        conn.rollback()
    finally:
        conn.close()
    assert figures == [(pid, counted[0], counted[1])] and counted[0] == 1500 and counted[1] >= 750, (figures, counted)
    assert queue_places_read(url, pid) <= 2


@pytest.mark.gen_test(timeout=60)
@pytest.mark.settings(schedule_refresh_ms=3_600_000)  # this replica's copy is read when the test says, never else
async def test_a_replica_whose_copy_has_not_seen_the_room_still_places_its_tickets(  # type: ignore[no-untyped-def]
        http_client, base_url, settings: Settings, services) -> None:
    """Issue 22, item 5: for a moment after a room opens, a replica's copy does not know it; a ticket polled there
    was 404 `unknown_ticket` or 409 `no_waiting_room`, and the shop page stops polling for good on either. A
    ticket the copy cannot place is placed by PostgreSQL's row; 404 and 409 only when the product or room is
    really gone."""
    url = settings.database_url
    pid = sql(url, "INSERT INTO products (name, stock, initial_stock) VALUES ('plain', 5, 5) RETURNING id")[0][0]
    await services.schedule.load()
    sql(url, "UPDATE products SET waiting_room = true, admission_origin = now(), admit_per_second = 1000, "
             "room_generation = room_generation + 1 WHERE id = %s", (pid,))
    opened = (await join(http_client, base_url, pid, 1))["ticket"]
    assert (await until(http_client, base_url, opened, "admitted"))["pass"]
    newer = room_product(url, 5, rate=1000)  # a product this copy has never seen
    fresh = (await join(http_client, base_url, newer, 1))["ticket"]
    assert (await until(http_client, base_url, fresh, "admitted"))["pass"]
    # The copy knows the room's first opening; it is closed and opened again behind its back: a new line.
    await services.schedule.load()
    sql(url, "UPDATE products SET room_generation = room_generation + 1, admission_origin = now(), "
             "admitted_before = 0 WHERE id = %s", (pid,))
    reopened = (await join(http_client, base_url, pid, 1))["ticket"]
    assert int(reopened.split(".")[2]) == int(opened.split(".")[2]) + 1  # a ticket of the new opening
    assert (await until(http_client, base_url, reopened, "admitted"))["pass"]
    # Really gone: the room closed (409, buy directly), the product deleted (404).
    sql(url, "UPDATE products SET waiting_room = false WHERE id = %s", (pid,))
    await services.schedule.load()
    closed = await get(http_client, f"{base_url}/queue/{reopened}")
    assert (closed.status, closed.body["error"]["code"]) == (409, "no_waiting_room")
    sql(url, "DELETE FROM products WHERE id = %s", (newer,))
    await services.schedule.load()
    deleted = await get(http_client, f"{base_url}/queue/{fresh}")
    assert (deleted.status, deleted.body["error"]["code"]) == (404, "unknown_ticket")
