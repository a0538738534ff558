"""CPU per request of each kind of process, a purchase against a no-op, in alternating rounds on one cluster.

The issue's measure of a purchase's cost: CPU time of the replicas (and of nginx, PostgreSQL and Redis beside them)
per batched purchase, as a ratio to a no-op request's (GET /healthz). One cluster as `make bench` starts it (nginx,
three replicas, private PostgreSQL and Redis); rounds of wrk at 64 connections, a no-op run then a purchase run
(a new buyer each time, stock plenty), each kind's CPU read from /proc before and after. Unlike py-spy's samples
(flamegraphs.py) nothing else runs in a replica; unlike instructions.py it counts the kernel's share too, and
batches as full as real time makes them. Req/s moves with whatever else the machine does; the per-request CPU of
a kind moves less, and alternating rounds show how much.

    python load-tests/cpu_per_request.py [--rounds 3] [--seconds 6] [--connections 64] [--replicas 3] [--limiter]
                                         [--set HC_NAME=value ...] [--out DIR]

``--limiter``: the limiter on at `make bench`'s settings for it (every purchase decided for its buyer and its
address). ``--set``: any other replica setting (``HC_BATCH_BUSY_WINDOW_MS=2``). Each purchase run also reports
purchases per batch, counted in PostgreSQL (a batch's orders share its transaction's time): a purchase costs a
replica about what a no-op request costs plus its share of its batch's cost, and batches are as full as the
purchases each replica has in flight at once make them (load-tests/README, "Issue 28, sixth round").
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench import PLENTY, wrk  # noqa: E402
from harness import cpu_seconds, private_backends, processes  # noqa: E402

LIMITER = {"HC_RATE_LIMIT": "1/s", "HC_RATE_BURST": "1", "HC_BAN_AFTER": "1000000000",
           "HC_IP_RATE_LIMIT": "100000000/s", "HC_IP_RATE_BURST": "100000000"}
KINDS = ("replicas", "nginx", "postgres", "redis")


def orders_and_batches(database_url: str) -> tuple[int, int]:
    """Orders so far, and the transactions that placed them: a batch's orders carry its transaction's time."""
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*), count(DISTINCT created_at) FROM orders")
            orders, batches = cur.fetchone()
            return int(orders), int(batches)
    finally:
        conn.close()


def setting(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not name.startswith("HC_"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected HC_NAME=value")
    return name, value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--limiter", action="store_true", help="the limiter on, deciding every purchase")
    parser.add_argument("--set", type=setting, action="append", default=[], metavar="HC_NAME=value",
                        help="a replica setting (repeatable)")
    parser.add_argument("--out", type=Path, help="write cpu.md and cpu.json here")
    args = parser.parse_args()
    rows: list[dict[str, object]] = []
    with private_backends() as backends:
        settings = {"HC_STRATEGY": "batched", **(LIMITER if args.limiter else {}), **dict(args.set)}
        with backends.cluster(replicas=args.replicas, **settings) as url:
            backends.cli("reset", "--stock", str(PLENTY))
            redis_port = str(urlsplit(backends.env["HC_REDIS_URL"]).port)
            pids: dict[int, str] = {}
            for pid, kind in processes().items():  # this run's own, whatever else runs on the machine
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if kind == "redis" and redis_port not in command:
                    continue
                if kind == "replicas" and str(backends.workdir) not in command:
                    continue
                pids[pid] = kind
            for round_number in range(1, args.rounds + 1):
                for path in ("no-op", "purchase"):
                    placed = orders_and_batches(backends.env["HC_DATABASE_URL"])
                    before = cpu_seconds(pids)
                    figure = wrk(url, seconds=args.seconds, connections=args.connections,
                                 **({"WRK_MODE": "healthz"} if path == "no-op" else {}))
                    after = cpu_seconds(pids)
                    orders, batches = (now - then for now, then in zip(
                        orders_and_batches(backends.env["HC_DATABASE_URL"]), placed, strict=True))
                    row: dict[str, object] = {"round": round_number, "path": path, "rate": figure.rate,
                                              "non_2xx": figure.non_2xx, "p50_ms": figure.p50_ms,
                                              "p99_ms": figure.p99_ms, "per_batch": orders / batches if batches else 0}
                    row.update({kind: 1e6 * (after[kind] - before[kind]) / figure.requests for kind in KINDS})
                    rows.append(row)
                    print(f"round {round_number} {path:9} {figure.rate:7,.0f} req/s  "
                          + "  ".join(f"{kind} {row[kind]:5.0f}" for kind in KINDS) + "  µs/request"
                          + (f"  {row['per_batch']:.1f} purchases per batch" if batches else ""), flush=True)
    table = report(rows, args)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "cpu.md").write_text(table)
        (args.out / "cpu.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def report(rows: list[dict[str, object]], args: argparse.Namespace) -> str:
    command = "python load-tests/cpu_per_request.py " + shlex.join(sys.argv[1:])
    settings = "".join(f", {name}={value}" for name, value in args.set)
    lines = [f"`{command}`: one cluster (nginx, {args.replicas} replica{'s' if args.replicas > 1 else ''}, batched"
             f"{', limiter on' if args.limiter else ''}{settings}), wrk -c{args.connections} for {args.seconds:g} s "
             "per run, a no-op run then a purchase run each round. CPU µs per request of each kind; a purchase's as "
             "a ratio to the no-op's of the same round; purchases per batch counted in PostgreSQL; latency at wrk.",
             "", "| round | no-op req/s | purchases/s | ÷ | replicas: no-op µs | purchase µs | ÷ | nginx | PostgreSQL "
             "| Redis | per batch | purchase p50 / p99 ms |", "|---:" * 12 + "|"]
    ratios = []
    for number in range(1, args.rounds + 1):
        noop, bought = (next(r for r in rows if r["round"] == number and r["path"] == p) for p in ("no-op", "purchase"))
        ratio = float(bought["replicas"]) / float(noop["replicas"])  # type: ignore[arg-type]
        ratios.append(ratio)
        lines.append(f"| {number} | {noop['rate']:,.0f} | {bought['rate']:,.0f} | "
                     f"{float(bought['rate']) / float(noop['rate']):.2f} | {noop['replicas']:.0f} | "  # type: ignore[arg-type]
                     f"{bought['replicas']:.0f} | {ratio:.2f} | {bought['nginx']:.0f} | {bought['postgres']:.0f} | "
                     f"{bought['redis']:.0f} | {bought['per_batch']:.1f} | {bought['p50_ms']:.1f} / "
                     f"{bought['p99_ms']:.1f} |")
    lines += ["", f"Replicas' CPU per purchase ÷ per no-op: median {statistics.median(ratios):.2f} "
                  f"(from {min(ratios):.2f} to {max(ratios):.2f})."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
