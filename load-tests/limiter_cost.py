"""What one rate-limit decision costs a replica, without HTTP: ``RateLimiter.check`` called by concurrent tasks
on one Redis server and on a Redis Cluster (three masters, three replicas), both private and started for the run,
in interleaved rounds. Prints decisions per second, the replica's own CPU per decision (process time) and Redis's
(the script calls' ``usec`` in ``INFO commandstats``, summed over the masters), each as a ratio to one Redis in
the same run: the bench (`make bench`) measures the whole path through nginx, this
isolates what the client side of the cluster costs.

    python load-tests/limiter_cost.py [--decisions 20000] [--concurrency 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from hypercheckout.limiter import RateLimiter  # noqa: E402
from hypercheckout.localservices import PrivateRedis, PrivateRedisCluster  # noqa: E402
from hypercheckout.redisclient import connect  # noqa: E402


async def one_round(url: str, decisions: int, concurrency: int, first_user: int) -> tuple[float, float]:
    """(decisions per second, CPU µs of this process per decision) for ``decisions`` new buyers from one address
    (both identities decided each time, nothing refused)."""
    client = connect(url, timeout=1.0, max_connections=concurrency)
    limiter = RateLimiter(client, prefix="bench:", user_rate=1.0, user_burst=1, ip_rate=1e8, ip_burst=10**8,
                          ban_after=10**9, ban_window=60, ban_seconds=60, local_deny_seconds=0)
    users = iter(range(first_user, first_user + decisions))
    await limiter.check(first_user - 1, "10.0.0.1")  # connect and load the scripts outside the timing

    async def worker() -> None:
        for user in users:
            decision = await limiter.check(user, "10.0.0.1")
            assert decision.allowed and not decision.failed_open, decision

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    await client.aclose()
    return decisions / wall, cpu / decisions * 1e6


def script_usec(ports: list[int], password: str) -> float:
    """Microseconds the servers on ``ports`` spent in script calls so far (a replica node spends none)."""
    total = 0.0
    for port in ports:
        client = redis.Redis(host="127.0.0.1", port=port, password=password)
        try:
            stats = client.info("commandstats")
        finally:
            client.close()
        total += sum(float(stats.get(name, {}).get("usec", 0)) for name in ("cmdstat_evalsha", "cmdstat_eval"))
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decisions", type=int, default=20_000, help="decisions per backend and round")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hc-limiter-cost-") as tmp:
        server, cluster = PrivateRedis(Path(tmp) / "redis"), PrivateRedisCluster(Path(tmp) / "cluster")
        try:
            urls = {"one Redis": server.start(), "Redis Cluster": cluster.start()}
            ports = {"one Redis": [server.port], "Redis Cluster": [n.port for n in cluster.nodes]}
            found: dict[str, list[tuple[float, float]]] = {name: [] for name in urls}
            for n in range(args.rounds):
                for name, url in urls.items():
                    first = 1_000_000 * (n + 1) + (0 if name == "one Redis" else 500_000)
                    found[name].append(asyncio.run(one_round(url, args.decisions, args.concurrency, first)))
            decided = args.rounds * (args.decisions + 1)  # each round's first decision included
            redis_us = {name: script_usec(ports[name], server.password if name == "one Redis" else cluster.password)
                        / decided for name in urls}
        finally:
            cluster.stop()
            server.stop()
    base_rate = statistics.median(r for r, _ in found["one Redis"])
    base_cpu = statistics.median(c for _, c in found["one Redis"])
    print(f"{args.rounds} interleaved rounds of {args.decisions:,} decisions, {args.concurrency} at once "
          "(buyer and address each time); medians:")
    for name, rows in found.items():
        rate, cpu = statistics.median(r for r, _ in rows), statistics.median(c for _, c in rows)
        print(f"  {name:<14} {rate:8,.0f} decisions/s ({rate / base_rate:.2f} of one Redis)   "
              f"client CPU {cpu:6.1f} µs/decision ({cpu / base_cpu:.2f})   "
              f"Redis {redis_us[name]:5.1f} µs/decision ({redis_us[name] / redis_us['one Redis']:.2f})   rounds: "
              + ", ".join(f"{r:,.0f}/s {c:.0f} µs" for r, c in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
