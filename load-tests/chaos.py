"""`make chaos`: a seeded fault campaign against a real cluster, with a client history and a checker.

One cluster (PostgreSQL, Redis, three replicas, nginx — `hypercheckout up`'s own ``Cluster``, driven in this
process so that the nemesis can kill and restart its pieces) serves every run. Each run:

1. creates fresh products: one with plenty of stock and a per-user limit, two with little stock that sell out
   during the run, one plain;
2. sends purchases from concurrent buyers for ``--duration`` seconds — buyers drawn from a small pool (so that
   per-user limits bite), random products and quantities, every purchase with an Idempotency-Key of its own — and
   writes each operation to the history: key, request, answer (or timeout / connection error), times;
3. meanwhile a nemesis injects faults on a schedule drawn from the run's seed, overlapping: SIGKILL a replica and
   restart it, SIGSTOP/SIGCONT a replica, restart PostgreSQL (fast and immediate), kill and restart Redis, reload
   nginx; with ``--pg-standby`` also fail PostgreSQL over; with ``--redis-cluster`` (the limiter on) SIGKILL a
   Redis master instead of restarting Redis, and start it again (it rejoins as a replica);
4. heals everything, then retries every operation whose outcome is unknown (no answer, a 5xx other than a
   definite refusal) with its key until its outcome is known;
5. checks the history against PostgreSQL (``check``): no oversell, nothing lost, nothing unexpected, nothing
   duplicated, per-user limits kept, no undersell.

The same seed gives the same products, fault schedule and workload shape (what each buyer sends, in order);
timings, and so answers, differ. A run with a violation keeps its history and the cluster's logs and prints its
seed; the command then fails.

    python load-tests/chaos.py --runs 50 --seed 1 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
from tornado.httpclient import HTTPClientError
from tornado.simple_httpclient import SimpleAsyncHTTPClient

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from hypercheckout.cluster import Cluster, raise_file_limit, write_postgres_roles  # noqa: E402
from hypercheckout.localservices import free_port  # noqa: E402

FAULTS = ("kill-replica", "pause-replica", "postgres-restart-fast", "postgres-restart-immediate", "redis-restart",
          "nginx-reload")
FAILOVER = "postgres-failover"  # with --pg-standby only
REDIS_MASTER = "redis-master-kill"  # with --redis-cluster, instead of redis-restart: SIGKILL one master
# Whatever the nemesis does, a client is answered within the contract: 503 when a dependency is down, never 500.
REQUEST_TIMEOUT = 5.0  # seconds; a purchase not answered by then is an operation with an unknown outcome
DEFINITE = {200, 400, 403, 404, 409, 422, 429}  # 503 is definite only with "outcome": "nothing_sold"
ROOM_RATE, ROOM_PASS_SECONDS = 200, 60  # the waiting room's product (--waiting-room)
# With --waiting-room, operators' changes to the room: a new rate (or the same one: an edit of the card), and the
# room closed, then opened again (a new line) when healed. While it is closed the product sells without a pass.
ROOM_RATE_EDIT, ROOM_REOPEN = "room-rate-edit", "room-close-reopen"
ROOM_FAULTS = (ROOM_RATE_EDIT, ROOM_REOPEN)
CLOSED_SLACK = 2.0  # seconds: an order's created_at is its transaction's start, which may precede its lock wait
PASSLESS_SHARE = 0.1  # of purchases of that product, sent without a pass: each must be refused


# --- the history ----------------------------------------------------------------------------------------------------

@dataclass
class Operation:
    key: str
    user: int
    product: int
    quantity: int
    started: float
    ended: float = 0.0
    status: int | None = None  # None: no answer (timeout, connection error)
    body: dict[str, Any] = field(default_factory=dict)
    resolved: int | None = None  # for an info operation: the status its key finally got
    resolved_body: dict[str, Any] = field(default_factory=dict)
    queue_pass: str | None = None  # the Queue-Pass sent (a product with a waiting room)
    room: bool = False  # its product sells through a waiting room

    @property
    def kind(self) -> str:
        """Jepsen's classes: ok (200), fail (a definite refusal: nothing was sold), info (outcome unknown)."""
        if self.status == 200:
            return "ok"
        if self.status in DEFINITE:
            return "fail"
        if self.status == 503 and self.body.get("error", {}).get("outcome") == "nothing_sold":
            return "fail"
        return "info"

    @property
    def final(self) -> tuple[int | None, dict[str, Any]]:
        """What is known of this key in the end: the first answer, or for an info operation its resolution."""
        return (self.status, self.body) if self.kind != "info" else (self.resolved, self.resolved_body)


