"""End to end: a real `hypercheckout up` (private PostgreSQL, Redis, three replicas, nginx), driven only through
nginx, as a buyer would reach it."""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import os
import signal
import socket
import ssl
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import psutil
import pytest

from hypercheckout.cluster import Cluster, ClusterError
from hypercheckout.processes import PortPicker, free_port, tail
from tests.clusters import RunningCluster, cluster_workdir, purchase, start_cluster, stop_cluster
from tests.helpers import fire_retrying, simultaneous


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with cluster_workdir() as path:
        yield path


@pytest.fixture(scope="module")
def cluster(workdir: Path) -> Iterator[RunningCluster]:
    running = start_cluster(workdir / "shared")
    yield running
    stop_cluster(running)


def test_a_burst_on_a_cluster_just_started_is_served_whole_and_one_before_the_start_is_told_so(
        cluster: RunningCluster) -> None:
    """Run first in this module, against the cluster started a moment before: 200 purchases at once are a burst
    the service can serve in well under a second, so none is refused for overload; 200 at once for a sale that has
    not started are each told so (a refusal known from memory), never "try again"."""
    cluster.cli("reset", "--stock", "1000")
    burst = asyncio.run(simultaneous(cluster.url, [(user, 1, 1) for user in range(1, 201)]))
    assert Counter(a.status for a in burst) == {200: 200}, Counter(
        (a.status, a.body.get("error", {}).get("code"), a.body.get("error", {}).get("message")) for a in burst)
    assert cluster.status()["products"][0]["sold"] == 200
    later = json.loads(cluster.cli("product", "create", "--name", "Later", "--stock", "10", "--starts-at", "+3600",
                                   "--json").stdout)
    early = asyncio.run(simultaneous(cluster.url, [(user, later["id"], 1) for user in range(1001, 1201)]))
    codes = Counter((a.status, a.body.get("error", {}).get("code")) for a in early)
    assert codes == {(409, "sale_not_started"): 200}, codes
    cluster.cli("product", "delete", str(later["id"]))


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
    """2,000 buyers at once, more than the front door lets through: the excess is refused honestly (503 overloaded,
    nothing sold, Retry-After) and, retrying as real clients do, demand twice the stock sells all of it, no more."""
    cluster.cli("reset", "--stock", "1000")
    answers, _ = asyncio.run(fire_retrying([cluster.url], [(user, 1) for user in range(1, 2001)]))
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


def test_a_port_picker_never_gives_out_a_reserved_port_or_one_port_twice() -> None:
    draws = iter([5, 6, 5, 6, 7, 6, 8])
    picker = PortPicker(reserved={5}, draw=lambda: next(draws))
    assert [picker.pick(), picker.pick(), picker.pick()] == [6, 7, 8]


def test_a_cluster_whose_ports_come_back_from_the_kernel_twice_still_gives_each_server_its_own(
        workdir: Path) -> None:
    """The kernel may hand out a released port again before its server binds it. Here every other draw is nginx's
    port (not bound until the end) and each port drawn comes back once more: the cluster must still give each of
    PostgreSQL, Redis, the replicas and nginx a port of its own (before, a replica given nginx's port answered
    nginx's readiness check, and the start failed with "nginx did not start (AlreadyRunning)")."""
    nginx_port = free_port()
    drawn: list[int] = []

    def draw() -> int:
        if len(drawn) % 3 == 0:
            drawn.append(nginx_port)
        elif len(drawn) % 3 == 2:
            drawn.append(drawn[-1])
        else:
            drawn.append(free_port())
        return drawn[-1]

    environ = {**os.environ, "HC_RATE_LIMIT": "off", "HC_IP_RATE_LIMIT": "off", "HC_LOG_LEVEL": "WARNING"}
    cluster = Cluster(data_dir=workdir / "ports", port=nginx_port, replicas=2, stock=10, payments="off",
                      environ=environ, out=io.StringIO(), draw_port=draw)
    try:
        cluster.start()
        replica_ports = [int(p) for p in cluster.env["HC_REPLICA_PORTS"].split(",")]
        assert cluster.postgres is not None and cluster.redis is not None
        servers = [cluster.postgres.port, cluster.redis.port, *replica_ports, nginx_port]
        assert len(set(servers)) == len(servers), servers
        assert nginx_port in drawn and len(drawn) > len(servers)  # the collisions happened and were stepped over
        answers = [purchase(cluster.url, user) for user in (1, 2)]
        assert {status for status, _ in answers} == {200}
    finally:
        cluster.stop()


