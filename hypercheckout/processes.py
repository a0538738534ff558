"""Ports and processes of the servers this machine runs for itself: free loopback ports (never one twice to
servers started together), waiting for a condition, stopping a process, a log's last lines.

Shared by the private servers (``localservices``), the local cluster (``cluster``), the tests and the load tests.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path


class ServiceError(RuntimeError):
    """A private server could not be found or started; the message says why and how to fix it."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PortPicker:
    """Free loopback ports for servers started together, never one number twice.

    `free_port` only knows what is bound now: a port it gave out is free again until its server binds it, and the
    kernel may give it out again meanwhile. A cluster that draws its replicas' ports before nginx binds its own
    then, once in a few thousand starts, gives a replica nginx's port (the clean-clone suite met it: "nginx did
    not start (AlreadyRunning)", the replica answering nginx's readiness check)."""

    def __init__(self, reserved: Iterable[int] = (), draw: Callable[[], int] = free_port) -> None:
        self._taken = set(reserved)
        self._draw = draw

    def pick(self) -> int:
        for _ in range(100):
            port = self._draw()
            if port not in self._taken:
                self._taken.add(port)
                return port
        raise ServiceError(f"no free loopback port outside the {len(self._taken)} already given out")


def stop_process(process: subprocess.Popen[bytes], *, grace: float) -> None:
    """SIGTERM, and SIGKILL if it has not exited ``grace`` seconds later."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_until(condition: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.05) -> None:
    """Return once ``condition()`` is true; raise ``ServiceError`` naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise ServiceError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
