"""End to end: a real `hypercheckout up` (private PostgreSQL, Redis, three replicas, nginx), driven only through
nginx, as a buyer would reach it."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from hypercheckout.localservices import tail
from tests.clusters import RunningCluster, cluster_workdir, purchase, start_cluster, stop_cluster
from tests.helpers import fire_all


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with cluster_workdir() as path:
        yield path


@pytest.fixture(scope="module")
def cluster(workdir: Path) -> Iterator[RunningCluster]:
    running = start_cluster(workdir / "shared")
    yield running
    stop_cluster(running)


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
