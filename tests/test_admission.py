"""Admission control: past a replica's in-flight bound, or behind a standing queue, a purchase is refused with
503 overloaded (held an interval, never queued) — nothing written, no database touched — while the admitted ones
complete; a burst that drains is served whole."""

from __future__ import annotations

import asyncio
import time

import pytest
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from hypercheckout.app import Services
from hypercheckout.checkout.admission import Admission
from hypercheckout.checkout.batched import BatchedStrategy
from hypercheckout.checkout.errors import CheckoutError
from hypercheckout.checkout.models import PurchaseRequest
from hypercheckout.settings import Settings
from hypercheckout.stats import read_outcomes
from hypercheckout.store import Store
from tests.helpers import assert_overloaded, buy, orders_of, set_stock, sql, stock_of
from tests.locks import row_locked, wait_for_lock_waiters
from tests.test_metrics import scrape


async def until(condition, *, what: str, timeout: float = 5) -> None:  # type: ignore[no-untyped-def]
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.gen_test(timeout=30)
@pytest.mark.settings(max_in_flight=2)
async def test_past_the_in_flight_bound_the_excess_is_refused_while_the_admitted_wait_and_they_complete(
        http_client, base_url, database_url: str, services: Services) -> None:
    set_stock(database_url, 10)
    client = SimpleAsyncHTTPClient(force_instance=True, max_clients=20)
    try:
        with row_locked(database_url):  # the admitted purchases wait in PostgreSQL, holding their slots
            admitted = [asyncio.ensure_future(buy(client, base_url, user=u)) for u in (1, 2)]
            await wait_for_lock_waiters(database_url, 1)
            await until(lambda: services.admission.in_flight == 2, what="both purchases admitted")
            excess = await asyncio.wait_for(
                asyncio.gather(*(buy(client, base_url, user=u) for u in range(3, 8))), 5)
            assert not any(a.done() for a in admitted)  # answered while the admitted ones still wait
        for answer in excess:
            assert_overloaded(answer)
        assert [a.status for a in await asyncio.gather(*admitted)] == [200, 200]
    finally:
        client.close()
    assert len(orders_of(database_url)) == 2 and stock_of(database_url) == 8
    metrics = await scrape(http_client, base_url)
    assert metrics["hypercheckout_admission_refusals_total", (("reason", "in_flight"),)] == 5
    # The dashboard's chart counts them apart from faults.
    await services.hits.flush()
    now = int(time.time())
    history = await read_outcomes(services.redis, services.settings.redis_prefix, now - 5, now)
    assert sum(second["overloaded"] for second in history) == 5 and sum(s["5xx"] for s in history) == 0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def controlled(clock: FakeClock) -> Admission:
    return Admission(max_in_flight=1000, target=0.005, interval=0.1, clock=clock)


def admitted(admission: Admission, waited: float) -> bool:
    reason = admission.enter(waited)
    if reason is not None:
        admission.refused[reason] += 1
        return False
    admission.leave()
    return True


def test_a_burst_that_drains_within_an_interval_is_served_whole_however_long_its_last_purchase_waited() -> None:
    clock = FakeClock()
    admission = controlled(clock)
    for burst in range(3):  # bursts a second apart, each of 400 purchases handled over 90 ms, waiting up to 2 s
        clock.now += 1
        for i in range(400):
            clock.now += 0.09 / 400
            assert admitted(admission, waited=i * 0.005), (burst, i)
    assert not admission.standing and sum(admission.refused.values()) == 0


def test_a_standing_queue_is_held_short_and_released_once_it_drains() -> None:
    clock = FakeClock()
    admission = controlled(clock)
    # A whole interval in which no purchase waited less than 20 ms: the queue stands.
    for _ in range(30):
        clock.now += 0.003
        assert admitted(admission, waited=0.02)  # judged at the interval's end, not before
    clock.now += 0.02
    outcomes = [admitted(admission, waited) for waited in (0.5, 0.011, 0.009, 0.002, 0.3)]
    assert admission.standing and outcomes == [False, False, True, True, False]  # more than 2 x target: refused
    assert admission.refused["standing_queue"] == 3
    # That interval saw a 2 ms wait: the queue emptied, so the next one serves even the long waiters.
    clock.now += 0.1
    assert admitted(admission, waited=0.5) and not admission.standing


def test_a_queue_that_went_idle_no_longer_stands() -> None:
    clock = FakeClock()
    admission = controlled(clock)
    for _ in range(30):
        clock.now += 0.003
        admitted(admission, waited=0.05)
    clock.now += 0.02
    assert not admitted(admission, waited=0.05) and admission.standing
    clock.now += 0.25  # no purchase for more than an interval: nothing was waiting
    assert admitted(admission, waited=0.05) and not admission.standing


