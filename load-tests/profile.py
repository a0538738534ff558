"""Profile a running cluster's replicas under wrk load: CPU time per request of each process kind (replicas,
nginx, PostgreSQL, Redis), and where one replica spends it (py-spy, self and inclusive).

    python load-tests/profile.py --url http://127.0.0.1:8080 --mode purchase   # or healthz, or soldout/limited
                                                                               # (set those states up first)

Works on Linux (reads /proc); py-spy needs root or ptrace permission. Used to find what the changes recorded in
load-tests/README.md removed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench import wrk  # noqa: E402
from harness import PY_SPY, cpu_seconds, processes  # noqa: E402


def redis_calls(url: str | None) -> dict[str, int]:
    """Commands Redis has executed so far, by name (its own count, INFO commandstats)."""
    if not url:
        return {}
    import redis

    stats = redis.Redis.from_url(url).info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


def summarise(raw: Path, rows: int) -> str:
    """py-spy's raw output (one collapsed stack and its count per line) → the top frames, self and inclusive."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = stack.split(";")
        samples += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    out = [f"{samples} samples", "self:"]
    out += [f"  {100 * n / samples:5.1f}%  {frame}" for frame, n in own.most_common(rows)]
    out += ["inclusive:"]
    out += [f"  {100 * n / samples:5.1f}%  {frame}" for frame, n in inclusive.most_common(rows * 2)]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="nginx of the running cluster")
    parser.add_argument("--mode", choices=["healthz", "purchase", "limited"], default="purchase",
                        help="what wrk sends: GET /healthz, purchases by new buyers, or one buyer (429s)")
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--redis-url", help="also count the Redis commands per request (INFO commandstats)")
    args = parser.parse_args()
    env = {"healthz": {"WRK_MODE": "healthz"}, "purchase": {}, "limited": {"WRK_USER": "7"}}[args.mode]
    if PY_SPY is None:
        print("py-spy is missing: make install-load", file=sys.stderr)
        return 2
    pids = processes()
    replica = next((pid for pid, kind in sorted(pids.items()) if kind == "replicas"), None)
    if replica is None:
        print("no `hypercheckout serve` process found", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "profile.raw"
        spy = threading.Thread(target=subprocess.run, args=([
            PY_SPY, "record", "--pid", str(replica), "--duration", str(int(args.seconds) - 2), "--rate", "250",
            "--format", "raw", "-o", str(raw), "--nonblocking"],), kwargs={"capture_output": True})
        before = cpu_seconds(pids)
        redis_before = redis_calls(args.redis_url)
        spy.start()
        figure = wrk(args.url, seconds=args.seconds, connections=args.connections, **env)
        after = cpu_seconds(pids)
        redis_after = redis_calls(args.redis_url)
        spy.join()
        print(f"{args.mode}: {figure.rate:,.0f} req/s, p50 {figure.p50_ms:.2f} ms, p99 {figure.p99_ms:.2f} ms, "
              f"non-2xx {figure.non_2xx:,}")
        print("CPU per request:")
        for kind in sorted(after):
            used = after[kind] - before[kind]
            print(f"  {kind:<9} {used:6.2f} cpu-s  {1e6 * used / max(1, figure.requests):6.0f} us")
        if args.redis_url:
            print("Redis commands per request:")
            for command in sorted(redis_after):
                calls = redis_after[command] - redis_before.get(command, 0)
                if calls:
                    print(f"  {command:<12} {calls / max(1, figure.requests):.3f}")
        print(f"\npy-spy on one replica (pid {replica}):")
        print(summarise(raw, args.rows) if raw.exists() else "py-spy wrote nothing (permissions?)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
