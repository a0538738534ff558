"""Admission control: past a replica's in-flight bound, or after waiting too long, a purchase is refused at once
with 503 overloaded — nothing written, no database touched — while the admitted ones complete."""

from __future__ import annotations

import asyncio
import time

import pytest
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from hypercheckout.app import Services
from hypercheckout.checkout.batched import BatchedStrategy
from hypercheckout.checkout.errors import CheckoutError
from hypercheckout.checkout.models import PurchaseRequest
from hypercheckout.settings import Settings
from hypercheckout.stats import read_outcomes
from hypercheckout.store import Store
from tests.helpers import buy, orders_of, set_stock, stock_of
from tests.locks import row_locked, wait_for_lock_waiters
from tests.test_metrics import scrape


async def until(condition, *, what: str, timeout: float = 5) -> None:  # type: ignore[no-untyped-def]
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def assert_overloaded(answer) -> None:  # type: ignore[no-untyped-def]
    assert answer.status == 503, answer.body
    assert answer.body["error"]["code"] == "overloaded" and answer.body["error"]["outcome"] == "nothing_sold"
    assert answer.headers["Retry-After"] == "1"


@pytest.mark.gen_test(timeout=30)
@pytest.mark.settings(max_in_flight=2)
async def test_past_the_in_flight_bound_the_excess_is_refused_at_once_and_the_admitted_complete(
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


@pytest.mark.gen_test
@pytest.mark.settings(admission_wait_ms=1000)  # roomy, so that the fresh one below is never late on a slow machine
async def test_a_purchase_that_already_waited_too_long_is_refused_rather_than_served_late(
        http_client, base_url, database_url: str) -> None:
    late = await buy(http_client, base_url, user=1, headers={"X-Request-Start": f"t={time.time() - 10:.3f}"})
    assert_overloaded(late)
    fresh = await buy(http_client, base_url, user=2, headers={"X-Request-Start": f"t={time.time():.3f}"})
    assert fresh.status == 200
    assert len(orders_of(database_url)) == 1


@pytest.mark.gen_test
@pytest.mark.settings(admission_wait_ms=1000, trusted_proxies=())
async def test_only_a_trusted_proxy_says_when_a_request_started(http_client, base_url) -> None:
    answer = await buy(http_client, base_url, headers={"X-Request-Start": f"t={time.time() - 60:.3f}"})
    assert answer.status == 200  # a client's own header is not believed


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
