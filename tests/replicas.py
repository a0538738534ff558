"""Run `hypercheckout serve` replicas as real processes, as production does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hypercheckout.processes import PortPicker, port_open, tail, wait_until
from hypercheckout.settings import Settings
from tests.helpers import settings_env


@contextmanager
def running_replicas(settings: Settings, count: int = 2, **env: str) -> Iterator[list[str]]:
    """Start ``count`` replicas on free ports (extra ``HC_*`` variables in ``env``); yield their base URLs.

    These tests put a thousand purchases through the strategies at once, straight to the replicas: with no nginx
    in front, whose front door bounds what reaches each replica, the replicas' own in-flight bound (which would
    refuse the excess on purpose; tests/test_admission.py holds it) is raised unless ``env`` sets it. Controlled
    delay stays as users get it.

    On exit each gets SIGTERM and must stop cleanly (exit code 0) within the grace period.
    """
    logs = Path(tempfile.mkdtemp(prefix="hc-replicas-"))
    processes: list[tuple[subprocess.Popen[bytes], int, Path]] = []
    ports = PortPicker()  # none is bound before all are started: free_port alone may give one port twice
    try:
        for i in range(count):
            port = ports.pick()
            log_path = logs / f"replica-{i + 1}.log"
            variables = {**os.environ, **settings_env(settings), "HC_PORT": str(port),
                         "HC_REPLICA_ID": f"replica-{i + 1}", "HC_RATE_LIMIT": "off", "HC_IP_RATE_LIMIT": "off",
                         "HC_MAX_IN_FLIGHT": "100000", **env}
            with log_path.open("wb") as log:
                process = subprocess.Popen([sys.executable, "-m", "hypercheckout", "serve"], env=variables,
                                           stdout=log, stderr=subprocess.STDOUT)
            processes.append((process, port, log_path))
        for process, port, log_path in processes:
            wait_until(lambda p=process, n=port: p.poll() is not None or port_open(n), timeout=30,
                       what=f"replica on port {port}")
            assert process.poll() is None, f"replica exited:\n{tail(log_path)}"
        yield [f"http://127.0.0.1:{port}" for _, port, _ in processes]
    finally:
        for process, _, _ in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process, _, log_path in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                raise AssertionError(f"replica ignored SIGTERM:\n{tail(log_path)}") from None
            assert process.returncode == 0, f"replica exited with {process.returncode}:\n{tail(log_path)}"