@pytest.mark.gen_test
async def test_behind_a_standing_queue_a_late_purchase_is_refused_and_a_known_refusal_keeps_its_answer(
        http_client, base_url, database_url: str, services: Services) -> None:
    clock = FakeClock()
    services.admission = controlled(clock)
    set_stock(database_url, 10)
    later = sql(database_url, "INSERT INTO products (name, stock, initial_stock, starts_at) "
                              "VALUES ('later', 5, 5, now() + interval '1 hour') RETURNING id")[0][0]
    await services.schedule.load()

    def started(seconds_ago: float) -> dict[str, str]:
        return {"X-Request-Start": f"t={time.time() - seconds_ago:.3f}"}

    # Through one interval every purchase waited 10 s: served (the queue may yet drain), and the queue stands.
    for user in (1, 2):
        assert (await buy(http_client, base_url, user=user, headers=started(10))).status == 200
        clock.now += 0.06
    late = await buy(http_client, base_url, user=3, headers=started(10))
    assert_overloaded(late)
    # What the replica knows from memory is still the answer, not "try again in a second".
    early = await buy(http_client, base_url, user=4, product=later, headers=started(10))
    assert (early.status, early.body["error"]["code"]) == (409, "sale_not_started")
    too_many = await buy(http_client, base_url, user=5, qty=10_000, headers=started(10))
    assert too_many.status == 400
    fresh = await buy(http_client, base_url, user=6, headers=started(0))
    assert fresh.status == 200
    assert len(orders_of(database_url)) == 3 and stock_of(database_url) == 7
    metrics = await scrape(http_client, base_url)
    assert metrics["hypercheckout_admission_refusals_total", (("reason", "standing_queue"),)] == 1
    assert metrics["hypercheckout_admission_standing_queue", ()] == 1


@pytest.mark.gen_test
@pytest.mark.settings(trusted_proxies=())
async def test_only_a_trusted_proxy_says_when_a_request_started(
        http_client, base_url, services: Services) -> None:
    clock = FakeClock()
    services.admission = controlled(clock)
    for user in range(1, 6):  # a client's own header is not believed: nothing waited, nothing stands
        answer = await buy(http_client, base_url, user=user, headers={"X-Request-Start": f"t={time.time() - 60:.3f}"})
        assert answer.status == 200
        clock.now += 0.06
    assert not services.admission.standing


def test_the_batched_queue_of_a_product_is_bounded(settings: Settings) -> None:
    set_stock(settings.database_url, 10)

    async def scenario() -> list[object]:
        store = await Store.connect(settings.database_url, size=2, timeout=5)
        strategy = BatchedStrategy(store, replica="test-1", window_ms=1, max_queue=2)
        try:
            with row_locked(settings.database_url):
                first = asyncio.create_task(strategy.purchase(PurchaseRequest(1, 1, 1)))
                await wait_for_lock_waiters(settings.database_url, 1)  # its batch is in the database
                queued = [asyncio.create_task(strategy.purchase(PurchaseRequest(u, 1, 1))) for u in (2, 3)]
                await asyncio.sleep(0)
                with pytest.raises(CheckoutError) as refused:
                    await strategy.purchase(PurchaseRequest(4, 1, 1))
                assert refused.value.code == "overloaded" and strategy.refused == 1
            return await asyncio.wait_for(asyncio.gather(first, *queued), 10)
        finally:
            await strategy.close()
            await store.close()

    served = asyncio.run(scenario())
    assert len(served) == 3 and len(orders_of(settings.database_url)) == 3


@pytest.mark.gen_test
async def test_a_proxy_whose_clock_runs_ahead_makes_no_purchase_late(
        http_client, base_url, services: Services) -> None:
    """A start stamped in the replica's future (the proxy's clock ahead of this one's) counts as no wait: a skew
    that way can never make a queue stand. (The other way, a proxy clock behind by more than the target, would:
    nginx and the replicas share one clock in `up` and compose.)"""
    clock = FakeClock()
    services.admission = controlled(clock)
    for user in range(1, 6):
        answer = await buy(http_client, base_url, user=user, headers={"X-Request-Start": f"t={time.time() + 5:.3f}"})
        assert answer.status == 200
        clock.now += 0.06
    assert not services.admission.standing


@pytest.mark.gen_test(timeout=30)
async def test_behind_a_standing_queue_a_buyer_its_waiting_room_admitted_is_served(
        http_client, base_url, database_url: str, services: Services) -> None:
    """The room already paces its buyers: a late purchase with a valid pass is served, one without is refused."""
    from tests.test_waiting_room import admitted_pass, join, room_product

    queued = room_product(database_url, 10, rate=1000)
    await services.schedule.load()
    good = await admitted_pass(http_client, base_url, (await join(http_client, base_url, queued, 1))["ticket"])
    clock = FakeClock()
    services.admission = controlled(clock)
    late = {"X-Request-Start": f"t={time.time() - 10:.3f}"}
    for user in (2, 3):  # a whole interval of late purchases: the queue stands
        assert (await buy(http_client, base_url, user=user, headers=late)).status == 200
        clock.now += 0.06
    assert_overloaded(await buy(http_client, base_url, user=4, headers=late))
    served = await buy(http_client, base_url, user=1, product=queued, headers={**late, "Queue-Pass": good})
    assert served.status == 200, served.body
    assert services.admission.standing and services.admission.in_flight == 0
    assert len(orders_of(database_url, queued)) == 1
