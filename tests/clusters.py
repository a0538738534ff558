"""A real `hypercheckout up` run as a subprocess, for the end-to-end tests: started on a free port in a data dir,
driven through nginx, stopped with SIGINT as an operator's Ctrl-C would."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from hypercheckout.processes import free_port, tail
from tests.helpers import run_cli

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
            try:
                if f"--replica-id {name}" in " ".join(proc.cmdline()):
                    return proc
            except (psutil.ZombieProcess, psutil.NoSuchProcess):
                continue  # a replica an earlier test stopped, not yet reaped by `up`
        raise AssertionError(f"no process for {name}")


@contextmanager
def cluster_workdir() -> Iterator[Path]:
    """A temporary folder for clusters' data dirs; kept, with every log, when HC_TEST_KEEP_CLUSTERS is set."""
    if os.environ.get("HC_TEST_KEEP_CLUSTERS"):
        kept = Path(tempfile.mkdtemp(prefix="hc-cluster-kept-"))
        os.chmod(kept, 0o755)
        print(f"keeping cluster data and logs in {kept}")
        yield kept
        return
    # As root, the cluster's PostgreSQL runs as another user, who must be able to enter the data dir.
    with tempfile.TemporaryDirectory(prefix="hc-cluster-") as tmp:
        os.chmod(tmp, 0o755)
        yield Path(tmp)


# The checkout's own package; tests/test_package.py runs an installed wheel's `hypercheckout` instead.
THIS_CHECKOUT = (sys.executable, "-m", "hypercheckout")


def start_cluster(data_dir: Path, replicas: int = 3, *, tls: bool = False, pg_standby: bool = False,
                  redis_cluster: bool = False, buyer_auth: str = "none", command: Sequence[str] = THIS_CHECKOUT,
                  cwd: Path | None = None, **env: str) -> RunningCluster:
    """`hypercheckout up` with the limiter off unless ``env`` (extra HC_* variables) turns it on; admission control
    as users get it. ``command`` is the `hypercheckout` to run, from ``cwd``."""
    port = free_port()
    output = data_dir.parent / f"up-{port}.out"
    env = {**os.environ, "HC_RATE_LIMIT": "off", "HC_IP_RATE_LIMIT": "off", "HC_LOG_LEVEL": "WARNING", **env}
    with output.open("wb") as out:
        process = subprocess.Popen(
            [*command, "up", "--data-dir", str(data_dir), "--port", str(port),
             "--replicas", str(replicas), *(["--tls"] if tls else []), *(["--pg-standby"] if pg_standby else []),
             *(["--redis-cluster"] if redis_cluster else []), "--buyer-auth", buyer_auth],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
        )
    deadline = time.monotonic() + UP_TIMEOUT
    while b"HyperCheckout is up" not in output.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"`hypercheckout up` did not come up:\n{tail(output, 40)}")
        time.sleep(0.1)
    return RunningCluster(process, data_dir, f"{'https' if tls else 'http'}://127.0.0.1:{port}", output)


def stop_cluster(cluster: RunningCluster) -> None:
    if cluster.process.poll() is None:
        cluster.process.send_signal(signal.SIGINT)
        cluster.process.wait(60)


def purchase(url: str, user: int, qty: int = 1,  # type: ignore[type-arg]
             context: ssl.SSLContext | None = None, product: int = 1) -> tuple[int, dict]:
    body = json.dumps({"user_id": user, "product_id": product, "quantity": qty}).encode()
    request = urllib.request.Request(f"{url}/purchase", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")
