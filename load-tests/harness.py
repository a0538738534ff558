"""What bench.py, run.py and the profilers share: private PostgreSQL and Redis for a whole run, clusters of nginx
and three replicas started on them with given settings, the operator's CLI pointed at them, and the CPU time of
the processes that serve a purchase."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hypercheckout.cluster import Cluster  # noqa: E402
from hypercheckout.localservices import PrivatePostgres, PrivateRedis, PrivateRedisCluster  # noqa: E402
from hypercheckout.processes import free_port  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
# py-spy: installed with the load extras into the same venv as this interpreter, which need not be on PATH.
PY_SPY = shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def processes() -> dict[int, str]:
    """pid → kind, for the processes that serve a purchase."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if "hypercheckout serve" in cmdline or "hypercheckout.cli serve" in cmdline:
            found[int(entry.name)] = "replicas"
        elif comm == "nginx":
            found[int(entry.name)] = "nginx"
        elif comm in ("postgres", "postmaster"):
            found[int(entry.name)] = "postgres"
        elif comm == "redis-server":
            found[int(entry.name)] = "redis"
    return found


def cpu_seconds(pids: dict[int, str]) -> Counter[str]:
    total: Counter[str] = Counter()
    for pid, kind in pids.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total[kind] += (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime
    return total


def percentile(values: list[float], share: float) -> float:
    """The value below which ``share`` of ``values`` lie (0 for none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


class Backends:
    """One PostgreSQL and one Redis for every cluster of a run, so that a restart with other settings is quick."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env = env  # HC_DATABASE_URL, HC_REDIS_URL
        self.workdir = workdir
        self.redis_cluster: PrivateRedisCluster | None = None
        self.current: Cluster | None = None  # the cluster of the scenario running

    def redis_cluster_url(self) -> str:
        """A Redis Cluster (three masters, three replicas) for the clusters that ask for one; started once, on
        first use, and stopped with the other backends."""
        if self.redis_cluster is None:
            self.redis_cluster = PrivateRedisCluster(self.workdir / "redis-cluster")
            self.redis_cluster.start()
        return self.redis_cluster.url

    def cli(self, *args: str) -> str:
        # The current cluster's settings too (its payment simulator, for `payments reconcile`).
        done = subprocess.run([sys.executable, "-m", "hypercheckout", *args], capture_output=True, text=True,
                              env={**os.environ, **self.env, **(self.current.env if self.current else {})})
        if done.returncode != 0:
            raise RuntimeError(f"hypercheckout {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def status(self) -> dict[str, Any]:
        return json.loads(self.cli("status", "--json"))

    @property
    def access_log(self) -> Path:
        """nginx's access log of the current cluster: one JSON object per request (status, request_time, …)."""
        return self.workdir / "cluster" / "logs" / "nginx-access.log"

    @contextmanager
    def cluster(self, *, replicas: int = 3, **settings: str) -> Iterator[str]:
        """nginx and ``replicas`` replicas with these HC_* settings (limiter off unless they say otherwise); yields
        the URL of nginx."""
        environ = {**os.environ, **self.env, "HC_LOG_LEVEL": "WARNING", "HC_RATE_LIMIT": "off",
                   "HC_IP_RATE_LIMIT": "off", **settings}
        cluster = Cluster(data_dir=self.workdir / "cluster", port=free_port(), environ=environ, out=io.StringIO(),
                          replicas=replicas)
        cluster.start()
        self.current = cluster
        try:
            yield cluster.url
        finally:
            cluster.stop()
            self.current = None

    def payments_url(self) -> str:
        """The current cluster's payment simulator (`up` starts one)."""
        assert self.current is not None
        return self.current.env["HC_STRIPE_API_BASE"]


@contextmanager
def private_backends() -> Iterator[Backends]:
    with tempfile.TemporaryDirectory(prefix="hc-load-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)  # as root, PostgreSQL runs as another user who must enter it
        postgres = PrivatePostgres(workdir / "postgres", durable=True, max_connections=200)
        redis = PrivateRedis(workdir / "redis")
        backends: Backends | None = None
        try:
            env = {"HC_DATABASE_URL": postgres.start().rsplit("/", 1)[0] + "/hypercheckout",
                   "HC_REDIS_URL": redis.start()}
            backends = Backends(env, workdir)
            yield backends
        finally:
            if backends is not None and backends.redis_cluster is not None:
                backends.redis_cluster.stop()
            redis.stop()
            postgres.stop()
