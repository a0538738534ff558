"""`make profile`: where a replica spends its CPU on each path a buyer takes, as flame graphs anyone can open.

For each path, a cluster (nginx and three replicas on private PostgreSQL and Redis, as `make bench` starts them),
wrk at 64 connections, and py-spy recording one replica (250 Hz, without stopping it) into ``<path>.svg``:

* ``healthz``: GET /healthz, the no-op ceiling the others are measured against;
* ``purchase``: POST /purchase by a new buyer each time, stock plenty (batched);
* ``sold-out``: the same at stock 0 (the replicas' sold-out flags answer);
* ``not-started``: a product whose sale starts in an hour (the replicas' copy of the schedule answers);
* ``rate-limited``: one buyer far over its rate (429s: the limiter, then the replica's memory of its refusal);
* ``join``: new buyers joining a product's waiting room.

``profile.md`` beside them gives each path's req/s, the CPU per request of the replicas, nginx, PostgreSQL and
Redis (read from /proc over the same wrk run) and the command that made it all.

    python load-tests/flamegraphs.py [--seconds 8] [--connections 64] [--only purchase,sold-out] [--out DIR]

py-spy needs root or ptrace permission; it comes with `make install-load`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench import PLENTY, Figure, wrk  # noqa: E402
from harness import PY_SPY, Backends, cpu_seconds, private_backends, processes  # noqa: E402

LIMITED = {"HC_RATE_LIMIT": "1/s", "HC_RATE_BURST": "1", "HC_BAN_AFTER": "1000000000"}


@dataclass(frozen=True)
class BuyerPath:
    """One path: the cluster's settings, how to set the product up, and wrk's variables."""

    name: str
    settings: dict[str, str]
    prepare: Callable[[Backends], dict[str, str]]  # → wrk's WRK_* variables


def _plenty(backends: Backends) -> dict[str, str]:
    backends.cli("reset", "--stock", str(PLENTY))
    return {}


def _sold_out(backends: Backends) -> dict[str, str]:
    backends.cli("reset", "--stock", "0")
    return {}


def _not_started(backends: Backends) -> dict[str, str]:
    later = json.loads(backends.cli("product", "create", "--name", "Later", "--stock", str(PLENTY), "--starts-at",
                                    "+3600", "--json"))
    return {"WRK_PRODUCT": str(later["id"])}


def _limited(backends: Backends) -> dict[str, str]:
    backends.cli("reset", "--stock", str(PLENTY))
    return {"WRK_USER": "7"}


def _join(backends: Backends) -> dict[str, str]:
    room = json.loads(backends.cli("product", "create", "--name", "Queued", "--stock", str(PLENTY), "--starts-at",
                                   "+3600", "--waiting-room", "--json"))
    return {"WRK_MODE": "join", "WRK_PRODUCT": str(room["id"])}


PATHS = (
    BuyerPath("healthz", {}, lambda backends: {"WRK_MODE": "healthz"}),
    BuyerPath("purchase", {}, _plenty),
    BuyerPath("sold-out", {}, _sold_out),
    BuyerPath("not-started", {}, _not_started),
    BuyerPath("rate-limited", LIMITED, _limited),
    BuyerPath("join", {}, _join),
)


@dataclass
class Profile:
    path: str
    figure: Figure
    cpu_us: dict[str, float]  # process kind → CPU µs per request
    svg: Path | None


@contextmanager
def recording(pid: int, seconds: float, svg: Path) -> Iterator[None]:
    """py-spy's flame graph of ``pid`` over the next ``seconds`` (started first, joined after the load)."""
    spy = threading.Thread(target=subprocess.run, args=([
        PY_SPY, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds) - 1)), "--rate", "250",
        "--format", "flamegraph", "-o", str(svg), "--nonblocking"],), kwargs={"capture_output": True})
    spy.start()
    try:
        yield
    finally:
        spy.join()


def profile_path(backends: Backends, path: BuyerPath, *, seconds: float, connections: int, out: Path) -> Profile:
    with backends.cluster(HC_STRATEGY="batched", **path.settings) as url:
        env = path.prepare(backends)
        wrk(url, seconds=1, connections=4, **env)  # every replica has seen the product's state once
        pids = processes()
        replica = min(pid for pid, kind in pids.items()  # one of this cluster's, whatever else runs
                      if kind == "replicas" and str(backends.workdir) in Path(f"/proc/{pid}/cmdline").read_text())
        svg = out / f"{path.name}.svg"
        before = cpu_seconds(pids)
        with recording(replica, seconds, svg):
            figure = wrk(url, seconds=seconds, connections=connections, **env)
        after = cpu_seconds(pids)
    cpu = {kind: 1e6 * (after[kind] - before[kind]) / max(1, figure.requests) for kind in sorted(after)}
    return Profile(path.name, figure, cpu, svg if svg.exists() else None)


def report(profiles: list[Profile], command: str, *, seconds: float, connections: int) -> str:
    base = next((p for p in profiles if p.path == "healthz"), None)
    lines = [
        "# Flame graphs of one replica, one per path",
        "",
        f"Made by `{command}` on {datetime.now().strftime('%Y-%m-%d %H:%M')}: for each path a cluster (nginx, three "
        f"replicas, batched), wrk -t2 -c{connections} for {seconds:g} s, py-spy recording one replica at 250 Hz. "
        "CPU per request is each kind of process's CPU time over the same wrk run divided by the requests "
        "answered; the whole machine is shared (wrk, nginx, three replicas, PostgreSQL, Redis on its cores), so "
        "compare the ratios, not the absolute figures.",
        "",
        "| path | req/s | non-2xx | replicas µs/req | ÷ healthz | nginx | PostgreSQL | Redis | flame graph |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for p in profiles:
        ratio = f"{p.cpu_us.get('replicas', 0) / base.cpu_us['replicas']:.2f}" if base and base.cpu_us.get(
            "replicas") else "—"
        graph = f"[{p.svg.name}]({p.svg.name})" if p.svg else "py-spy wrote nothing (permissions?)"
        lines.append(f"| {p.path} | {p.figure.rate:,.0f} | {p.figure.non_2xx:,} | {p.cpu_us.get('replicas', 0):.0f} "
                     f"| {ratio} | {p.cpu_us.get('nginx', 0):.0f} | {p.cpu_us.get('postgres', 0):.0f} "
                     f"| {p.cpu_us.get('redis', 0):.0f} | {graph} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8, help="length of each wrk run (default 8)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--only", default=",".join(p.name for p in PATHS),
                        help=f"comma-separated paths (default all: {', '.join(p.name for p in PATHS)})")
    parser.add_argument("--out", type=Path,
                        default=HERE / "results" / f"{datetime.now().strftime('%Y-%m-%d')}-profiles")
    args = parser.parse_args()
    wanted = args.only.split(",")
    unknown = set(wanted) - {p.name for p in PATHS}
    if unknown:
        parser.error(f"unknown path(s): {', '.join(sorted(unknown))}")
    if PY_SPY is None:
        print("py-spy is missing: make install-load", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python load-tests/flamegraphs.py " + shlex.join(sys.argv[1:])
    profiles = []
    with private_backends() as backends:
        for path in PATHS:
            if path.name in wanted:
                print(f"{path.name} …", flush=True)
                profiles.append(profile_path(backends, path, seconds=args.seconds, connections=args.connections,
                                             out=args.out))
    text = report(profiles, command.strip(), seconds=args.seconds, connections=args.connections)
    (args.out / "profile.md").write_text(text)
    print(text)
    return 0 if all(p.svg for p in profiles) else 1


if __name__ == "__main__":
    sys.exit(main())
