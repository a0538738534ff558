"""`make chaos`: a seeded fault campaign against a real cluster, with a client history and a checker.

One cluster (PostgreSQL, Redis, three replicas, nginx — `hypercheckout up`'s own ``Cluster``, driven in this
process so that the nemesis can kill and restart its pieces) serves every run. Each run:

1. creates fresh products: one with plenty of stock and a per-user limit, two with little stock that sell out
   during the run, one plain (with ``--waiting-room`` a fifth, sold through a waiting room);
2. sends purchases from concurrent buyers for ``--duration`` seconds — buyers drawn from a small pool (so that
   per-user limits bite), random products and quantities, most purchases with an Idempotency-Key of their own and
   a fifth without one (the keyless path, and its sold-out shortcut) — and writes each operation to the history:
   request, every answer (or timeout / connection error) with its time; joins and polls of the room too;
3. meanwhile a nemesis injects faults on a schedule drawn from the run's seed, overlapping: SIGKILL a replica and
   restart it, SIGSTOP/SIGCONT a replica, restart PostgreSQL (fast and immediate), kill and restart Redis, reload
   nginx; with ``--pg-standby`` also fail PostgreSQL over; with ``--redis-cluster`` (the limiter on) SIGKILL a
   Redis master instead of restarting Redis, and start it again (it rejoins as a replica). A fault is counted
   when it took effect; one whose target was already down is reported skipped, with why; one that fails to be
   injected fails the run;
4. heals everything, then retries every keyed operation whose outcome is unknown, with its key, until an answer
   says what became of its first try; waits until nothing is in flight; settles by the key's row those whose
   retries were only refused for themselves (429, 403, 503 overloaded);
5. checks the history against PostgreSQL, read in one snapshot (``campaign.checker``): no oversell, nothing lost,
   nothing sold that no answer accounts for, no order shared, products as created, per-user limits kept, no
   refusal that the end state contradicts, nobody around the waiting room, no 5xx but 503.

The same seed gives the same products, fault schedule and workload shape (what each buyer sends, in order);
timings, and so answers, differ. A run with a violation keeps its history and the cluster's logs and prints its
seed; the command then fails.

    python load-tests/chaos.py --runs 50 --seed 1 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from campaign.adminapi import admin  # noqa: E402
from campaign.checker import Expected, check  # noqa: E402
from campaign.client import PASSLESS_SHARE, refused_for_itself, resolve, workload  # noqa: E402
from campaign.database import last_order_id, read_database, settle_from_database, wait_quiet  # noqa: E402
from campaign.history import History, Operation  # noqa: E402
from campaign.holds import (  # noqa: E402
    HOLD_SECONDS,
    HoldFlow,
    Watcher,
    check_holds,
    hold_figures,
    hold_workload,
    read_holds,
    resolve_holds,
)
from campaign.nemesis import Nemesis  # noqa: E402
from campaign.payments import (  # noqa: E402
    PAY_HOLD_SECONDS,
    PayFlow,
    check_payments,
    pay_figures,
    pay_workload,
    read_money,
    settled,
    simulator_call,
)
from campaign.plan import (  # noqa: E402
    FAILOVER,
    FAULTS,
    PAYMENT_FAULTS,
    REDIS_MASTER,
    ROOM_FAULTS,
    ROOM_PASS_SECONDS,
    ROOM_RATE,
    Plan,
    make_plan,
)

from hypercheckout.cluster import Cluster, raise_file_limit  # noqa: E402
from hypercheckout.processes import free_port  # noqa: E402


@dataclass
class RunResult:
    index: int
    seed: str
    operations: int
    kinds: dict[str, int]
    info_sold: int
    info_not_sold: int
    faults: dict[str, int]  # applied: the faults that took effect
    violations: list[str]
    seconds: float
    answers: dict[str, int] = field(default_factory=dict)  # "200", "409 out_of_stock", "none", … (first answers)
    room: dict[str, int] = field(default_factory=dict)  # the waiting room's product: bought with a pass, etc.
    planned: int = 0  # faults the plan scheduled
    skipped: dict[str, int] = field(default_factory=dict)  # "kind: why" -> faults that could not take effect
    settled_by_database: int = 0  # unknown outcomes settled by the key's row (retries refused for themselves)
    keyless: dict[str, int] = field(default_factory=dict)  # purchases sent without a key: sent, sold, unknown
    queue_calls: dict[str, int] = field(default_factory=dict)  # joins and polls by answer
    holds: dict[str, int] = field(default_factory=dict)  # checkouts: held, confirmed, answers by kind
    payments: dict[str, int] = field(default_factory=dict)  # paid checkouts: payment outcomes, paid units, crashes


def room_figures(history: History) -> dict[str, int]:
    """The waiting room's product: purchases with a pass that sold, and purchases without one (all refused)."""
    ops = [op for op in history.operations if op.room]
    if not ops:
        return {}
    return {"bought_with_pass": sum(1 for op in ops if op.queue_pass and op.final[0] == 200),
            "sent_without_pass": sum(1 for op in ops if op.queue_pass is None),
            "refused_without_pass": sum(1 for op in ops if op.queue_pass is None and op.final[0] == 403),
            "joins": sum(1 for call in history.calls if call.kind == "join"),
            "joined": sum(1 for call in history.calls if call.kind == "join" and call.status == 202)}


