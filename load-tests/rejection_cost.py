"""What a refusal costs inside a replica, without HTTP: the purchase use case (``Checkout.purchase``) called in a
loop for a sold-out product and for a sale that has not started, in interleaved rounds, against private PostgreSQL
and Redis servers started for the run. Neither refusal may touch PostgreSQL, and the second must cost about what
the first does (`make bench` measures both through nginx; this isolates the domain code from the noise). Then what
a purchase turned away by admission control costs: the 503 without reading its body, against reading it to answer
a refusal known from memory (the order the handler uses) or the 503 when there is none.

    python load-tests/rejection_cost.py [--calls 100000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypercheckout.app import start_services, stop_services
from hypercheckout.checkout.admission import Admission
from hypercheckout.checkout.errors import CheckoutError, overloaded
from hypercheckout.checkout.models import PurchaseRequest
from hypercheckout.checkout.validation import parse_purchase
from hypercheckout.localservices import PrivatePostgres, PrivateRedis
from hypercheckout.settings import Settings
from hypercheckout.store import ProductChanges


async def measure(settings: Settings, calls: int, rounds: int) -> dict[str, list[float]]:
    services = await start_services(settings)
    try:
        later = await services.store.create_product(ProductChanges(
            name="later", stock=10, starts_at=datetime.now(UTC) + timedelta(hours=1),
            given=frozenset({"name", "stock", "starts_at"})))
        await services.schedule.load()
        await services.store.reset_product(1, 0)
        services.sold_out.mark(1)
        checkout = services.checkout

        async def sold_out() -> None:
            await checkout.purchase(PurchaseRequest(1, 1, 1))

        async def not_started() -> None:
            await checkout.purchase(PurchaseRequest(1, later.id, 1))

        # What the handler does for a purchase admission control turns away: the 503 it would give without reading
        # the body, against reading it and giving the refusal known from memory, or the 503 when there is none.
        stands = Admission(max_in_flight=1, target=0.005, interval=3600)
        stands.in_flight = 1
        late = f'{{"user_id": 7, "product_id": {later.id}, "quantity": 1}}'.encode()
        plain = b'{"user_id": 7, "product_id": 2147483647, "quantity": 1}'

        # (Admission.refuse then holds the 503 for an interval: a timer, left out here.)
        async def turned_away_unread() -> None:
            stands.enter(1.0)
            raise overloaded()

        async def turned_away(body: bytes) -> None:
            request = parse_purchase(body, max_quantity=10, max_body_bytes=4096, idempotency_key=None,
                                     queue_pass=None)
            stands.enter(1.0)
            checkout.refuse_from_memory(request)
            raise overloaded()

        cases: dict[str, Callable[[], Awaitable[None]]] = {
            "sold out (409 out_of_stock)": sold_out,
            "not started (409 sale_not_started)": not_started,
            "overloaded 503, body unread (the old order)": turned_away_unread,
            "turned away, not started: 409 from memory": lambda: turned_away(late),
            "turned away, nothing known: 503 after reading": lambda: turned_away(plain),
        }
        timings: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(rounds):
            for name, case in cases.items():
                started = time.perf_counter()
                for _ in range(calls):
                    try:
                        await case()
                    except CheckoutError as refusal:
                        refusal.body()  # what the handler serialises
                    else:
                        raise AssertionError(f"{name}: a purchase went through")
                timings[name].append((time.perf_counter() - started) / calls * 1e6)
        return timings
    finally:
        await stop_services(services)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=100_000, help="calls per case and round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hc-rejection-") as tmp:
        Path(tmp).chmod(0o755)  # as root, PostgreSQL runs as another user who must reach its data dir
        postgres, redis = PrivatePostgres(Path(tmp) / "pg", durable=False), PrivateRedis(Path(tmp) / "redis")
        try:
            settings = Settings.from_env({}, database_url=postgres.start(), redis_url=redis.start())
            timings = asyncio.run(measure(settings, args.calls, args.rounds))
        finally:
            redis.stop()
            postgres.stop()
    baseline = statistics.median(next(iter(timings.values())))
    print(f"{args.rounds} interleaved rounds of {args.calls:,} calls each; median µs per call:")
    for name, values in timings.items():
        median = statistics.median(values)
        print(f"  {name:<48} {median:6.2f} µs  ({median / baseline:.2f} of the sold-out refusal; rounds: "
              + ", ".join(f"{v:.2f}" for v in values) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
