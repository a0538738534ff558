"""`make bench`: raw ceilings with wrk, all in one run, through nginx and three replicas on this machine.

Measures, one after another against the same private PostgreSQL and Redis:

* the no-op ceiling: ``GET /healthz`` (nginx + replicas + the load generator, no domain work);
* successful purchases/s while stock lasts, for each strategy (pessimistic, atomic, batched), limiter off;
* sold-out rejections/s (stock 0: answered from the replicas' sold-out flags);
* rate-limited rejections/s (one buyer over its rate: one Redis script call each);
* latency at about half the batched maximum, paced with wrk's ``delay()`` (wrk2 is not packaged in Debian).

Each figure is measured right after a no-op ceiling run on the same cluster with the same connections, and is
printed as a ratio to that ceiling and to ``pessimistic``: absolute numbers on a shared 2-core machine move from
run to run, and pairing keeps the ratio honest. A sweep repeats the pair (ceiling, batched purchases) at more
connections, since group commit gains with concurrency. After each purchase run the invariant is checked
(``stock + sold == initial`` and one order per 2xx answer). Results: ``load-tests/results/<date>/bench.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import Backends, private_backends  # noqa: E402

WRK_SCRIPT = HERE / "wrk.lua"
STRATEGIES = ("pessimistic", "atomic", "batched")
PLENTY = 50_000_000  # stock that outlasts any run


@dataclass
class Figure:
    name: str
    requests: int
    seconds: float
    non_2xx: int
    socket_errors: int
    p50_ms: float
    p99_ms: float
    note: str = ""
    connections: int = 0
    ceiling: float = 0.0  # the no-op ceiling measured just before, same cluster and connections

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def wrk(url: str, *, seconds: float, connections: int, threads: int = 2, **env: str) -> Figure:
    """Run wrk with wrk.lua; ``env`` sets its WRK_* variables."""
    done = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "-s", str(WRK_SCRIPT),
         url],
        capture_output=True, text=True, env={**os.environ, **env}, check=True,
    )
    match = re.search(r"^WRK_JSON (\{.*\})$", done.stdout, re.MULTILINE)
    if not match:
        raise RuntimeError(f"wrk printed no result:\n{done.stdout}\n{done.stderr}")
    raw = json.loads(match.group(1))
    return Figure(
        name="", requests=raw["requests"], seconds=raw["duration_us"] / 1e6, non_2xx=raw["non_2xx"],
        socket_errors=raw["socket_errors"], p50_ms=raw["p50_us"] / 1000, p99_ms=raw["p99_us"] / 1000,
    )


class Bench:
    def __init__(self, backends: Backends, *, seconds: float, connections: int) -> None:
        self.backends = backends
        self.cli = backends.cli
        self.cluster = backends.cluster
        self.seconds = seconds
        self.connections = connections
        self.figures: list[Figure] = []

    def record(self, name: str, figure: Figure, *, connections: int, ceiling: float, note: str = "") -> Figure:
        figure.name, figure.note, figure.connections, figure.ceiling = name, note, connections, ceiling
        self.figures.append(figure)
        print(f"  {name:<40} {figure.rate:>9,.0f} req/s  ({figure.rate / ceiling:4.2f} of {ceiling:,.0f})  "
              f"p50 {figure.p50_ms:6.2f} ms  p99 {figure.p99_ms:6.2f} ms  non-2xx {figure.non_2xx:,}", flush=True)
        return figure

    def paired(self, name: str, url: str, *, connections: int | None = None, **env: str) -> Figure:
        """The no-op ceiling, then this run, back to back on the same cluster."""
        connections = connections or self.connections
        ceiling = wrk(url, seconds=self.seconds, connections=connections, WRK_MODE="healthz").rate
        figure = wrk(url, seconds=self.seconds, connections=connections, **env)
        return self.record(name, figure, connections=connections, ceiling=ceiling)

    def run(self) -> None:
        print(f"Each run: wrk -t2 -c{self.connections} for {self.seconds:g} s, through nginx to 3 replicas, right "
              "after a no-op ceiling run on the same cluster", flush=True)
        with self.cluster(HC_STRATEGY="batched") as url:
            self.cli("reset", "--stock", "0")
            wrk(url, seconds=1, connections=4)  # every replica sees the product at 0 once
            soldout = self.paired("sold-out rejections (409)", url)
            assert soldout.non_2xx == soldout.requests, "a sold-out product sold something"
            self.cli("reset", "--stock", str(PLENTY))
            batched = self.paired("purchases (batched)", url)
            self.check_invariant(batched)
            self.half_rate_latency(url, batched)
            for connections in (self.connections * 2, self.connections * 4):
                self.cli("reset", "--stock", str(PLENTY))
                self.check_invariant(self.paired("purchases (batched)", url, connections=connections),
                                     connections)
        for strategy in ("pessimistic", "atomic"):
            with self.cluster(HC_STRATEGY=strategy) as url:
                self.cli("reset", "--stock", str(PLENTY))
                self.check_invariant(self.paired(f"purchases ({strategy})", url))
        with self.cluster(HC_STRATEGY="batched", HC_RATE_LIMIT="1/s", HC_RATE_BURST="1",
                          HC_BAN_AFTER="1000000000") as url:
            self.cli("reset", "--stock", str(PLENTY))
            limited = self.paired("rate-limited rejections (429)", url, WRK_USER="7")
            assert limited.requests - limited.non_2xx <= self.seconds + 2, "the limiter let too much through"

    def half_rate_latency(self, url: str, batched: Figure) -> None:
        """Latency at about half the maximum: each connection waits before its next request (wrk's delay())."""
        target = batched.rate / 2
        connections = 32
        delay_ms = max(0.0, connections / target * 1000 - 2)  # less the expected answer time
        self.cli("reset", "--stock", str(PLENTY))
        figure = wrk(url, seconds=self.seconds, connections=connections, WRK_DELAY_MS=f"{delay_ms:.2f}")
        self.record("purchases (batched) at ~half the max", figure, connections=connections,
                    ceiling=batched.ceiling,
                    note=f"target {target:,.0f}/s: {connections} connections, each pausing {delay_ms:.1f} ms")
        self.check_invariant(figure, connections)

    def check_invariant(self, figure: Figure, connections: int | None = None) -> None:
        status = self.backends.status()
        product = status["products"][0]
        assert product["stock"] + product["sold"] == product["initial_stock"], product
        ok = figure.requests - figure.non_2xx
        # Requests in flight when wrk stops are answered after it stopped counting: at most one per connection.
        assert 0 <= status["orders"] - ok <= (connections or self.connections), (status["orders"], ok)
        assert figure.non_2xx == 0, f"{figure.non_2xx} purchases were refused while stock lasted"

    def table(self) -> str:
        pessimistic = next(f.rate for f in self.figures if f.name == "purchases (pessimistic)")
        lines = ["| run | connections | req/s | ceiling req/s | vs ceiling | vs pessimistic | p50 ms | p99 ms | "
                 "non-2xx | note |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for f in self.figures:
            lines.append(f"| {f.name} | {f.connections} | {f.rate:,.0f} | {f.ceiling:,.0f} | "
                         f"{f.rate / f.ceiling:.2f} | {f.rate / pessimistic:.2f} | {f.p50_ms:.2f} | {f.p99_ms:.2f} | "
                         f"{f.non_2xx:,} | {f.note} |")
        return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10, help="length of each wrk run (default 10)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / datetime.now().strftime("%Y-%m-%d"),
                        help="folder for bench.md and bench.json")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is missing: apt-get install wrk (make bench installs it)", file=sys.stderr)
        return 2
    with private_backends() as backends:
        bench = Bench(backends, seconds=args.seconds, connections=args.connections)
        bench.run()
    table = bench.table()
    print("\n" + table)
    args.out.mkdir(parents=True, exist_ok=True)
    started = datetime.now().isoformat(timespec="seconds")
    machine = f"{os.cpu_count()} cores, {os.uname().machine}"
    (args.out / "bench.md").write_text(
        f"# make bench — {started}\n\nMachine: {machine}; wrk -t2 -c{args.connections}, {args.seconds:g} s per run, "
        f"through nginx to 3 replicas, all on this machine.\n\n{table}\n")
    (args.out / "bench.json").write_text(json.dumps(
        {"started": started, "machine": machine, "seconds": args.seconds, "connections": args.connections,
         "figures": [{**asdict(f), "rate": f.rate} for f in bench.figures]}, indent=2) + "\n")
    print(f"\nwritten: {args.out / 'bench.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