def keyless_figures(history: History) -> dict[str, int]:
    ops = [op for op in history.operations if not op.keyed]
    return {"sent": len(ops), "sold": sum(1 for op in ops if op.kind == "ok"),
            "sold_out_refusals": sum(1 for op in ops if op.status == 409 and op.body.get("error", {}).get("code")
                                     == "out_of_stock" and op.body["error"].get("remaining") == 0),
            "unknown": sum(1 for op in ops if op.kind == "info")}


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


SETTLE_ATTEMPTS = 60


def settle_payments(cluster: Cluster, database_url: str, product: int) -> None:
    """After the run, healed: every hold has run out and the replicas' reconcilers (every second, a grace of one)
    settle what is in doubt; `payments reconcile` is asked too, as an operator would, until nothing is."""
    time.sleep(PAY_HOLD_SECONDS + 1)
    for _ in range(SETTLE_ATTEMPTS):
        done = subprocess.run([sys.executable, "-m", "hypercheckout", "payments", "reconcile", "--data-dir",
                               str(cluster.data_dir)], capture_output=True, text=True)
        if done.returncode == 0 and settled(database_url, product):
            return
        time.sleep(1)


def crashes_before_capture(cluster: Cluster) -> int:
    """Replicas the failpoint killed between an order's commit and its capture (their logs say so)."""
    return sum(log.read_text(errors="replace").count("failpoint: crashing between the order")
               for log in cluster.log_dir.glob("app-*.log"))


