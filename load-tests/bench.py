"""`make bench`: raw ceilings with wrk, all in one run, through nginx and three replicas on this machine.

Measures, one after another against the same private PostgreSQL and Redis:

* the no-op ceiling: ``GET /healthz`` (nginx + replicas + the load generator, no domain work);
* successful purchases/s while stock lasts, for each strategy (pessimistic, atomic, batched), limiter off;
* sold-out rejections/s (stock 0: answered from the replicas' sold-out flags);
* rate-limited rejections/s (one buyer over its rate: one Redis script call each);
* latency at about half the batched maximum, paced with wrk's ``delay()`` (wrk2 is not packaged in Debian).

Every figure is printed as a ratio to the ceiling and to ``pessimistic`` measured in the same run, since absolute
numbers on a shared 2-core machine move from run to run. After each purchase run the invariant is checked
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

    def record(self, name: str, figure: Figure, note: str = "") -> Figure:
        figure.name, figure.note = name, note
        self.figures.append(figure)
        print(f"  {name:<38} {figure.rate:>9,.0f} req/s   p50 {figure.p50_ms:6.2f} ms   p99 {figure.p99_ms:6.2f} ms"
              f"   non-2xx {figure.non_2xx:,}", flush=True)
        return figure

    def run(self) -> None:
        print(f"Each run: wrk -t2 -c{self.connections} for {self.seconds:g} s, through nginx to 3 replicas",
              flush=True)
        with self.cluster(HC_STRATEGY="batched") as url:
            self.cli("reset", "--stock", "0")
            self.record("no-op ceiling (GET /healthz)", wrk(url, seconds=self.seconds,
                                                            connections=self.connections, WRK_MODE="healthz"))
            self.cli("reset", "--stock", "0")
            wrk(url, seconds=1, connections=4)  # every replica sees the product at 0 once
            soldout = self.record("sold-out rejections (409)", wrk(url, seconds=self.seconds,
                                                                    connections=self.connections))
            assert soldout.non_2xx == soldout.requests, "a sold-out product sold something"
        for strategy in STRATEGIES:
            with self.cluster(HC_STRATEGY=strategy) as url:
                self.cli("reset", "--stock", str(PLENTY))
                figure = self.record(f"purchases ({strategy})", wrk(url, seconds=self.seconds,
                                                                    connections=self.connections))
                self.check_invariant(figure)
                if strategy == "batched":
                    self.half_rate_latency(url, figure.rate)
        with self.cluster(HC_STRATEGY="batched", HC_RATE_LIMIT="1/s", HC_RATE_BURST="1",
                          HC_BAN_AFTER="1000000000") as url:
            self.cli("reset", "--stock", str(PLENTY))
            limited = self.record("rate-limited rejections (429)", wrk(url, seconds=self.seconds,
                                                                        connections=self.connections, WRK_USER="7"))
            assert limited.requests - limited.non_2xx <= self.seconds + 2, "the limiter let too much through"

    def half_rate_latency(self, url: str, max_rate: float) -> None:
        """Latency at about half the maximum: each connection waits before its next request (wrk's delay())."""
        target = max_rate / 2
        connections = 32
        delay_ms = max(0.0, connections / target * 1000 - 2)  # less the expected answer time
        self.cli("reset", "--stock", str(PLENTY))
        figure = wrk(url, seconds=self.seconds, connections=connections, WRK_DELAY_MS=f"{delay_ms:.2f}")
        self.record("purchases (batched) at ~half the max", figure,
                    note=f"target {target:,.0f}/s, {connections} connections pacing {delay_ms:.1f} ms")
        self.check_invariant(figure)

    def check_invariant(self, figure: Figure) -> None:
        status = self.backends.status()
        product = status["products"][0]
        assert product["stock"] + product["sold"] == product["initial_stock"], product
        ok = figure.requests - figure.non_2xx
        # Requests in flight when wrk stops are answered after it stopped counting: at most one per connection.
        assert 0 <= status["orders"] - ok <= self.connections, (status["orders"], ok)
        assert figure.non_2xx == 0, f"{figure.non_2xx} purchases were refused while stock lasted"

    def table(self) -> str:
        ceiling = next(f.rate for f in self.figures if f.name.startswith("no-op"))
        pessimistic = next(f.rate for f in self.figures if f.name == "purchases (pessimistic)")
        lines = ["| run | req/s | vs ceiling | vs pessimistic | p50 ms | p99 ms | non-2xx | note |",
                 "|---|---:|---:|---:|---:|---:|---:|---|"]
        for f in self.figures:
            lines.append(f"| {f.name} | {f.rate:,.0f} | {f.rate / ceiling:.2f} | {f.rate / pessimistic:.2f} | "
                         f"{f.p50_ms:.2f} | {f.p99_ms:.2f} | {f.non_2xx:,} | {f.note} |")
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
