"""End to end: a real `hypercheckout up` (private PostgreSQL, Redis, three replicas, nginx), driven only through
nginx, as a buyer would reach it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from hypercheckout.localservices import free_port, tail
from tests.helpers import fire_all, run_cli

UP_TIMEOUT = 90


@dataclass
class RunningCluster:
    process: subprocess.Popen[bytes]
    data_dir: Path
    url: str
    output: Path

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = run_cli(*args, "--data-dir", str(self.data_dir))
        assert done.returncode == 0, done.stderr
        return done

    def status(self) -> dict:  # type: ignore[type-arg]
        return json.loads(self.cli("status", "--json").stdout)

    def processes(self) -> list[psutil.Process]:
        """`up` and everything it started: its descendants, and the PostgreSQL that pg_ctl detached."""
        found = [psutil.Process(self.process.pid)]
        found += found[0].children(recursive=True)
        pid_file = self.data_dir / "postgres" / "postmaster.pid"
        if pid_file.exists():
            postmaster = psutil.Process(int(pid_file.read_text().split()[0]))
            found += [postmaster, *postmaster.children(recursive=True)]
        return found

    def replica_process(self, name: str) -> psutil.Process:
        for proc in self.processes():
            if f"--replica-id {name}" in " ".join(proc.cmdline()):
                return proc
        raise AssertionError(f"no process for {name}")


def start_cluster(data_dir: Path, replicas: int = 3) -> RunningCluster:
    port = free_port()
    output = data_dir.parent / f"up-{port}.out"
    env = {**os.environ, "HC_RATE_LIMIT": "off", "HC_IP_RATE_LIMIT": "off", "HC_LOG_LEVEL": "WARNING"}
    with output.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "hypercheckout", "up", "--data-dir", str(data_dir), "--port", str(port),
             "--replicas", str(replicas)],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )
    deadline = time.monotonic() + UP_TIMEOUT
    while b"HyperCheckout is up" not in output.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"`hypercheckout up` did not come up:\n{tail(output, 40)}")
        time.sleep(0.1)
    return RunningCluster(process, data_dir, f"http://127.0.0.1:{port}", output)


def stop_cluster(cluster: RunningCluster) -> None:
    if cluster.process.poll() is None:
        cluster.process.send_signal(signal.SIGINT)
        cluster.process.wait(60)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    # As root, the cluster's PostgreSQL runs as another user, who must be able to enter the data dir.
    with tempfile.TemporaryDirectory(prefix="hc-cluster-") as tmp:
        os.chmod(tmp, 0o755)
        yield Path(tmp)


@pytest.fixture(scope="module")
def cluster(workdir: Path) -> Iterator[RunningCluster]:
    running = start_cluster(workdir / "shared")
    yield running
    stop_cluster(running)


def purchase(url: str, user: int, qty: int = 1) -> tuple[int, dict]:  # type: ignore[type-arg]
    body = json.dumps({"user_id": user, "product_id": 1, "quantity": qty}).encode()
    request = urllib.request.Request(f"{url}/purchase", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def test_every_replica_gets_a_fair_share_through_nginx(cluster: RunningCluster) -> None:
    cluster.cli("reset", "--stock", "10000")
    shares = Counter()
    for user in range(1, 301):
        status, body = purchase(cluster.url, user)
        assert status == 200, body
        shares[body["replica"]] += 1
    assert set(shares) == {"app-1", "app-2", "app-3"}
    assert all(80 <= n <= 120 for n in shares.values()), shares


def test_two_thousand_concurrent_buyers_through_nginx_keep_the_invariant(cluster: RunningCluster) -> None:
    cluster.cli("reset", "--stock", "1000")
    answers = asyncio.run(fire_all([cluster.url], [(user, 1) for user in range(1, 2001)]))
    statuses = Counter(a.status for a in answers)
    assert set(statuses) <= {200, 409}, statuses
    assert statuses[200] == 1000  # demand is twice the stock: all of it sells, not one unit more
    status = cluster.status()
    product = status["products"][0]
    # What `status` says agrees with what the clients saw.
    assert (product["stock"], product["sold"], status["orders"]) == (0, 1000, 1000)
    assert len({a.body["order_id"] for a in answers if a.status == 200}) == 1000


def test_a_killed_replica_is_routed_around_and_the_cluster_stops_and_restarts_cleanly(workdir: Path) -> None:
    running = start_cluster(workdir / "lifecycle")
    try:
        running.cli("reset", "--stock", "500")
        victim = running.replica_process("app-2")
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        answers = [purchase(running.url, user) for user in range(1, 61)]
        assert {status for status, _ in answers} == {200}  # nothing was in flight on app-2: no errors at all
        assert {body["replica"] for _, body in answers} == {"app-1", "app-3"}
        before = running.status()
        # nginx never re-sent a purchase: one order per 200, no more.
        assert (before["orders"], before["products"][0]["sold"]) == (60, 60)
        started = running.processes()
        assert len(started) > 5
    finally:
        stop_cluster(running)
    assert running.process.returncode == 0, tail(running.output)
    _, alive = psutil.wait_procs(started, timeout=10)
    assert alive == [], f"left running after SIGINT: {alive}"

    again = start_cluster(workdir / "lifecycle")
    try:
        after = again.status()
        assert after["products"] == before["products"] and after["orders"] == 60  # the data survived
        status, body = purchase(again.url, 999)
        assert status == 200 and body["order_id"] not in {b["order_id"] for _, b in answers}
    finally:
        stop_cluster(again)
