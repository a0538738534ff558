"""`hypercheckout up --redis-cluster`: the whole system on a Redis Cluster of three masters with a replica each.

Through nginx: limits and bans decided on the cluster and listed and lifted with the CLI, sold-out flags cleared
by a message over the cluster's pub/sub; then a master is killed (SIGKILL) while buyers buy: no purchase fails,
the limiter fails open for the identities whose keys that master held while its replica takes over, and limits
them again once it has. (The limiter's own tests run on a cluster too: tests/test_limiter.py.)"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from urllib.request import urlopen

import psutil
import pytest
from redis.crc import key_slot

from hypercheckout.cluster import CLUSTER_ENV, read_env_file
from hypercheckout.limiter_keys import limit_key
from hypercheckout.localservices import PrivateRedisCluster
from hypercheckout.processes import wait_until
from tests.clusters import RunningCluster, cluster_workdir, purchase, start_cluster, stop_cluster
from tests.test_faults import Load, verify

PREFIX = "hc:"  # HC_REDIS_PREFIX's default, which `up` keeps


@pytest.fixture(scope="module")
def cluster() -> Iterator[RunningCluster]:
    with cluster_workdir() as workdir:
        running = start_cluster(
            workdir / "on-redis-cluster", redis_cluster=True,
            HC_RATE_LIMIT="5/s", HC_RATE_BURST="5", HC_BAN_AFTER="4", HC_BAN_SECONDS="60",
            # Every attempt here comes from 127.0.0.1 through nginx: one address, so its limit is set out of the
            # way, but it is still decided on the cluster with each attempt (a second identity, in another slot).
            HC_IP_RATE_LIMIT="100000/s", HC_IP_RATE_BURST="100000",
            # Only the announcement over pub/sub can clear a sold-out flag here, not the PostgreSQL recheck.
            HC_SOLDOUT_RECHECK_MS="600000",
        )
        try:
            yield running
        finally:
            stop_cluster(running)


def redis_nodes(cluster: RunningCluster) -> PrivateRedisCluster:
    return PrivateRedisCluster(cluster.data_dir / "redis-cluster")  # the ports and password `up` wrote


def fail_opens(cluster: RunningCluster) -> int:
    """hypercheckout_redis_fail_open summed over the replicas, each asked directly (metrics stay off nginx)."""
    total = 0
    for port in read_env_file(cluster.data_dir / CLUSTER_ENV)["HC_REPLICA_PORTS"].split(","):
        with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            for line in response.read().decode().splitlines():
                if line.startswith("hypercheckout_redis_fail_open"):
                    total += int(float(line.split()[-1]))
    return total


def test_limits_bans_and_sold_out_signals_work_through_the_cluster(cluster: RunningCluster) -> None:
    assert "redis+cluster://" in read_env_file(cluster.data_dir / CLUSTER_ENV)["HC_REDIS_URL"]
    cluster.cli("reset", "--stock", "1000")
    codes: list[int | str] = []
    while "banned" not in codes and len(codes) < 60:  # replicas answer some refusals from memory: a few more
        status, body = purchase(cluster.url, 900)
        codes.append(status if status == 200 else body["error"]["code"])
    assert codes[:5] == [200] * 5 and codes[5] == "rate_limited" and codes[-1] == "banned", codes
    assert set(codes[5:-1]) == {"rate_limited"}, codes
    bans = cluster.status()["bans"]
    assert [(b["kind"], b["value"]) for b in bans] == [("user", "900")]
    cluster.cli("unban", "--user", "900")
    wait_until(lambda: purchase(cluster.url, 900)[0] == 200, timeout=2, what="the unbanned buyer to buy")
    assert cluster.status()["bans"] == []

    seconds = restock_is_seen_by_every_replica(cluster)
    print(f"\nrestock seen through pub/sub on the cluster within {seconds:.2f} s")


def restock_is_seen_by_every_replica(cluster: RunningCluster) -> float:
    """Sell product 1 out on every replica (nginx goes round the three), restock it from the CLI: with the
    PostgreSQL recheck ten minutes away, only the message over the cluster's pub/sub can clear the flags.
    Returns the seconds until the first purchase went through again."""
    cluster.cli("reset", "--stock", "3")
    assert [purchase(cluster.url, 901 + n)[0] for n in range(3)] == [200] * 3
    refused = [purchase(cluster.url, 910 + n) for n in range(6)]
    assert {(s, b["error"]["code"]) for s, b in refused} == {(409, "out_of_stock")}
    cluster.cli("reset", "--stock", "3")
    started = time.monotonic()
    wait_until(lambda: purchase(cluster.url, 920)[0] == 200, timeout=1, what="the restock to be seen")
    seconds = time.monotonic() - started
    assert [purchase(cluster.url, 921 + n)[0] for n in range(2)] == [200, 200]  # the next two replicas
    return seconds


def kill_port(port: int) -> None:
    # redis-server names itself "redis-server 127.0.0.1:PORT [cluster]" once started.
    found = [proc for proc in psutil.process_iter(["name", "cmdline"])
             if proc.info["name"] == "redis-server" and f"127.0.0.1:{port} " in " ".join(proc.info["cmdline"] or [])]
    assert len(found) == 1, f"no redis-server on port {port}"
    server = found[0]
    server.send_signal(signal.SIGKILL)
    # Its parent is `up`, which reaps it only at stop: dead means gone or a zombie.
    wait_until(lambda: not server.is_running() or server.status() == psutil.STATUS_ZOMBIE, timeout=10,
               what=f"redis-server on port {port} to die")


def test_a_master_killed_mid_load_fails_the_limiter_open_until_its_replica_takes_over(
    cluster: RunningCluster,
) -> None:
    from tests.test_faults import INITIAL

    nodes = redis_nodes(cluster)
    hammered = 950  # a buyer over its rate all along, whose keys live on the master that is killed
    slot = key_slot(limit_key(PREFIX, "tat", f"user:{hammered}").encode())
    master = nodes.master_of_slot(slot)
    assert master is not None
    cluster.cli("reset", "--stock", str(INITIAL))
    cluster.cli("unban", "--all")
    # The hammered buyer buys a product of its own: product 1's orders are the load's, each with its key.
    other = json.loads(cluster.cli("product", "create", "--name", "Hammered", "--stock", "100000", "--json").stdout)
    load = Load(cluster.url)
    load.start()
    load.wait_for(200)
    before = fail_opens(cluster)
    timeline: list[tuple[float, int, str]] = []

    def hammer(seconds: float) -> None:
        ends = time.monotonic() + seconds
        while time.monotonic() < ends:
            status, body = purchase(cluster.url, hammered, product=other["id"])
            timeline.append((time.monotonic(), status, body.get("error", {}).get("code", "")))
            time.sleep(0.02)

    hammer(1.0)
    assert timeline[-1][1] == 429, timeline[-5:]  # limited (or banned) before the kill
    killed = time.monotonic()
    kill_port(master)
    hammer(1.0)
    wait_until(lambda: nodes.master_of_slot(slot) not in (None, master), timeout=30,
               what="the killed master's replica to take over")
    took_over = time.monotonic()
    # Hammered until limited again: each replica's client finds the new master in its own time (seconds on a busy
    # machine), so what is asserted is that the limit comes back, not within which second.
    deadline = time.monotonic() + 60
    hammer(3.0)
    while time.monotonic() < deadline and not all(s == 429 for _, s, _ in timeline[-25:]):
        hammer(0.5)
    load.wait_for(len(load.attempts) + 200)
    attempts = load.stop()

    seen = verify(cluster, attempts)  # every 200 exists once, unknowns resolved, the invariant
    assert set(seen) == {"200"}, seen  # no purchase failed: no 5xx, no refusal
    after_kill = [(t, s, c) for t, s, c in timeline if t > killed]
    let_through = [t for t, s, _ in after_kill if s == 200]
    assert let_through, after_kill  # failed open: the buyer's limit was out of reach
    assert fail_opens(cluster) > before
    # Besides 200 and 429, only admission control's honest refusal (503 overloaded: nothing sold, Retry-After), which
    # the load beside it takes and retries too: on a busy machine, purchases waiting out the dead master's timeouts
    # can make a replica's queue stand. Anything else (a 500, a 502) fails here, and is listed.
    odd = [entry for entry in timeline if entry[1] not in (200, 429) and entry[1:] != (503, "overloaded")]
    assert not odd, odd
    # Limited again once the replica took over: the last 25 purchases of the hammering were refused, one after
    # another.
    assert {s for _, s, _ in timeline[-25:]} == {429}, after_kill[-30:]
    print(f"\nmaster killed: its replica took over after {took_over - killed:.2f} s; the hammered buyer was let "
          f"through {len(let_through)} time(s), the last {let_through[-1] - killed:.2f} s after the kill; "
          f"load answers {seen}")
    nodes.wait_healthy()
    assert cluster.status()["bans"] is not None  # the CLI reads the bans from the changed cluster
    restock_is_seen_by_every_replica(cluster)  # pub/sub works again, whichever node the subscriptions were on


def test_a_node_whose_port_was_taken_meanwhile_gets_other_ports(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Ports are free when chosen, but another process may take one before the node binds it (the full suite once
    lost every Redis Cluster test to a bus port taken by an outgoing connection): the node starts elsewhere."""
    import socket

    nodes = PrivateRedisCluster(tmp_path / "cluster")
    port, bus = nodes.nodes[0].port, int(nodes.nodes[0].config.rsplit("cluster-port ", 1)[1])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", bus))
        squatter.listen()
        try:
            nodes.start()
            assert nodes.nodes[0].port != port
            assert f"127.0.0.1:{nodes.nodes[0].port}" in nodes.url
            assert str(nodes.nodes[0].port) in (tmp_path / "cluster" / "ports").read_text()
        finally:
            nodes.stop()
