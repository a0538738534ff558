"""The nemesis: injects a plan's faults into a running ``Cluster`` and heals them, several overlapping. A fault is
counted only when it took effect (a replica killed while it was up, PostgreSQL stopped while it ran); one that
could not (its target already down) is counted as skipped, with why; an injection that fails is an error that
fails the run, and the faults after it are still injected."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
import urllib.request
from collections import Counter
from typing import Any

import psycopg2

from campaign.adminapi import admin
from campaign.plan import (
    FAILOVER,
    FAULTS,
    PAYMENT_FAULTS,
    REDIS_MASTER,
    ROOM_FAULTS,
    ROOM_RATE,
    ROOM_RATE_BURST,
    ROOM_RATE_EDIT,
    ROOM_REOPEN,
    Fault,
)
from hypercheckout.cluster import Cluster, write_postgres_roles


class Nemesis:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.lock = threading.Lock()  # one change to a piece at a time
        self.paused: set[int] = set()
        self.applied: Counter[str] = Counter()  # kind -> faults that took effect
        self.skipped: Counter[str] = Counter()  # "kind: why" -> faults that could not take effect
        self.errors: list[str] = []  # injections that raised: each fails the run
        self.room_product: int | None = None  # the run's product with a waiting room (--waiting-room)
        self.closed_by: Fault | None = None  # the fault that closed the room, while it is closed
        self.closed: list[list[float]] = []  # wall-clock spans in which the room may have been closed
        self.room_edits = 0  # rate edits made by bursts (ROOM_RATE_BURST)

    def reset(self, room_product: int | None) -> None:
        """Before a run: its room, and counts of its own."""
        self.applied, self.skipped, self.errors = Counter(), Counter(), []
        self.room_product, self.closed_by, self.closed, self.room_edits = room_product, None, [], 0

    def run(self, faults: list[Fault], started: float, stop: threading.Event) -> None:
        timers = []
        for index, fault in enumerate(faults):
            delay = started + fault.at - time.monotonic()
            if stop.wait(max(0.0, delay)):
                for late in faults[index:]:
                    self.skipped[f"{late.kind}: the run's purchases were over"] += 1
                break
            try:
                why = self.inject(fault)
            except Exception as exc:
                self.errors.append(f"{fault.kind} at {fault.at:.1f} s raised {type(exc).__name__}: {exc}"[:400])
                why = None
            if why is not None:
                self.skipped[f"{fault.kind}: {why}"] += 1
                continue
            heal = threading.Timer(fault.hold, self.heal, args=(fault,))
            heal.start()
            timers.append(heal)
        for timer in timers:
            timer.join()

    def inject(self, fault: Fault) -> str | None:
        """Inject one fault: None when it took effect, else why it could not (raises if the injection failed)."""
        if fault.kind in ROOM_FAULTS:
            why = self.change_room(fault)
        elif fault.kind in PAYMENT_FAULTS:
            why = self._simulator(fault, on=True)
        else:
            with self.lock:
                why = self._inject_process_fault(fault)
        if why is None:
            self.applied[fault.kind] += 1
        return why

    def _inject_process_fault(self, fault: Fault) -> str | None:
        cluster = self.cluster
        if fault.kind == "kill-replica":
            replica = cluster.apps[fault.target]
            if not replica.running():
                return "the replica was already down"
            self.paused.discard(fault.target)
            replica.kill(wait=True, sig=signal.SIGKILL)
        elif fault.kind == "pause-replica":
            replica = cluster.apps[fault.target]
            if not replica.running():
                return "the replica was down"
            if fault.target in self.paused:
                return "the replica was already paused"
            os.kill(replica.process.pid, signal.SIGSTOP)
            self.paused.add(fault.target)
        elif fault.kind.startswith("postgres-restart"):
            postgres = cluster.postgres
            assert postgres is not None
            if not postgres.running():
                return "PostgreSQL was already down"
            done = postgres.stop(mode="immediate" if fault.kind.endswith("immediate") else "fast")
            if done is None or done.returncode != 0 or postgres.running():
                raise RuntimeError(f"pg_ctl stop failed: {done and (done.stderr or done.stdout).strip()[-200:]}")
        elif fault.kind == "redis-restart":
            if cluster.redis is None:
                return "no single Redis to restart"
            if not cluster.redis.running():
                return "Redis was already down"
            cluster.redis.kill(wait=True, sig=signal.SIGKILL)
        elif fault.kind == REDIS_MASTER:
            nodes = cluster.redis_nodes
            assert nodes is not None
            masters = sorted(port for port, role in nodes.roles().items() if role == "master")
            if len(masters) < 3:  # never two shards down at once
                return "a master was down and its replica not yet in charge"
            nodes.node(masters[fault.target % len(masters)]).kill()
        elif fault.kind == "nginx-reload":
            assert cluster.nginx is not None
            if not cluster.nginx.running():
                return "nginx was down"
            os.kill(cluster.nginx.process.pid, signal.SIGHUP)
        elif fault.kind == FAILOVER:
            primary, standby = cluster.postgres, cluster.standby
            if primary is None or standby is None or not standby.is_standby or not standby.running() \
                    or not primary.running():
                return "no streaming standby to fail over to"
            primary.crash()
            standby.promote()
            cluster.postgres, cluster.standby = standby, primary
            write_postgres_roles(cluster.data_dir, {"primary": standby.data_dir.name,
                                                    "standby": primary.data_dir.name})
        else:
            raise ValueError(f"no such fault: {fault.kind}")
        return None

    def _simulator(self, fault: Fault, *, on: bool) -> str | None:
        """A fault of the payment simulator, made (on) or undone."""
        base = self.cluster.env.get("HC_STRIPE_API_BASE")
        if self.cluster.simulator is None or not base:
            return "no payment simulator"
        change = {"payments-outage": {"outage": on}, "webhooks-delayed": {"webhook_delay_ms": 2500 if on else 0},
                  "webhooks-duplicated": {"duplicate": 1.0 if on else 0.0},
                  "webhooks-lost": {"lose": 0.8 if on else 0.0},
                  "webhooks-reordered": {"reorder_ms": 2000 if on else 0}}[fault.kind]
        request = urllib.request.Request(f"{base}/_simulator/faults", method="POST", data=json.dumps(change).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10):
            return None

    def change_room(self, fault: Fault) -> str | None:
        """An operator's change to the room, through the admin API, asked again for a few seconds while it is a 503
        (PostgreSQL may be down: then the change is not made, and not counted). Not under the lock: it touches no
        process, and the heals of the others must not wait for it."""
        product = self.room_product
        if product is None:
            return "no waiting room in this run"
        if fault.kind == ROOM_REOPEN and self.closed_by is not None:
            return "the room was already closed"
        if fault.kind == ROOM_RATE_BURST:
            return self._edit_rate_repeatedly(product, fault.target)
        body: dict[str, Any] = ({"admit_per_second": fault.target} if fault.kind == ROOM_RATE_EDIT
                                else {"waiting_room": False})
        span = [time.time(), math.inf]
        if fault.kind == ROOM_REOPEN:
            self.closed.append(span)  # before the call: the change may commit even if its answer is lost
        try:
            admin(self.cluster, "PATCH", f"/admin/api/products/{product}", body, attempts=6)
        except Exception as exc:
            if fault.kind == ROOM_REOPEN:
                self.closed_by = fault  # perhaps made: opened again when this fault heals
            return f"the change was not answered ({type(exc).__name__})"
        if fault.kind == ROOM_REOPEN:
            self.closed_by = fault
        return None

    def _edit_rate_repeatedly(self, product: int, edits: int) -> str | None:
        """``edits`` new rates in a row (each differs from the one before, so each moves the line on)."""
        made = 0
        for n in range(edits):
            try:
                admin(self.cluster, "PATCH", f"/admin/api/products/{product}",
                      {"admit_per_second": ROOM_RATE + 1 + n % 2}, attempts=6)
            except Exception:
                continue
            made += 1
        self.room_edits += made
        return None if made == edits else f"{edits - made} of {edits} edits were not answered"

    def _reopen(self, fault: Fault | None, attempts: int) -> None:
        if self.closed_by is None or (fault is not None and fault is not self.closed_by):
            return
        try:
            admin(self.cluster, "PATCH", f"/admin/api/products/{self.room_product}", {"waiting_room": True},
                  attempts=attempts)
        except Exception:
            if fault is None:
                raise
            return  # opened again by the heal at the end of the run
        self.closed[-1][1] = time.time()
        self.closed_by = None

    def heal(self, fault: Fault | None = None) -> None:
        """Undo one fault (None: everything that is down or paused). PostgreSQL and Redis come first: a replica
        starting without PostgreSQL exits, and is started again by a later heal; a room closed is opened last."""
        if fault is not None and fault.kind in ROOM_FAULTS:
            self._reopen(fault, attempts=6)
            return
        if fault is not None and fault.kind in PAYMENT_FAULTS:
            self._simulator(fault, on=False)
            return
        if fault is None and self.cluster.simulator is not None:
            for kind in PAYMENT_FAULTS:
                self._simulator(Fault(0.0, kind, 0, 0.0), on=False)
        self._heal_processes(fault)
        if fault is None:
            self._reopen(None, attempts=20)

    def _heal_processes(self, fault: Fault | None) -> None:
        cluster = self.cluster
        with self.lock:
            kinds = (*FAULTS, FAILOVER, REDIS_MASTER) if fault is None else (fault.kind,)
            try:
                if any(k.startswith("postgres") for k in kinds) and not postgres_running(cluster):
                    assert cluster.postgres is not None
                    cluster.postgres.start()
                if FAILOVER in kinds and cluster.standby is not None and not cluster.standby.is_standby:
                    rebuild_standby(cluster)
                if "redis-restart" in kinds and cluster.redis is not None and not cluster.redis.running():
                    cluster.redis.start()
                if REDIS_MASTER in kinds and cluster.redis_nodes is not None:
                    for node in cluster.redis_nodes.nodes:
                        if node.process is None:
                            node.start()  # it rejoins as a replica of whoever took over its slots
                for index, replica in enumerate(cluster.apps):
                    if fault is not None and fault.target != index:
                        continue
                    if "pause-replica" in kinds and index in self.paused:
                        if replica.running():
                            os.kill(replica.process.pid, signal.SIGCONT)
                        self.paused.discard(index)
                    if "kill-replica" in kinds and not replica.running():
                        replica.start()
            except Exception as exc:  # healed again at the end of the run
                # The exception's name only: some of mirakuru's have a repr that recurses.
                print(f"    (heal of {fault.kind if fault else 'everything'} deferred: {type(exc).__name__})",
                      file=sys.stderr, flush=True)
                if fault is None:
                    raise


def rebuild_standby(cluster: Cluster) -> None:
    """After a failover: the old primary becomes a fresh copy of the new one, which is then made synchronous
    again (commits wait for the standby from here on)."""
    primary, standby = cluster.postgres, cluster.standby
    assert primary is not None and standby is not None
    if standby.running():
        standby.stop(mode="immediate")
    standby.clone_from(primary)
    standby.start()
    conn = psycopg2.connect(primary.url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
            cur.execute("SELECT pg_reload_conf()")
    finally:
        conn.close()


def postgres_running(cluster: Cluster) -> bool:
    return cluster.postgres is not None and cluster.postgres.running()
