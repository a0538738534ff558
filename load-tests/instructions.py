"""Instructions per request of one replica, path by path, counted by valgrind's callgrind.

Requests a second and CPU time move with whatever else runs on this shared 2-core machine (pairs of `make bench`
runs differ by about 0.05 of their ratios); the instructions a replica executes to answer a request do not. So a
change's cost shows here in one run, beside the others' on the same code: each path's count is printed as a ratio
to a no-op's (GET /healthz), as `make bench` prints its req/s.

    python load-tests/instructions.py [--requests 600] [--connections 8] [--out DIR]

Two replicas run under callgrind against private PostgreSQL and Redis servers: one with the limiter off (the
no-op, sold-out, not-started and purchase paths) and one with it on at its defaults (a purchase the limiter
decides, and one buyer hammering until refused: 429s; at 1/s a buyer, so that a replica slowed by callgrind still
refuses). For each path: warm-up requests until the answer is the
path's, counters zeroed, ``--requests`` requests over ``--connections`` keep-alive connections, counters dumped.
A replica's background chores (sweeper, hit counter, schedule) run meanwhile; what they execute in a second of
doing nothing is measured first and taken off in proportion to each path's duration. Periods that are spread over
requests (admission control's, how long a hammering buyer is refused without asking Redis, the sold-out recheck)
are scaled to callgrind's pace. Purchases are batched, and
under callgrind a replica is about fifty times slower, so batches are fuller than in real time: the purchase
path's count is a lower bound of its real cost.

Needs valgrind (`apt-get install valgrind`). Takes about three minutes.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import Backends, private_backends  # noqa: E402

from hypercheckout.processes import PortPicker, stop_process, tail  # noqa: E402

PLENTY = 100_000_000
IDLE_SECONDS = 5.0
STARTUP_TIMEOUT = 300.0  # a replica's imports and migrations check, fifty times slower
SLOWDOWN = 50  # about how much slower a replica runs under callgrind, here


@dataclass
class Case:
    name: str
    replica: str  # "off" or "on": which replica (limiter off or on) it is sent to
    method: str
    url: str
    body: Callable[[int], bytes | None]  # request number → body
    expected: int  # the status most answers have once warm
    setup: Callable[[Backends], None] = field(default=lambda backends: None)


@dataclass
class Count:
    name: str
    requests: int
    instructions: float  # per request, the replica's background taken off
    statuses: Counter[str]
    seconds: float


def purchase(product: int, fixed_user: int | None = None) -> Callable[[int], bytes]:
    def body(n: int) -> bytes:
        return json.dumps({"user_id": fixed_user or n, "product_id": product, "quantity": 1}).encode()
    return body


class Replica:
    """`hypercheckout serve` under callgrind, its counters read with callgrind_control."""

    def __init__(self, name: str, port: int, env: dict[str, str], workdir: Path) -> None:
        self.name, self.port, self.workdir = name, port, workdir
        self.log = workdir / f"{name}.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={workdir}/callgrind.{name}.%p",
                 sys.executable, "-m", "hypercheckout", "serve", "--port", str(port), "--replica-id", name],
                env={**env, "HC_PORT": str(port), "HC_HOST": "127.0.0.1", "HC_REPLICA_ID": name},
                stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"replica {self.name} did not start under callgrind:\n{tail(self.log)}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                connection.request("GET", "/healthz")
                if connection.getresponse().status == 200:
                    return
            except OSError:
                time.sleep(1)

    def _control(self, option: str) -> None:
        subprocess.run(["callgrind_control", option, str(self.process.pid)], capture_output=True, check=True)

    def zero(self) -> None:
        self._control("-z")

    def dumped(self) -> int:
        """Dump the counters; the instructions executed since they were last zeroed."""
        before = set(self.workdir.glob(f"callgrind.{self.name}.*"))
        self._control("-d")
        new = max(set(self.workdir.glob(f"callgrind.{self.name}.*")) - before, key=lambda p: p.stat().st_mtime)
        for line in new.read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                new.unlink()
                return int(line.split()[1])
        raise RuntimeError(f"no totals in {new}")

    def stop(self) -> None:
        stop_process(self.process, grace=120)  # a replica under callgrind drains fifty times slower


def send(port: int, path: Case, requests: int, connections: int, first: int) -> Counter[str]:
    """``requests`` requests of ``path`` over ``connections`` keep-alive connections; the answers by status."""
    statuses: Counter[str] = Counter()
    lock = threading.Lock()
    numbers = iter(range(first, first + requests))

    def worker() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                n = next(numbers, None)
            if n is None:
                break
            body = path.body(n)
            connection.request(path.method, path.url, body=body,
                               headers={"Content-Type": "application/json"} if body is not None else {})
            response = connection.getresponse()
            answer = response.read()
            status = str(response.status)
            if response.status >= 400:
                try:
                    status += " " + json.loads(answer)["error"]["code"]
                except (ValueError, KeyError, TypeError):
                    pass
            with lock:
                statuses[status] += 1
        connection.close()

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def measure(replica: Replica, path: Case, idle_per_second: float, requests: int, connections: int,
            first: int) -> Count:
    # Warm: the answer is the path's (a product created or a stock reset reaches the replica's memory by an
    # announced change; the limiter's 429s come after the buyer's burst).
    for _ in range(60):
        warm = send(replica.port, path, 4 * connections, connections, first)
        first += 4 * connections
        if warm.most_common(1)[0][0].startswith(str(path.expected)):
            break
    else:
        raise RuntimeError(f"{path.name}: answers {dict(warm)} after warm-up, not {path.expected}")
    replica.zero()
    started = time.monotonic()
    statuses = send(replica.port, path, requests, connections, first)
    seconds = time.monotonic() - started
    total = replica.dumped()
    return Count(path.name, requests, (total - idle_per_second * seconds) / requests, statuses, seconds)


def paths() -> list[Case]:
    def sold_out(backends: Backends) -> None:
        backends.cli("reset", "--stock", "0")

    def on_sale(backends: Backends) -> None:
        backends.cli("reset", "--stock", str(PLENTY))

    def later(backends: Backends) -> None:
        backends.cli("product", "create", "--name", "Later", "--stock", "10", "--starts-at", "+86400")

    return [
        Case("no-op (GET /healthz)", "off", "GET", "/healthz", lambda n: None, 200),
        Case("sold-out refusal (409)", "off", "POST", "/purchase", purchase(1), 409, sold_out),
        Case("not-started refusal (409)", "off", "POST", "/purchase", purchase(2), 409, later),
        Case("purchase (batched)", "off", "POST", "/purchase", purchase(1), 200, on_sale),
        Case("purchase, limiter deciding", "on", "POST", "/purchase", purchase(1), 200),
        Case("rate-limited refusal (429)", "on", "POST", "/purchase", purchase(1, fixed_user=7), 429),
    ]


@contextmanager
def replicas(backends: Backends, workdir: Path) -> Iterator[dict[str, Replica]]:
    ports = PortPicker()
    # What a replica does once per so many milliseconds is spread over fifty times fewer requests under callgrind:
    # those periods are scaled to its pace, as are admission control's (at 5 ms a replica fifty times slower would
    # see a standing queue in a few connections and answer 503 overloaded). The rest of what runs on a clock is a
    # background chore, measured idle and taken off.
    scaled = {name: str(int(milliseconds * SLOWDOWN)) for name, milliseconds in (
        ("HC_ADMISSION_TARGET_MS", 5), ("HC_ADMISSION_INTERVAL_MS", 100),
        ("HC_LOCAL_DENY_MS", 250),  # how long a replica refuses a hammering buyer itself before asking Redis again
        ("HC_SOLDOUT_RECHECK_MS", 500),  # how often it re-reads the stock of a product it believes sold out
    )}
    base = {**os.environ, **backends.env, "HC_LOG_LEVEL": "WARNING", **scaled}
    started = {
        "off": Replica("limiter-off", ports.pick(), {**base, "HC_RATE_LIMIT": "off", "HC_IP_RATE_LIMIT": "off"},
                       workdir),
        # The buyer limit at 1/s: at its default of 20/s a buyer's tokens come back as fast as a replica fifty
        # times slower answers. No address limit: every request comes from 127.0.0.1.
        "on": Replica("limiter-on", ports.pick(), {**base, "HC_RATE_LIMIT": "1/s", "HC_IP_RATE_LIMIT": "off"},
                      workdir),
    }
    try:
        for replica in started.values():
            replica.wait_ready()
        yield started
    finally:
        for replica in started.values():
            replica.stop()


def report(counts: list[Count], command: str, requests: int, connections: int) -> str:
    base = counts[0].instructions
    lines = [
        "# Instructions per request of one replica, by path",
        "",
        f"Made by `{command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: one replica (limiter off, or on at 1/s a "
        f"buyer with the address limit off) under valgrind's callgrind, {requests} requests per path over "
        f"{connections} keep-alive connections, each after warm-up; the replica's background chores taken off. "
        "Counts do not depend on the machine's load; the ratio is to the no-op's.",
        "",
        "| path | k instructions / request | ÷ no-op | answers |",
        "|---|---:|---:|---|",
    ]
    for count in counts:
        answers = ", ".join(f"{status}: {n}" for status, n in count.statuses.most_common())
        lines.append(f"| {count.name} | {count.instructions / 1000:,.0f} | {count.instructions / base:.2f} | "
                     f"{answers} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=600, help="requests measured per path")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--out", type=Path, help="write instructions.md and instructions.json here")
    args = parser.parse_args()
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        print("valgrind is missing: apt-get install valgrind", file=sys.stderr)
        return 2
    command = "python load-tests/instructions.py " + " ".join(sys.argv[1:])
    counts: list[Count] = []
    with private_backends() as backends, tempfile.TemporaryDirectory(prefix="hc-callgrind-") as tmp:
        backends.cli("migrate")
        backends.cli("reset", "--stock", str(PLENTY))
        with replicas(backends, Path(tmp)) as running:
            idle: dict[str, float] = {}
            for key, replica in running.items():
                replica.zero()
                time.sleep(IDLE_SECONDS)
                idle[key] = replica.dumped() / IDLE_SECONDS
                print(f"{replica.name}: {idle[key] / 1000:,.0f} k instructions a second when idle", flush=True)
            first = 1
            for path in paths():
                path.setup(backends)
                count = measure(running[path.replica], path, idle[path.replica], args.requests, args.connections,
                                first)
                first += 1_000_000
                counts.append(count)
                print(f"  {count.name:<30} {count.instructions / 1000:8,.0f} k instructions/request  "
                      f"({count.instructions / counts[0].instructions:.2f} of the no-op)  "
                      f"{dict(count.statuses)}  {count.seconds:.0f} s", flush=True)
    table = report(counts, command, args.requests, args.connections)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "instructions.md").write_text(table)
        (args.out / "instructions.json").write_text(json.dumps(
            [{"path": c.name, "requests": c.requests, "instructions_per_request": round(c.instructions),
              "statuses": dict(c.statuses), "seconds": round(c.seconds, 1)} for c in counts], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
