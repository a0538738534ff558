"""What a refusal costs inside a replica, without HTTP: the purchase use case (``Checkout.purchase``) called in a
loop for a sold-out product and for a sale that has not started, in interleaved rounds, against private PostgreSQL
and Redis servers started for the run. Neither refusal may touch PostgreSQL, and the second must cost about what
the first does (`make bench` measures both through nginx; this isolates the domain code from the noise).

    python load-tests/rejection_cost.py [--calls 100000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypercheckout.app import start_services, stop_services
from hypercheckout.checkout.errors import CheckoutError
from hypercheckout.checkout.models import PurchaseRequest
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
        cases = {"sold out (409 out_of_stock)": PurchaseRequest(1, 1, 1),
                 "not started (409 sale_not_started)": PurchaseRequest(1, later.id, 1)}
        timings: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(rounds):
            for name, request in cases.items():
                started = time.perf_counter()
                for _ in range(calls):
                    try:
                        await services.checkout.purchase(request)
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
        print(f"  {name:<36} {median:6.2f} µs  ({median / baseline:.2f} of the sold-out refusal; rounds: "
              + ", ".join(f"{v:.2f}" for v in values) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