@dataclass
class ProductPlan:
    name: str
    stock: int
    per_user_limit: int | None
    weight: float
    room: bool = False  # sold through a waiting room


@dataclass
class Fault:
    at: float  # seconds into the run
    kind: str
    target: int  # a replica's index where it matters
    hold: float  # seconds before it is healed (restart, SIGCONT)


@dataclass
class Plan:
    """Everything a seed decides."""

    seed: str
    products: list[ProductPlan]
    faults: list[Fault]
    buyers: int
    users: int


def make_plan(seed: str, *, duration: float, buyers: int, faults_per_second: float, replicas: int,
              kinds: tuple[str, ...] = FAULTS, waiting_room: bool = False) -> Plan:
    rng = random.Random(seed)
    products = [
        ProductPlan("limited", rng.randint(5_000, 20_000), rng.randint(2, 5), 0.3),
        ProductPlan("scarce", rng.randint(20, 60), None, 0.3),
        ProductPlan("scarce-limited", rng.randint(30, 80), rng.randint(1, 3), 0.2),
        ProductPlan("plain", rng.randint(500, 5_000), None, 0.2),
    ]
    count = max(1, round(duration * faults_per_second * rng.uniform(0.8, 1.2)))
    faults = sorted((Fault(at=rng.uniform(0.5, duration * 0.9), kind=rng.choice(kinds),
                           target=rng.randrange(replicas), hold=rng.uniform(0.5, 3.0)) for _ in range(count)),
                    key=lambda f: f.at)
    if waiting_room:  # drawn apart, so that the rest of a seed's plan is the same with or without it
        products.append(ProductPlan("queued", random.Random(f"{seed}/queued").randint(100, 400), None, 0.25,
                                    room=True))
        room_rng = random.Random(f"{seed}/room-faults")
        faults = sorted(faults + [
            Fault(at=room_rng.uniform(0.5, duration * 0.8), kind=room_rng.choice(ROOM_FAULTS),
                  target=room_rng.choice((ROOM_RATE // 2, ROOM_RATE, ROOM_RATE * 2)), hold=room_rng.uniform(0.5, 2.0))
            for _ in range(max(2, round(duration * 0.2)))], key=lambda f: f.at)
    return Plan(seed=seed, products=products, faults=faults, buyers=buyers, users=rng.randint(20, 60))


# --- the nemesis ----------------------------------------------------------------------------------------------------

class Nemesis:
    """Injects a plan's faults into a running ``Cluster`` and heals them; several may overlap."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.lock = threading.Lock()  # one change to a piece at a time
        self.paused: set[int] = set()
        self.injected: Counter[str] = Counter()
        self.room_product: int | None = None  # the run's product with a waiting room (--waiting-room)
        self.closed_by: Fault | None = None  # the fault that closed the room, while it is closed
        self.closed: list[list[float]] = []  # wall-clock spans in which the room may have been closed

    def run(self, faults: list[Fault], started: float, stop: threading.Event) -> None:
        timers = []
        for fault in faults:
            delay = started + fault.at - time.monotonic()
            if stop.wait(max(0.0, delay)):
                break
            self.inject(fault)
            heal = threading.Timer(fault.hold, self.heal, args=(fault,))
            heal.start()
            timers.append(heal)
        for timer in timers:
            timer.join()

    def inject(self, fault: Fault) -> None:
        cluster = self.cluster
        if fault.kind in ROOM_FAULTS:
            self.change_room(fault)
            return
        with self.lock:
            self.injected[fault.kind] += 1
            if fault.kind == "kill-replica":
                replica = cluster.apps[fault.target]
                self.paused.discard(fault.target)
                if replica.running():
                    replica.kill(wait=True, sig=signal.SIGKILL)
            elif fault.kind == "pause-replica":
                replica = cluster.apps[fault.target]
                if replica.running() and fault.target not in self.paused:
                    os.kill(replica.process.pid, signal.SIGSTOP)
                    self.paused.add(fault.target)
            elif fault.kind.startswith("postgres-restart"):
                mode = "immediate" if fault.kind.endswith("immediate") else "fast"
                postgres = cluster.postgres
                assert postgres is not None
                postgres.stop(mode=mode)
            elif fault.kind == "redis-restart":
                if cluster.redis is not None and cluster.redis.running():
                    cluster.redis.kill(wait=True, sig=signal.SIGKILL)
            elif fault.kind == REDIS_MASTER:
                nodes = cluster.redis_nodes
                assert nodes is not None
                masters = sorted(port for port, role in nodes.roles().items() if role == "master")
                if len(masters) < 3:  # one is down and its replica not yet in charge: never two shards at once
                    self.injected[fault.kind] -= 1
                    return
                nodes.node(masters[fault.target % len(masters)]).kill()
            elif fault.kind == "nginx-reload":
                assert cluster.nginx is not None
                os.kill(cluster.nginx.process.pid, signal.SIGHUP)
            elif fault.kind == FAILOVER:
                primary, standby = cluster.postgres, cluster.standby
                if primary is None or standby is None or not standby.is_standby or not standby.running() \
                        or not primary.running():
                    self.injected[fault.kind] -= 1  # no standby to fail over to right now: not injected
                    return
                primary.crash()
                standby.promote()
                cluster.postgres, cluster.standby = standby, primary
                write_postgres_roles(cluster.data_dir, {"primary": standby.data_dir.name,
                                                        "standby": primary.data_dir.name})

    def change_room(self, fault: Fault) -> None:
        """An operator's change to the room, through the admin API, asked again for a few seconds while it is a 503
        (PostgreSQL may be down: then the change is not made, and not counted). Not under the lock: it touches no
        process, and the heals of the others must not wait for it."""
        product = self.room_product
        if product is None or (fault.kind == ROOM_REOPEN and self.closed_by is not None):
            return
        body: dict[str, Any] = ({"admit_per_second": fault.target} if fault.kind == ROOM_RATE_EDIT
                                else {"waiting_room": False})
        span = [time.time(), math.inf]
        if fault.kind == ROOM_REOPEN:
            self.closed.append(span)  # before the call: the change may commit even if its answer is lost
        try:
            admin(self.cluster, "PATCH", f"/admin/api/products/{product}", body, attempts=6)
        except Exception:
            if fault.kind == ROOM_REOPEN:
                self.closed_by = fault  # not answered, perhaps made: opened again when this fault heals
            return
        self.injected[fault.kind] += 1
        if fault.kind == ROOM_REOPEN:
            self.closed_by = fault

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


# --- the workload ---------------------------------------------------------------------------------------------------

def admin(cluster: Cluster, method: str, path: str, body: dict[str, Any] | None = None,
          attempts: int = 20) -> dict[str, Any]:
    """An admin API call; a 503 (a replica still finding the new primary, a standby still catching up while
    commits wait for it) is asked again, as an operator's script would."""
    for attempt in range(attempts):
        request = urllib.request.Request(
            f"{cluster.url}{path}", method=method, data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {cluster.env['HC_ADMIN_TOKEN']}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or attempt == attempts - 1:
                raise
            time.sleep(0.5)
    raise AssertionError("not reached")


async def purchase(client: SimpleAsyncHTTPClient, url: str, op: Operation) -> tuple[int | None, dict[str, Any]]:
    body = json.dumps({"user_id": op.user, "product_id": op.product, "quantity": op.quantity})
    headers = {"Content-Type": "application/json", "Idempotency-Key": op.key}
    if op.queue_pass is not None:
        headers["Queue-Pass"] = op.queue_pass
    return await call(client, f"{url}/purchase", "POST", body, headers)


async def call(client: SimpleAsyncHTTPClient, url: str, method: str, body: str | None = None,
               headers: dict[str, str] | None = None) -> tuple[int | None, dict[str, Any]]:
    """(status, JSON body) of one request, or (None, {}) when no answer came within REQUEST_TIMEOUT."""
    try:
        response = await client.fetch(url, method=method, body=body, raise_error=False, headers=headers,
                                       request_timeout=REQUEST_TIMEOUT, connect_timeout=REQUEST_TIMEOUT)
    except (TimeoutError, HTTPClientError, OSError):
        return None, {}
    if response.code == 599:  # tornado's "no answer"
        return None, {}
    try:
        return response.code, json.loads(response.body or b"{}")
    except ValueError:
        return response.code, {"raw": response.body[:200].decode("latin-1")}


async def admitted(client: SimpleAsyncHTTPClient, url: str, product: int, user: int) -> str | None:
    """Join the product's waiting room and wait (a few seconds at most) for the pass; None if the queue could not
    be reached or the turn did not come (the buyer tries again later, as a buyer's page would)."""
    status, body = await call(client, f"{url}/products/{product}/queue", "POST", json.dumps({"user_id": user}),
                              {"Content-Type": "application/json"})
    if status != 202:
        return None
    ticket = body["ticket"]
    for _ in range(20):
        if status in (200, 202):
            if body.get("status") == "admitted":
                return str(body["pass"])
            if body.get("status") != "waiting":
                return None  # sold out, ended, or the pass expired
        await asyncio.sleep(0.2)
        status, body = await call(client, f"{url}/queue/{ticket}", "GET")
    return None


async def workload(url: str, plan: Plan, product_ids: list[int], duration: float) -> list[Operation]:
    history: list[Operation] = []
    rooms = {product_ids[i] for i, p in enumerate(plan.products) if p.room}
    client = SimpleAsyncHTTPClient(force_instance=True, max_clients=plan.buyers)
    weights = [p.weight for p in plan.products]
    deadline = time.monotonic() + duration

    passes: dict[tuple[int, int], str] = {}  # (buyer, product) -> its pass, shared by the concurrent buyers
    spent: set[tuple[int, int]] = set()  # (buyer, product) whose place in line has bought (a pass buys once)

    async def buyer(index: int) -> None:
        rng = random.Random(f"{plan.seed}/buyer/{index}")  # each buyer's sequence is the seed's
        n = 0
        while time.monotonic() < deadline:
            n += 1
            product = rng.choices(range(len(product_ids)), weights)[0]
            op = Operation(key=f"{plan.seed}/{index}/{n}", user=rng.randint(1, plan.users),
                           product=product_ids[product], quantity=rng.randint(1, 3), started=time.time(),
                           room=product_ids[product] in rooms)
            if op.room and rng.random() >= PASSLESS_SHARE:
                if (op.user, op.product) in spent:
                    continue  # its place has bought; joining again gives the same place
                held = passes.get((op.user, op.product)) or await admitted(client, url, op.product, op.user)
                if held is None:
                    await asyncio.sleep(0.05)
                    continue  # not admitted (yet), or the room is closed: no purchase to try
                passes[(op.user, op.product)] = op.queue_pass = held
                op.started = time.time()
            history.append(op)
            op.status, op.body = await purchase(client, url, op)
            op.ended = time.time()
            if op.status == 403:
                passes.pop((op.user, op.product), None)  # expired or refused: join again next time
                if op.body.get("error", {}).get("code") == "queue_pass_used":
                    spent.add((op.user, op.product))
            await asyncio.sleep(rng.uniform(0, 0.02))

    try:
        await asyncio.gather(*(buyer(i) for i in range(plan.buyers)))
    finally:
        client.close()
    return history


async def resolve(url: str, unknown: list[Operation], *, attempts: int = 30) -> None:
    """Retry each operation whose outcome is unknown, with its key, until the answer is definite."""
    client = SimpleAsyncHTTPClient(force_instance=True, max_clients=20)
    try:
        async def one(op: Operation) -> None:
            for _ in range(attempts):
                status, body = await purchase(client, url, op)
                probe = Operation(op.key, op.user, op.product, op.quantity, 0, status=status, body=body)
                if probe.kind != "info" and not (status == 409 and body.get("error", {}).get("code") ==
                                                 "request_in_progress"):
                    op.resolved, op.resolved_body = status, body
                    return
                await asyncio.sleep(0.5)

        await asyncio.gather(*(one(op) for op in unknown))
    finally:
        client.close()


# --- the checker ----------------------------------------------------------------------------------------------------

@dataclass
class ProductState:
    id: int
    stock: int
    initial: int
    per_user_limit: int | None


@dataclass
class Order:
    id: int
    key: str | None
    user: int
    product: int
    quantity: int
    created_at: float = 0.0  # epoch seconds, PostgreSQL's clock (this machine's)


def read_database(database_url: str, product_ids: list[int]) -> tuple[list[ProductState], list[Order]]:
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, stock, initial_stock, per_user_limit FROM products WHERE id = ANY(%s)",
                    (product_ids,))
        products = [ProductState(*row) for row in cur.fetchall()]
        cur.execute("SELECT o.id, k.key, o.user_id, o.product_id, o.quantity, extract(epoch FROM o.created_at)::float8 "
                    "FROM orders o "
                    "LEFT JOIN idempotency_keys k ON k.order_id = o.id WHERE o.product_id = ANY(%s)",
                    (product_ids,))
        orders = [Order(*row) for row in cur.fetchall()]
    conn.close()
    return products, orders


def check(history: list[Operation], products: list[ProductState], orders: list[Order],
          closed: list[list[float]] | None = None) -> list[str]:
    """Every violation of the invariants, in words (empty: the run is clean). ``closed``: wall-clock spans in which
    the waiting room may have been closed (it then sells without a pass)."""
    problems = []
    spans = closed or []

    def room_was_closed(order: Order) -> bool:
        return any(start - CLOSED_SLACK <= order.created_at <= end + CLOSED_SLACK for start, end in spans)

    sold: Counter[int] = Counter()
    for order in orders:
        sold[order.product] += order.quantity
    for product in products:
        if product.stock < 0 or product.stock + sold[product.id] != product.initial:
            problems.append(f"oversell: product {product.id} stock {product.stock} + sold {sold[product.id]} != "
                            f"{product.initial}")
    by_key: dict[str | None, list[Order]] = {}
    for order in orders:
        by_key.setdefault(order.key, []).append(order)
    for key, found in by_key.items():
        if key is None:
            problems.append(f"unexpected: {len(found)} order(s) without an Idempotency-Key, e.g. {found[0]}")
        elif len(found) > 1:
            problems.append(f"duplicated: key {key} has {len(found)} orders")
    ops = {op.key: op for op in history}
    for op in history:
        placed = by_key.get(op.key, [])
        status, body = op.final
        if op.kind == "ok" or status == 200:
            order_id = body.get("order_id")
            if not any(o.id == order_id and o.user == op.user and o.quantity == op.quantity and
                       o.product == op.product for o in placed):
                problems.append(f"lost: key {op.key} was answered order {order_id}, which does not exist as sold")
        elif status is None:
            problems.append(f"unresolved: key {op.key} still has no definite answer")
        elif placed:
            problems.append(f"unexpected: key {op.key} was refused ({status} "
                            f"{body.get('error', {}).get('code')}) yet has order {placed[0].id}")
    for key in by_key:
        if key is not None and key not in ops:
            problems.append(f"unexpected: order for key {key}, which no client sent")
    limits = {p.id: p.per_user_limit for p in products}
    owned: Counter[tuple[int, int]] = Counter()
    for order in orders:
        owned[(order.product, order.user)] += order.quantity
    for (product, user), units in owned.items():
        limit = limits.get(product)
        if limit is not None and units > limit:
            problems.append(f"limit: buyer {user} owns {units} of product {product}, limit {limit}")
    # Nobody buys around a waiting room: a purchase sent without a pass is refused, whatever happened meanwhile
    # (unless the room was closed then); and a pass buys once: two keys sold with one pass are two purchases.
    bought_with: dict[str, set[int]] = {}
    for op in history:
        if not op.room or op.final[0] != 200:
            continue
        placed = [o for o in by_key.get(op.key, []) if not room_was_closed(o)]
        if not placed:
            continue
        if op.queue_pass is None:
            problems.append(f"queue: key {op.key} bought product {op.product} without a pass")
        else:
            bought_with.setdefault(op.queue_pass, set()).update(o.id for o in placed)
    for used, ids in bought_with.items():
        if len(ids) > 1:
            problems.append(f"queue: one pass bought {len(ids)} orders ({sorted(ids)}): {used[:40]}…")
    # Dependencies down are 503s (nginx turns its own 502/504 into 503 too): any other 5xx breaks the contract.
    for op in history:
        for status in (op.status, op.resolved):
            if status is not None and status >= 500 and status != 503:
                problems.append(f"contract: key {op.key} was answered {status}")
    # Stock only falls during a run: a product said to have 0 left must end with 0.
    final = {p.id: p.stock for p in products}
    for op in history:
        for status, body in ((op.status, op.body), (op.resolved, op.resolved_body)):
            error = body.get("error", {}) if status == 409 else {}
            if error.get("code") == "out_of_stock" and error.get("remaining") == 0 and final.get(op.product):
                problems.append(f"undersell: key {op.key} was told product {op.product} had 0 left; it ends with "
                                f"{final[op.product]}")
    return problems


# --- a run, and the campaign ----------------------------------------------------------------------------------------

@dataclass
class RunResult:
    index: int
    seed: str
    operations: int
    kinds: dict[str, int]
    info_sold: int
    info_not_sold: int
    faults: dict[str, int]
    violations: list[str]
    seconds: float
    answers: dict[str, int] = field(default_factory=dict)  # "200", "409 out_of_stock", "none", … (first answers)
    room: dict[str, int] = field(default_factory=dict)  # the waiting room's product: bought with a pass, etc.


def room_figures(history: list[Operation]) -> dict[str, int]:
    """The waiting room's product: purchases with a pass that sold, and purchases without one (all refused)."""
    ops = [op for op in history if op.room]
    if not ops:
        return {}
    return {"bought_with_pass": sum(1 for op in ops if op.queue_pass and op.final[0] == 200),
            "sent_without_pass": sum(1 for op in ops if op.queue_pass is None),
            "refused_without_pass": sum(1 for op in ops if op.queue_pass is None and op.final[0] == 403)}


def answer_name(op: Operation) -> str:
    if op.status is None:
        return "no answer"
    error = op.body.get("error", {})
    name = f"{op.status} {error['code']}" if error.get("code") else str(op.status)
    return f"{name} ({error['outcome']})" if error.get("outcome") else name


def heal_fully(nemesis: Nemesis, attempts: int = 5) -> None:
    for attempt in range(attempts):
        try:
            nemesis.heal()
            return
        except Exception:
            if attempt == attempts - 1:
                raise
            time.sleep(1)


def wait_ready(cluster: Cluster, timeout: float = 60) -> None:
    """Every replica answers /readyz directly (PostgreSQL reachable), nginx answers, a standby, if any, is
    streaming (until it is, every commit waits for it), and a Redis Cluster, if any, serves every slot."""
    deadline = time.monotonic() + timeout
    if cluster.redis_nodes is not None:
        cluster.redis_nodes.wait_healthy(timeout)
    while cluster.standby is not None and cluster.postgres is not None and not streaming(cluster.postgres.url):
        if time.monotonic() > deadline:
            raise RuntimeError("the standby is not streaming after healing")
        time.sleep(0.2)
    ports = [int(p) for p in cluster.env["HC_REPLICA_PORTS"].split(",")]
    for url in [f"http://127.0.0.1:{p}/readyz" for p in ports] + [f"{cluster.url}/healthz"]:
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} not ready after healing")
            time.sleep(0.1)


def streaming(primary_url: str) -> bool:
    try:
        conn = psycopg2.connect(primary_url, connect_timeout=2)
    except psycopg2.Error:
        return False
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
            return bool(cur.fetchone()[0])
    finally:
        conn.close()


def one_run(cluster: Cluster, nemesis: Nemesis, index: int, plan: Plan, duration: float, out: Path) -> RunResult:
    started = time.monotonic()
    room = {"waiting_room": True, "admit_per_second": ROOM_RATE, "pass_seconds": ROOM_PASS_SECONDS}
    product_ids = [admin(cluster, "POST", "/admin/api/products",
                         {"name": f"chaos {plan.seed} {p.name}", "stock": p.stock, "per_user_limit": p.per_user_limit,
                          **(room if p.room else {})})["id"] for p in plan.products]
    rooms = [pid for pid, p in zip(product_ids, plan.products, strict=True) if p.room]
    nemesis.room_product, nemesis.closed_by, nemesis.closed = (rooms[0] if rooms else None), None, []
    before = Counter(nemesis.injected)
    stop = threading.Event()
    runner = threading.Thread(target=nemesis.run, args=(plan.faults, time.monotonic(), stop), name="nemesis")
    runner.start()
    try:
        history = asyncio.run(workload(cluster.url, plan, product_ids, duration))
    finally:
        stop.set()
        runner.join()
    heal_fully(nemesis)
    wait_ready(cluster)
    unknown = [op for op in history if op.kind == "info"]
    asyncio.run(resolve(cluster.url, unknown))
    products, orders = read_database(cluster.env["HC_DATABASE_URL"], product_ids)
    violations = check(history, products, orders, nemesis.closed)
    injected = Counter(nemesis.injected)
    injected.subtract(before)
    result = RunResult(
        index=index, seed=plan.seed, operations=len(history), kinds=dict(Counter(op.kind for op in history)),
        info_sold=sum(1 for op in unknown if op.resolved == 200),
        info_not_sold=sum(1 for op in unknown if op.resolved not in (200, None)),
        faults={k: v for k, v in injected.items() if v}, violations=violations,
        seconds=time.monotonic() - started, answers=dict(Counter(answer_name(op) for op in history)),
        room=room_figures(history))
    if violations:
        keep = out / f"run-{index}"
        keep.mkdir(parents=True, exist_ok=True)
        with (keep / "history.jsonl").open("w") as handle:
            for op in history:
                handle.write(json.dumps(asdict(op)) + "\n")
        shutil.copytree(cluster.log_dir, keep / "logs", dirs_exist_ok=True)
        (keep / "plan.json").write_text(json.dumps(asdict(plan), indent=2))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--seed", default="1", help="the campaign's seed; run i uses <seed>-<i>")
    parser.add_argument("--duration", type=float, default=20, help="seconds of purchases per run")
    parser.add_argument("--buyers", type=int, default=24, help="concurrent buyers")
    parser.add_argument("--faults-per-second", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "chaos")
    parser.add_argument("--data-dir", type=Path, help="the cluster's data dir (default: a temporary one)")
    parser.add_argument("--pg-standby", action="store_true",
                        help="PostgreSQL with a synchronous standby (`up --pg-standby`); adds the failover fault")
    parser.add_argument("--waiting-room", action="store_true",
                        help=f"a fifth product sold through a waiting room ({ROOM_RATE}/s): its buyers join, wait for "
                             f"their pass and buy with it; {PASSLESS_SHARE * 100:.0f}%% of its purchases carry no "
                             "pass and must all be refused")
    parser.add_argument("--redis-cluster", action="store_true",
                        help="a Redis Cluster (`up --redis-cluster`) with the limiter on; a master is killed instead "
                             "of Redis restarted")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    raise_file_limit()
    workdir = Path(tempfile.mkdtemp(prefix="hc-chaos-", dir="/tmp"))
    workdir.chmod(0o755)  # as root, PostgreSQL runs as another user who must reach its data dir
    data_dir = args.data_dir or workdir / "cluster"
    port = free_port()
    env = {**os.environ, "HC_RATE_LIMIT": "off", "HC_IP_RATE_LIMIT": "off", "HC_LOG_LEVEL": "WARNING",
           # Short timeouts so that a paused or dead piece costs seconds, not the whole run.
           "HC_DB_TIMEOUT": os.environ.get("HC_DB_TIMEOUT", "3")}
    if args.redis_cluster:
        # The limiter decides every purchase (buyers come from a small pool: some are refused), its keys spread
        # over the masters; every buyer comes from 127.0.0.1, so the address's limit is out of the way, yet decided.
        env.update({"HC_RATE_LIMIT": "20/s", "HC_RATE_BURST": "20", "HC_IP_RATE_LIMIT": "100000/s",
                    "HC_IP_RATE_BURST": "100000"})
    cluster = Cluster(data_dir=data_dir, port=port, replicas=3, environ=env, out=sys.stderr,
                      pg_standby=args.pg_standby, redis_cluster=args.redis_cluster)
    fault_kinds = (*FAULTS, FAILOVER) if args.pg_standby else FAULTS
    if args.redis_cluster:
        fault_kinds = tuple(REDIS_MASTER if kind == "redis-restart" else kind for kind in fault_kinds)
    results: list[RunResult] = []
    print(f"chaos: {args.runs} runs of {args.duration:g} s, seed {args.seed}, {args.buyers} buyers, about "
          f"{args.faults_per_second:g} faults/s; cluster in {data_dir}", flush=True)
    cluster.start()
    nemesis = Nemesis(cluster)
    try:
        for index in range(1, args.runs + 1):
            plan = make_plan(f"{args.seed}-{index}", duration=args.duration, buyers=args.buyers,
                             faults_per_second=args.faults_per_second, replicas=cluster.replicas, kinds=fault_kinds,
                             waiting_room=args.waiting_room)
            result = one_run(cluster, nemesis, index, plan, args.duration, args.out)
            results.append(result)
            kinds = result.kinds
            print(f"run {index:3d} seed {result.seed}: {result.operations:5d} ops (ok {kinds.get('ok', 0)}, fail "
                  f"{kinds.get('fail', 0)}, info {kinds.get('info', 0)} → sold {result.info_sold}, not sold "
                  f"{result.info_not_sold}); faults {sum(result.faults.values())} "
                  f"{dict(sorted(result.faults.items()))}; violations {len(result.violations)}"
                  + (f"; waiting room {result.room}" if result.room else ""), flush=True)
            for problem in result.violations[:10]:
                print(f"    VIOLATION: {problem}", flush=True)
    finally:
        nemesis.heal()
        cluster.stop()
        if not args.data_dir:
            shutil.rmtree(workdir, ignore_errors=True)
    total = summarise(results)
    print(total, flush=True)
    (args.out / "summary.json").write_text(json.dumps(
        {"runs": [asdict(r) for r in results], "seed": args.seed, "duration": args.duration,
         "buyers": args.buyers}, indent=2) + "\n")
    failing = [r for r in results if r.violations]
    if failing:
        print("FAILED: seeds " + ", ".join(r.seed for r in failing) + f"; histories and logs in {args.out}",
              flush=True)
        return 1
    return 0


def summarise(results: list[RunResult]) -> str:
    kinds: Counter[str] = Counter()
    faults: Counter[str] = Counter()
    answers: Counter[str] = Counter()
    room: Counter[str] = Counter()
    for r in results:
        kinds.update(r.kinds)
        faults.update(r.faults)
        answers.update(r.answers)
        room.update(r.room)
    rooms = (f"\nwaiting room: {room['bought_with_pass']:,} bought with a pass; {room['sent_without_pass']:,} sent "
             f"without one, {room['refused_without_pass']:,} refused 403") if room else ""
    return (f"total: {len(results)} runs, {sum(r.operations for r in results):,} operations (ok {kinds['ok']:,}, "
            f"fail {kinds['fail']:,}, info {kinds['info']:,} → sold {sum(r.info_sold for r in results):,}, not sold "
            f"{sum(r.info_not_sold for r in results):,}); faults {sum(faults.values()):,} "
            f"({', '.join(f'{k} {faults[k]}' for k in (*FAULTS, FAILOVER, REDIS_MASTER, *ROOM_FAULTS) if faults[k])}); "
            "violations "
            f"{sum(len(r.violations) for r in results)}\nfirst answers: "
            + ", ".join(f"{name} {n:,}" for name, n in answers.most_common()) + rooms)


if __name__ == "__main__":
    sys.exit(main())
