"""A herd of waiting-room joins at a drop's start must not crowd out the purchases of the buyers the room admitted:
joins have an in-flight bound of their own, and use at most HC_JOIN_CONNECTIONS of the pool's connections (joins of
one product take their line's row lock in turn; the others wait in memory, holding no connection)."""

from __future__ import annotations

import asyncio
import time

import psycopg2
import pytest
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from hypercheckout.app import Services
from hypercheckout.settings import Settings
from tests.helpers import buy, orders_of, post_raw
from tests.test_waiting_room import admitted_pass, join, room_product

HERD = 12


@pytest.mark.gen_test(timeout=120)
@pytest.mark.settings(db_pool_size=4, join_connections=2, max_in_flight=8)
async def test_joins_stuck_on_their_line_leave_admitted_buyers_their_purchases(  # type: ignore[no-untyped-def]
        http_client, base_url, settings: Settings, services: Services) -> None:
    pid = room_product(settings.database_url, 10, rate=1000)
    await services.schedule.load()
    granted = await admitted_pass(http_client, base_url, (await join(http_client, base_url, pid, 1))["ticket"])
    # Hold the line's row: every new join now waits for it, as a herd's joins wait for one another.
    holder = psycopg2.connect(settings.database_url)
    client = SimpleAsyncHTTPClient(force_instance=True, max_clients=HERD + 1)
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT 1 FROM queue_lines WHERE product_id = %s FOR UPDATE", (pid,))
        herd = [asyncio.ensure_future(post_raw(client, f"{base_url}/products/{pid}/queue", f'{{"user_id": {user}}}'))
                for user in range(100, 100 + HERD)]
        deadline = time.monotonic() + 60
        while True:  # until every join of the herd is being served
            if services.join_admission.in_flight == HERD:
                break
            assert time.monotonic() < deadline, services.join_admission.in_flight
            await asyncio.sleep(0.01)
        # More joins in flight than purchases may be, stuck: the admitted buyer's purchase is served regardless,
        # while the herd still waits (the row is held until the purchase has its answer).
        bought = await asyncio.wait_for(
            buy(client, base_url, user=1, product=pid, headers={"Queue-Pass": granted}), timeout=60)
        assert bought.status == 200, bought.body
        assert not any(join.done() for join in herd)
    finally:
        holder.rollback()
        holder.close()
    try:
        joined = await asyncio.gather(*herd)
    finally:
        client.close()
    assert [answer.status for answer in joined] == [202] * HERD
    places = sorted(int(answer.body["ticket"].split(".")[3]) for answer in joined)
    assert len(set(places)) == HERD  # one place each, none lost to the wait
    assert len(orders_of(settings.database_url, pid)) == 1