def one_run(cluster: Cluster, nemesis: Nemesis, index: int, plan: Plan, duration: float, out: Path) -> RunResult:
    started = time.monotonic()
    database_url = cluster.env["HC_DATABASE_URL"]
    crashed_before = crashes_before_capture(cluster)
    room = {"waiting_room": True, "admit_per_second": ROOM_RATE, "pass_seconds": ROOM_PASS_SECONDS}
    after_order = last_order_id(database_url)
    product_ids = [admin(cluster, "POST", "/admin/api/products",
                         {"name": f"chaos {plan.seed} {p.name}", "stock": p.stock, "per_user_limit": p.per_user_limit,
                          **(room if p.room else {})})["id"] for p in plan.products]
    expected = [Expected(pid, p.stock, p.per_user_limit, p.room)
                for pid, p in zip(product_ids, plan.products, strict=True)]
    rooms = [e.id for e in expected if e.room]
    held_product = admin(cluster, "POST", "/admin/api/products",
                         {"name": f"chaos {plan.seed} held", "stock": plan.holds_stock,
                          "hold_seconds": HOLD_SECONDS})["id"] if plan.holders else None
    paid_product = admin(cluster, "POST", "/admin/api/products",
                         {"name": f"chaos {plan.seed} paid", "stock": plan.pay_stock, "price": plan.pay_price,
                          "currency": "eur", "hold_seconds": PAY_HOLD_SECONDS})["id"] if plan.payers else None
    nemesis.reset(rooms[0] if rooms else None)
    stop = threading.Event()
    runner = threading.Thread(target=nemesis.run, args=(plan.faults, time.monotonic(), stop), name="nemesis")
    runner.start()
    watcher = Watcher(database_url, held_product, plan.holds_stock) if held_product else None
    pay_watcher = Watcher(database_url, paid_product, plan.pay_stock) if paid_product else None

    async def buyers() -> tuple[History, list[HoldFlow], list[PayFlow]]:
        async def nothing() -> list[Any]:
            return []

        simulator = cluster.env.get("HC_STRIPE_API_BASE", "")
        history, flows, paying = await asyncio.gather(
            workload(cluster.url, plan, product_ids, duration),
            hold_workload(cluster.url, plan.seed, held_product, plan.holders, plan.users, duration)
            if held_product is not None else nothing(),
            pay_workload(cluster.url, simulator, plan.seed, paid_product, plan.payers, plan.users, duration)
            if paid_product is not None else nothing())
        return history, flows, paying

    try:
        for each in (watcher, pay_watcher):
            if each is not None:
                each.start()
        history, flows, paying = asyncio.run(buyers())
    finally:
        stop.set()
        runner.join()
    for attempt in range(3):  # a replica may die again as it settles (--payments' failpoint): healed again
        heal_fully(nemesis)
        try:
            wait_ready(cluster)
            break
        except RuntimeError:
            if attempt == 2:
                raise
    unknown = [op for op in history.operations if op.kind == "info"]
    asyncio.run(resolve(cluster.url, unknown))
    if flows:
        asyncio.run(resolve_holds(cluster.url, flows))
    wait_quiet(cluster, database_url)
    for each in (watcher, pay_watcher):
        if each is not None:
            each.stop()
    by_database = [op for op in unknown if op.keyed and op.resolved is None and refused_for_itself(op)]
    settle_from_database(database_url, by_database)
    products, orders = read_database(database_url, product_ids, after_order=after_order,
                                     key_prefix=f"{plan.seed}/")
    violations = [f"nemesis: {error}" for error in nemesis.errors]
    if held_product is not None:
        # Judged by its own rules (campaign/holds.py); its orders are confirmed checkouts, not keyed purchases.
        orders = [order for order in orders if order.product != held_product]
        time.sleep(HOLD_SECONDS + 2)  # every hold has run out and been swept by now
        violations += watcher.problems if watcher is not None else []
        violations += check_holds(flows, plan.holds_stock, *read_holds(database_url, held_product))
    pay_figures_: dict[str, int] = {}
    if paid_product is not None:
        orders = [order for order in orders if order.product != paid_product]
        settle_payments(cluster, database_url, paid_product)
        snapshot, paid_checkouts, paid_orders, price = read_money(database_url, paid_product)
        intents = simulator_call(cluster.env["HC_STRIPE_API_BASE"], "GET", "/_simulator/intents")["intents"]
        violations += pay_watcher.problems if pay_watcher is not None else []
        violations += check_payments(paying, plan.pay_stock, snapshot, paid_checkouts, paid_orders, price, intents)
        pay_figures_ = {**pay_figures(paying, paid_checkouts), "crashes before capture": crashes_before_capture(
            cluster) - crashed_before, **({"watched": pay_watcher.readings} if pay_watcher is not None else {})}
    violations += check(history, expected, products, orders, nemesis.closed)
    ops = history.operations
    result = RunResult(
        index=index, seed=plan.seed, operations=len(ops), kinds=dict(Counter(op.kind for op in ops)),
        info_sold=sum(1 for op in unknown if op.resolved == 200),
        info_not_sold=sum(1 for op in unknown if op.resolved not in (200, None)),
        faults={k: v for k, v in nemesis.applied.items() if v}, violations=violations,
        seconds=time.monotonic() - started, answers=dict(Counter(answer_name(op) for op in ops)),
        room={**room_figures(history), **({"burst_rate_edits": nemesis.room_edits} if rooms else {})},
        planned=len(plan.faults), skipped=dict(nemesis.skipped),
        settled_by_database=len(by_database), keyless=keyless_figures(history),
        queue_calls=dict(Counter(f"{call.kind} {call.status}" for call in history.calls)),
        holds={**hold_figures(flows), **({"watched": watcher.readings} if watcher is not None else {})},
        payments=pay_figures_)
    if violations:
        keep = out / f"run-{index}"
        keep.mkdir(parents=True, exist_ok=True)
        with (keep / "history.jsonl").open("w") as handle:
            for op in ops:
                handle.write(json.dumps(asdict(op)) + "\n")
        with (keep / "holds.jsonl").open("w") as handle:
            for flow in flows:
                handle.write(json.dumps(asdict(flow)) + "\n")
        with (keep / "payments.jsonl").open("w") as handle:
            for pay_flow in paying:
                handle.write(json.dumps(asdict(pay_flow)) + "\n")
        with (keep / "queue-calls.jsonl").open("w") as handle:
            for call in history.calls:
                handle.write(json.dumps(asdict(call)) + "\n")
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
    parser.add_argument("--holds", action="store_true",
                        help=f"a product of its own that buyers hold (holds of {HOLD_SECONDS} s), then confirm, "
                             "release or abandon, beside the purchases; a watcher checks its units add up during the "
                             "run")
    parser.add_argument("--payments", action="store_true",
                        help="a priced product of its own, held and paid on the payment simulator (cards accepted, "
                             "declined, slow, never paid; some paid after the hold ran out), the simulator's faults "
                             f"({', '.join(PAYMENT_FAULTS)}) and replicas dying between an order's commit and its "
                             "capture; the checker's money rules")
    parser.add_argument("--redis-cluster", action="store_true",
                        help="a Redis Cluster (`up --redis-cluster`) with the limiter on; a master is killed instead "
                             "of Redis restarted")
    parser.add_argument("--limiter", action="store_true",
                        help="the limiter on, on the one Redis server that is restarted (implied by --redis-cluster)")
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
    if args.redis_cluster or args.limiter:
        # The limiter decides every purchase (on a cluster its keys spread over the masters); every buyer comes from
        # 127.0.0.1, so the address's limit is out of the way, yet decided. A buyer id is used by about 10 purchases
        # a second here (24 clients over a pool of 20-60 ids), so 10/s refuses some of them and bans a few, for 5 s:
        # bans begin and end within a run (at 20/s, as once published, this machine refused nobody: nothing of the
        # limiter was judged).
        env.update({"HC_RATE_LIMIT": "10/s", "HC_RATE_BURST": "10", "HC_BAN_SECONDS": "5",
                    "HC_IP_RATE_LIMIT": "100000/s", "HC_IP_RATE_BURST": "100000"})
    if args.payments:
        # Payments in doubt are settled within seconds (the run is short), and a replica dies now and then right
        # after committing a paid order, before capturing its payment.
        env.update({"HC_PAYMENT_GRACE_S": "1", "HC_PAYMENT_RECONCILE_S": "1",
                    "HC_FAILPOINT_CRASH_BEFORE_CAPTURE": os.environ.get("HC_FAILPOINT_CRASH_BEFORE_CAPTURE", "0.05")})
    cluster = Cluster(data_dir=data_dir, port=port, replicas=3, environ=env, out=sys.stderr,
                      pg_standby=args.pg_standby, redis_cluster=args.redis_cluster,
                      payments="simulator" if args.payments else "off")
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
                             waiting_room=args.waiting_room, holds=args.holds, payments=args.payments)
            result = one_run(cluster, nemesis, index, plan, args.duration, args.out)
            results.append(result)
            kinds = result.kinds
            print(f"run {index:3d} seed {result.seed}: {result.operations:5d} ops (ok {kinds.get('ok', 0)}, fail "
                  f"{kinds.get('fail', 0)}, info {kinds.get('info', 0)} → sold {result.info_sold}, not sold "
                  f"{result.info_not_sold}, {result.settled_by_database} of them by the key's row); keyless "
                  f"{result.keyless}; faults planned {result.planned}, applied {sum(result.faults.values())} "
                  f"{dict(sorted(result.faults.items()))}, skipped {sum(result.skipped.values())}; violations "
                  f"{len(result.violations)}" + (f"; waiting room {result.room}" if result.room else "")
                  + (f"; holds {dict(sorted(result.holds.items()))}" if result.holds else "")
                  + (f"; payments {dict(sorted(result.payments.items()))}" if result.payments else ""), flush=True)
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
    skipped: Counter[str] = Counter()
    answers: Counter[str] = Counter()
    room: Counter[str] = Counter()
    keyless: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    held: Counter[str] = Counter()
    paid: Counter[str] = Counter()
    for r in results:
        held.update(r.holds)
        paid.update(r.payments)
        kinds.update(r.kinds)
        faults.update(r.faults)
        skipped.update(r.skipped)
        answers.update(r.answers)
        room.update(r.room)
        keyless.update(r.keyless)
        calls.update(r.queue_calls)
    rooms = (f"\nwaiting room: {room['bought_with_pass']:,} bought with a pass; {room['sent_without_pass']:,} sent "
             f"without one, {room['refused_without_pass']:,} refused 403; rate edits in bursts "
             f"{room['burst_rate_edits']:,}; {room['joins']:,} joins, "
             f"{room['joined']:,} answered 202; joins and polls by answer: "
             + ", ".join(f"{name} {n:,}" for name, n in calls.most_common())) if room else ""
    kinds_order = (*FAULTS, FAILOVER, REDIS_MASTER, *ROOM_FAULTS, *PAYMENT_FAULTS)
    return (f"total: {len(results)} runs, {sum(r.operations for r in results):,} operations (ok {kinds['ok']:,}, "
            f"fail {kinds['fail']:,}, info {kinds['info']:,} → sold {sum(r.info_sold for r in results):,}, not sold "
            f"{sum(r.info_not_sold for r in results):,}; settled by the key's row "
            f"{sum(r.settled_by_database for r in results):,})\n"
            f"without a key: {keyless['sent']:,} sent, {keyless['sold']:,} sold, {keyless['sold_out_refusals']:,} "
            f"refused as sold out (remaining 0), {keyless['unknown']:,} with no definite answer\n"
            f"faults: planned {sum(r.planned for r in results):,}, applied {sum(faults.values()):,} "
            f"({', '.join(f'{k} {faults[k]}' for k in kinds_order if faults[k])}), skipped "
            f"{sum(skipped.values()):,}" + (f" ({', '.join(f'{k} {n}' for k, n in skipped.most_common())})"
                                             if skipped else "")
            + f"\nviolations {sum(len(r.violations) for r in results)}\nfirst answers: "
            + ", ".join(f"{name} {n:,}" for name, n in answers.most_common()) + rooms
            + (("\ncheckouts: " + ", ".join(f"{name} {n:,}" for name, n in held.most_common())) if held else "")
            + (("\npayments: " + ", ".join(f"{name} {n:,}" for name, n in paid.most_common())) if paid else ""))


if __name__ == "__main__":
    sys.exit(main())
