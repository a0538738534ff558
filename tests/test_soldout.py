"""A product seen at 0 is refused without PostgreSQL, and a restock anywhere clears that within a second."""

from __future__ import annotations

import asyncio
import time

from hypercheckout.app import Services, start_services, stop_services
from hypercheckout.checkout.errors import CheckoutError
from hypercheckout.checkout.models import PurchaseRequest
from hypercheckout.processes import free_port
from hypercheckout.settings import Settings
from tests.helpers import ON_BOTH_REDIS, run_cli, set_stock, settings_env, sql, stock_of


async def wait_for_condition(condition, timeout: float) -> float:  # type: ignore[no-untyped-def]
    """Seconds until ``condition()`` held; fails the test after ``timeout``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"not within {timeout} s"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def sell_out(services: Services) -> None:
    order = await services.checkout.purchase(PurchaseRequest(1, 1, 1))
    assert order.remaining == 0
    assert services.sold_out.is_sold_out(1)


@ON_BOTH_REDIS
def test_sold_out_is_answered_from_memory_and_a_reset_elsewhere_clears_it(settings: Settings) -> None:
    # The PostgreSQL recheck is pushed out of the way: only the reset's pub/sub message can clear the flag here.
    settings = settings.replace(soldout_recheck_ms=60_000)
    set_stock(settings.database_url, 1)

    async def scenario() -> None:
        services = await start_services(settings)
        try:
            await asyncio.wait_for(services.sold_out.subscribed.wait(), 5)
            await sell_out(services)
            # Restocked behind the replica's back: it still refuses, so it did not ask PostgreSQL.
            sql(settings.database_url, "UPDATE products SET stock = 5 WHERE id = 1")
            try:
                await services.checkout.purchase(PurchaseRequest(2, 1, 1))
                raise AssertionError("expected out_of_stock from the sold-out flag")
            except CheckoutError as exc:
                assert (exc.code, exc.extra["remaining"]) == ("out_of_stock", 0)
            assert stock_of(settings.database_url) == 5
            # A reset from another process clears the flag within a second.
            done = await asyncio.to_thread(run_cli, "reset", "--stock", "3", env=settings_env(settings))
            assert done.returncode == 0, done.stderr
            await wait_for_condition(lambda: not services.sold_out.is_sold_out(1), timeout=1.0)
            order = await services.checkout.purchase(PurchaseRequest(3, 1, 1))
            assert order.remaining == 2
        finally:
            await stop_services(services)

    asyncio.run(scenario())


def test_with_redis_down_the_postgres_recheck_still_clears_the_flag(settings: Settings) -> None:
    settings = settings.replace(redis_url=f"redis://127.0.0.1:{free_port()}/0", soldout_recheck_ms=200)
    set_stock(settings.database_url, 1)

    async def scenario() -> None:
        services = await start_services(settings)
        try:
            await sell_out(services)
            sql(settings.database_url, "UPDATE products SET stock = 4 WHERE id = 1")
            waited = await wait_for_condition(lambda: not services.sold_out.is_sold_out(1), timeout=1.0)
            assert waited < 1.0
            assert (await services.checkout.purchase(PurchaseRequest(2, 1, 1))).remaining == 3
        finally:
            await stop_services(services)

    asyncio.run(scenario())
