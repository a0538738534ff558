"""A replica whose clock is skewed from PostgreSQL's: the instants a sale and a waiting room turn on are PostgreSQL's
(``now()`` set them, its transactions check them), so every in-memory decision about them is made on PostgreSQL's
clock as the replica reads it. Two minutes either way, far past any NTP-kept machine: a replica behind used to
refuse a sale that had started and keep admitted buyers waiting; one ahead to admit a room's buyers early and
answer their fresh passes expired."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import time_machine

from hypercheckout.app import Services, start_services, stop_services
from hypercheckout.checkout.clock import SAMPLES, DatabaseClock
from hypercheckout.settings import Settings
from tests.helpers import buy, get, sql
from tests.test_admin_api import call
from tests.test_waiting_room import admitted_pass, join, standing

SKEW = 120.0


@pytest.fixture(params=[-SKEW, SKEW], ids=["behind", "ahead"])
def skew(request: pytest.FixtureRequest) -> float:
    return float(request.param)


@pytest.fixture
def services(io_loop, settings: Settings, skew: float) -> Iterator[Services]:  # type: ignore[no-untyped-def]
    """A replica on a machine whose wall clock is off by ``skew``: every ``time.time()`` and ``datetime.now()`` in
    this process (time-machine moves them at the C level; the monotonic clock and PostgreSQL's stay true)."""
    with time_machine.travel(time.time() + skew, tick=True):
        started = io_loop.run_sync(lambda: start_services(settings))
        yield started
        io_loop.run_sync(lambda: stop_services(started))


def product(database_url: str, *, starts_in: float, room: bool = False) -> int:
    """A product whose sale starts ``starts_in`` seconds from now by PostgreSQL's clock (negative: it has started),
    with a waiting room at 1000 admissions a second and one-minute passes if ``room``."""
    return int(sql(database_url,
                   "INSERT INTO products (name, stock, initial_stock, starts_at, waiting_room, admit_per_second, "
                   "pass_seconds, admission_origin) VALUES ('skewed', 10, 10, now() + make_interval(secs => %(s)s), "
                   "%(room)s, 1000, 60, now() - interval '1 second') RETURNING id",
                   {"s": starts_in, "room": room})[0][0])


@pytest.mark.gen_test(timeout=60)
async def test_a_skewed_replica_sells_from_the_start_postgresql_set(  # type: ignore[no-untyped-def]
        http_client, base_url, settings: Settings, services: Services) -> None:
    started, later = product(settings.database_url, starts_in=-5), product(settings.database_url, starts_in=600)
    await services.schedule.load()
    assert (await buy(http_client, base_url, user=1, product=started)).status == 200
    refused = await buy(http_client, base_url, user=2, product=later)
    assert (refused.status, refused.body["error"]["code"]) == (409, "sale_not_started"), refused.body
    assert 500 < int(refused.headers["Retry-After"]) <= 600  # the wait by PostgreSQL's clock, not 600 ± the skew
    # What the replica shows says the same, and an operator's "+600" is 600 s from PostgreSQL's now.
    shown = [(await get(http_client, f"{base_url}/products/{pid}")).body["status"] for pid in (started, later)]
    assert shown == ["live", "scheduled"]
    made = await call(http_client, base_url, "POST", "/admin/api/products",
                      {"name": "relative", "stock": 1, "starts_at": "+600"})
    assert made.status == 201, made.body
    assert 590 < sql(settings.database_url, "SELECT extract(epoch FROM starts_at - now()) FROM products WHERE id = %s",
                     (made.body["id"],))[0][0] <= 600


@pytest.mark.gen_test(timeout=60)
async def test_a_skewed_replica_admits_by_postgresqls_clock_and_its_pass_buys(  # type: ignore[no-untyped-def]
        http_client, base_url, settings: Settings, services: Services) -> None:
    open_now = product(settings.database_url, starts_in=-1, room=True)
    opens_later = product(settings.database_url, starts_in=600, room=True)
    await services.schedule.load()
    # Admitted within a millisecond of joining: a replica behind kept it waiting two minutes, one ahead expired it.
    granted = await admitted_pass(http_client, base_url, (await join(http_client, base_url, open_now, 1))["ticket"])
    bought = await buy(http_client, base_url, user=1, product=open_now, headers={"Queue-Pass": granted})
    assert bought.status == 200, bought.body
    waiting = await standing(http_client, base_url, (await join(http_client, base_url, opens_later, 2))["ticket"])
    assert waiting["status"] == "waiting", waiting
    assert 500 < waiting["estimated_wait_s"] <= 601, waiting


def test_the_clock_keeps_the_latest_samples_shortest_round_trip() -> None:
    """A busy event loop stretches a round trip without the clocks moving: of the latest samples, the one whose
    round trip was shortest is the best reading; older ones roll off, so a clock stepped since is followed."""
    clock = DatabaseClock(local=lambda: 1000.0)
    assert clock() == 1000.0 and clock.error == float("inf")  # nothing measured: its own clock
    clock.observe(sent=0.0, server=52.0, round_trip=4.0)  # read 2 s into a 4 s round trip: 50 s ahead
    clock.observe(sent=10.0, server=60.1, round_trip=0.2)  # a 0.2 s round trip: 50.0, give or take 0.1
    assert (clock.offset, clock.error) == (pytest.approx(50.0), pytest.approx(0.1))
    assert clock() == pytest.approx(1050.0)
    for n in range(SAMPLES):  # the clock was stepped: 30 s now, read through slower round trips
        clock.observe(sent=100.0 + n, server=130.5 + n, round_trip=1.0)
    assert (clock.offset, clock.error) == (pytest.approx(30.0), pytest.approx(0.5))