def test_replicas_start_together_and_one_that_cannot_start_stops_the_cluster_and_is_named(workdir: Path) -> None:
    """Replicas start at once (each waited for in its own thread). One whose port another socket holds exits: the
    start raises ClusterError naming that replica, with its log's last lines, and nothing the cluster started is
    left running (its other replicas, PostgreSQL, Redis)."""
    blocker = socket.socket()  # bound, not listening: a replica's bind fails; a readiness check is refused
    blocker.bind(("127.0.0.1", 0))
    blocked = blocker.getsockname()[1]
    draws: list[int] = []

    def draw() -> int:  # PostgreSQL, Redis, then the replicas: the second replica gets the held port
        draws.append(blocked if len(draws) == 3 else free_port())
        return draws[-1]

    data_dir = workdir / "replica-fails"
    environ = {**os.environ, "HC_RATE_LIMIT": "off", "HC_IP_RATE_LIMIT": "off", "HC_LOG_LEVEL": "WARNING"}
    cluster = Cluster(data_dir=data_dir, port=free_port(), replicas=3, stock=10, payments="off", environ=environ,
                      out=io.StringIO(), draw_port=draw)
    try:
        with pytest.raises(ClusterError) as failed:
            cluster.start()
        ports = cluster.env["HC_REPLICA_PORTS"].split(",")
        failing = f"app-{ports.index(str(blocked)) + 1}"
        assert str(failed.value).startswith(f"{failing} did not start"), failed.value
        assert f"{failing}.log" in str(failed.value)
        left = [p for p in psutil.process_iter(["cmdline"]) if str(data_dir) in " ".join(p.info["cmdline"] or [])]
        assert left == [], left
    finally:
        cluster.stop()
        blocker.close()


def cookies_set(response: http.client.HTTPResponse) -> dict[str, str]:
    """Cookie name → its whole Set-Cookie line."""
    return {line.split("=", 1)[0]: line for line in response.headers.get_all("Set-Cookie") or []}


def test_up_with_tls_serves_https_with_secure_admin_cookies_and_keeps_metrics_local(workdir: Path) -> None:
    running = start_cluster(workdir / "tls", replicas=1, tls=True, HC_ADMIN_TOKEN="tls-test-token")
    try:
        assert running.url.startswith("https://")
        context = ssl.create_default_context(cafile=str(running.data_dir / "tls" / "cert.pem"))
        status, body = purchase(running.url, 1, context=context)  # verified against the cluster's certificate
        assert status == 200, body
        port = int(running.url.rsplit(":", 1)[1])

        def fetch(method: str, path: str, *, source: str = "127.0.0.1", body: str | None = None,
                  headers: dict[str, str] | None = None) -> tuple[http.client.HTTPResponse, bytes]:
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, source_address=(source, 0),
                                               timeout=10)
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response, response.read()

        login_page, _ = fetch("GET", "/admin/login")
        xsrf_line = cookies_set(login_page)["__Host-xsrf"]
        assert "Secure" in xsrf_line and "Path=/" in xsrf_line
        xsrf = xsrf_line.split("=", 1)[1].split(";")[0]
        answer, _ = fetch("POST", "/admin/login", body=urlencode({"token": "tls-test-token", "_xsrf": xsrf}),
                          headers={"Cookie": f"__Host-xsrf={xsrf}",
                                   "Content-Type": "application/x-www-form-urlencoded"})
        assert answer.status == 303
        assert "Strict-Transport-Security" not in answer.headers  # self-signed, on localhost: no HSTS
        session = cookies_set(answer)["__Host-hc_admin"]
        assert all(attribute in session for attribute in ("Secure", "HttpOnly", "SameSite=Strict", "Path=/"))

        # /metrics through the front door: this machine only. 127.0.0.2 is loopback too, but not 127.0.0.1.
        local, text = fetch("GET", "/metrics")
        assert local.status == 200 and b"hypercheckout_requests_total" in text
        remote, refusal = fetch("GET", "/metrics", source="127.0.0.2")
        assert remote.status == 403 and json.loads(refusal)["error"]["code"] == "forbidden"
        other, _ = fetch("GET", "/healthz", source="127.0.0.2")
        assert other.status == 200  # only /metrics is restricted
        assert (running.data_dir / "cluster.env").stat().st_mode & 0o777 == 0o600
        assert (running.data_dir / "tls" / "key.pem").stat().st_mode & 0o777 == 0o600
    finally:
        stop_cluster(running)
