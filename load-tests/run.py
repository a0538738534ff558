"""`make scenarios`: the original's three load scenarios, the herd, the drop and the queued drop, headless, one
after another, checked and reported.

Starts private PostgreSQL and Redis and, for each scenario, nginx and three replicas with the scenario's settings
(or uses a running cluster: ``--url`` with ``--data-dir``). Before each scenario the stock is reset and bans are
cleared; after it the invariant is checked: ``stock + sold == initial``, every order id answered with a 200
exists in PostgreSQL, and the drain ends at exactly 0. The drop creates its own products, all starting at one
instant a few seconds ahead, and checks each: exactly its stock sold, and no order dated before its start. The
queued drop creates a product with a waiting room; its buyers join before the start and buy with their passes;
it reports when it sold out, how closely the order of service followed the order of joining (places from
and orders, both from PostgreSQL), and the admitted buyers' purchase latency, from Locust and from nginx's log.
Writes ``load-tests/results/<date>/report.md`` with a table and one chart per scenario (answers/s by outcome,
latency over time, per-replica share), for the drop a chart of orders per product after the start, and for the
queued drop one of each order's ticket number in the order served.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import Backends, percentile, private_backends  # noqa: E402

from hypercheckout.buyers.issuer import ISSUER, LocalIssuer  # noqa: E402
from hypercheckout.cluster import CLUSTER_ENV, raise_file_limit, read_env_file  # noqa: E402

PLENTY = 10_000_000
OUTCOMES = ("200", "409", "not_started", "429", "overloaded", "5xx", "other")
COLORS = {"200": "#16a34a", "409": "#d97706", "not_started": "#0891b2", "429": "#7c3aed", "overloaded": "#64748b",
          "5xx": "#dc2626", "other": "#2563eb"}
HERD_OK_P99_GOAL_MS = 500  # the herd's served buyers: p99 of their 200s
QUEUED_P99_GOAL_MS = 100  # the queued drop's admitted buyers: p99 of their purchases


@dataclass
class Scenario:
    name: str
    title: str
    user_class: str
    users: int
    spawn_rate: float
    stock: int
    seconds: float  # a cap for the drain and the herd, which end by themselves once sold out
    settings: dict[str, str] = field(default_factory=dict)
    sells_out: bool = False  # the stock must end at exactly 0
    processes: int = 1  # Locust worker processes (the herd's 10,000 users need more than one)
    drop_stocks: list[int] = field(default_factory=list)  # the drop: one product per stock, all starting at once
    lead: float = 0.0  # the drop: seconds from creating its products to their start
    queue_rate: int = 0  # the queued drop: its product's admit_per_second (0: no waiting room)
    hold_seconds: int = 0  # the checkout drop: its product's hold_seconds (0: no holds)
    price: int = 0  # the paid drop: its product's price (paid through the cluster's payment simulator)
    think: tuple[float, float] | None = None  # holding buyers: seconds from the hold to its confirm or payment


@dataclass
class Outcome:
    scenario: Scenario
    users: int
    seconds: float
    counts: dict[str, int]
    replicas: dict[str, int]
    p50: float
    p95: float
    p99: float
    failures: int
    stock: int
    sold: int
    initial: int
    orders_checked: int
    problems: list[str]
    history: list[dict[str, str]]
    per_second: dict[str, dict[str, int]]
    ok_p50: float = 0.0  # 200s only, client-side
    ok_p99: float = 0.0
    nginx_ok_p50: float = 0.0  # 200s only, nginx's request_time: the service's own share
    nginx_ok_p99: float = 0.0
    drop: list[dict[str, Any]] = field(default_factory=list)  # per product of the drop, from PostgreSQL
    queued: dict[str, Any] = field(default_factory=dict)  # the queued drop: fairness and timing
    checkouts: dict[str, Any] = field(default_factory=dict)  # the checkout drop: holds, latency, resale

    @property
    def ok(self) -> bool:
        return not self.problems


def drop_stocks(users: int) -> list[int]:
    """Five sales of different sizes, together half as many units as buyers: every one sells out."""
    return [max(1, round(users * share)) for share in (0.02, 0.05, 0.10, 0.15, 0.18)]


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    drop = drop_stocks(args.drop_users)
    # Every simulated buyer comes from 127.0.0.1 here, so the per-address limit would be one shared bucket: off.
    return [
        # The original project's own load test, unchanged: its Locust counts anything but 200 and 409 as a failure.
        Scenario("original", f"The original's load test: {args.original_users:,} users spawned 100 a second, 1 to 3 s "
                 "between purchases, only 200 and 409 count as success", "OriginalUser", users=args.original_users,
                 spawn_rate=100, stock=10_000, seconds=args.duration),
        Scenario("write-limit", "Write limit: 100 users, limiter off, stock plenty", "WriteLimitUser",
                 users=100, spawn_rate=100, stock=PLENTY, seconds=args.duration),
        # One Locust process sends ~30 requests/s per user here: a 5/s limit makes every user a spammer.
        Scenario("rate-limit-shield", "Rate-limit shield: 100 aggressive users, limiter on (5/s per buyer, "
                 "banned after 50 rejections)", "RateLimitShieldUser", users=100, spawn_rate=100, stock=PLENTY,
                 seconds=args.duration, settings={"HC_RATE_LIMIT": "5/s", "HC_RATE_BURST": "5",
                                                  "HC_BAN_AFTER": "50", "HC_IP_RATE_LIMIT": "off"}),
        Scenario("flash-sale-drain", f"Flash-sale drain: {args.drain_users:,} users, limiter off, "
                 f"{args.drain_stock:,} units draining to 0", "FlashSaleDrainUser", users=args.drain_users,
                 spawn_rate=min(1000, args.drain_users), stock=args.drain_stock, seconds=args.drain_timeout,
                 sells_out=True),
        # Real buyers, one unit each, all arriving within 10 s; each honours Retry-After.
        Scenario("herd", f"Herd: {args.herd_users:,} buyers arriving within 10 s for {args.herd_users:,} units, "
                 "limiter off, Retry-After honoured", "HerdUser", users=args.herd_users,
                 spawn_rate=args.herd_users / 3, stock=args.herd_users, seconds=args.drain_timeout,
                 sells_out=True, processes=args.herd_processes),
        # Five sales start at one instant; their buyers arrive early, are told when, and fire at the start.
        Scenario("drop", f"Drop: {args.drop_users:,} buyers of 5 products ({', '.join(map(str, drop))} units) that "
                 f"start at the same instant, {args.drop_lead:g} s after creation", "DropUser", users=args.drop_users,
                 spawn_rate=args.drop_users / 3, stock=sum(drop), seconds=args.drop_lead + args.drain_timeout,
                 sells_out=True, processes=args.herd_processes, drop_stocks=drop, lead=args.drop_lead),
        # Everyone joins the waiting room before the start; it admits queue_rate buyers a second, in ticket order.
        Scenario("queued-drop", f"Queued drop: {args.queue_users:,} buyers join a waiting room before the start "
                 f"of a {args.queue_stock:,}-unit sale admitting {args.queue_rate:,} a second", "QueuedUser",
                 users=args.queue_users, spawn_rate=args.queue_users / max(1.0, args.queue_lead - 4),
                 stock=args.queue_stock, seconds=args.queue_lead + args.drain_timeout, sells_out=True,
                 processes=args.herd_processes, lead=args.queue_lead, queue_rate=args.queue_rate),
        # Buyers hold a unit, then confirm it, release it or walk away; what is given back is sold again. The
        # walked-away units come back a hold later, 30% of them walked away from again: the tail lasts several holds.
        Scenario("checkout-drop", f"Checkout drop: {args.checkout_users:,} buyers hold one of {args.checkout_stock:,} "
                 f"units for {args.checkout_hold} s; 30% walk away, 10% release, 60% confirm after "
                 f"{args.checkout_think[0]:g}-{args.checkout_think[1]:g} s",
                 "CheckoutUser", users=args.checkout_users, spawn_rate=args.checkout_users / 3,
                 stock=args.checkout_stock, seconds=args.checkout_hold * 12 + args.drain_timeout, sells_out=True,
                 processes=args.herd_processes, hold_seconds=args.checkout_hold, think=args.checkout_think),
        # The same, paid: a hold is confirmed by its payment on the simulator; declined and abandoned payments let
        # their units go at the hold's end. Payments in doubt are settled within seconds (grace 2 s).
        Scenario("paid-drop", f"Paid drop: {args.paid_users:,} buyers hold one of {args.paid_stock:,} units at "
                 f"{PAID_PRICE / 100:.2f} USD for {args.paid_hold} s and pay on the payment simulator; 10% declined "
                 f"cards, 20% never pay, {args.paid_think[0]:g}-{args.paid_think[1]:g} s after the hold", "PaidUser",
                 users=args.paid_users, spawn_rate=args.paid_users / 3,
                 stock=args.paid_stock, seconds=args.paid_hold * 12 + args.drain_timeout, sells_out=True,
                 processes=args.herd_processes, hold_seconds=args.paid_hold, price=PAID_PRICE, think=args.paid_think,
                 settings={"HC_PAYMENT_GRACE_S": "2", "HC_PAYMENT_RECONCILE_S": "1"}),
    ]


class ExternalCluster:
    """A cluster already running (``hypercheckout up``), found through its data dir."""

    def __init__(self, url: str, data_dir: Path) -> None:
        self.url = url
        self.data_dir = data_dir
        self.env = read_env_file(data_dir / CLUSTER_ENV)

    def payments_url(self) -> str:
        """The cluster's payment simulator (`up` starts one)."""
        return self.env["HC_STRIPE_API_BASE"]

    def cli(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "hypercheckout", *args, "--data-dir", str(self.data_dir)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"hypercheckout {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    @contextmanager
    def cluster(self, **settings: str) -> Iterator[str]:
        if settings:
            print(f"  (using the running cluster as it is configured; this scenario expects {settings})")
        yield self.url


def run_locust(scenario: Scenario, url: str, out: Path, after_sold_out: float,
               extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    prefix = out / scenario.name
    tally_path = out / f"{scenario.name}-tally.json"
    command = [sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py"), "--headless", "--only-summary",
               "-u", str(scenario.users), "-r", f"{scenario.spawn_rate:g}", "-t", f"{scenario.seconds:g}s",
               "--host", url, "--csv", str(prefix), "--csv-full-history", "--stop-timeout", "5",
               "--loglevel", "WARNING", scenario.user_class]
    if scenario.processes > 1:
        command[-1:-1] = ["--processes", str(scenario.processes)]
    env = {**os.environ, "HC_LOAD_OUTCOMES": str(tally_path), "HC_LOAD_AFTER_SOLD_OUT": f"{after_sold_out:g}",
           **(extra_env or {})}
    # Progress lines (and Locust's closing summary) go straight to the terminal. Locust exits 1 when any request
    # failed; the report says so, the run goes on.
    done = subprocess.run(command, env=env)
    parts = sorted(out.glob(f"{tally_path.name}.*"))  # one per Locust process that ran users
    if not parts:
        raise RuntimeError(f"locust wrote no results (exit {done.returncode})")
    tally: dict[str, Any] = {"per_second": {}, "replicas": {}, "order_ids": [], "ok_ms": [], "sold_out_at": None}
    for part in parts:
        piece = json.loads(part.read_text())
        part.unlink()
        for second, counts in piece["per_second"].items():
            merged = tally["per_second"].setdefault(second, {})
            for outcome, n in counts.items():
                merged[outcome] = merged.get(outcome, 0) + n
        for replica, n in piece["replicas"].items():
            tally["replicas"][replica] = tally["replicas"].get(replica, 0) + n
        tally["order_ids"] += piece["order_ids"]
        tally["ok_ms"] += piece["ok_ms"]
        if piece["sold_out_at"] is not None:
            tally["sold_out_at"] = min(filter(None, (tally["sold_out_at"], piece["sold_out_at"])))
    tally["per_second"] = dict(sorted(tally["per_second"].items()))
    return tally


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def check_orders(database_url: str, order_ids: list[int]) -> list[str]:
    """Every order id a buyer was told of exists, once."""
    problems = []
    if len(set(order_ids)) != len(order_ids):
        problems.append(f"{len(order_ids) - len(set(order_ids))} order ids were answered twice")
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM orders WHERE id = ANY(%s)", (sorted(set(order_ids)),))
        found = cur.fetchone()[0]
    conn.close()
    if found != len(set(order_ids)):
        problems.append(f"{len(set(order_ids)) - found} acknowledged orders are missing from PostgreSQL")
    return problems


def check_verified(database_url: str, order_ids: list[int]) -> list[str]:
    """With verified buyers: every acknowledged order is kept under the number of the buyer its token named (a
    Locust user's ``load-<n>``), never under a number a body carried."""
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*), count(DISTINCT b.id) FROM orders o JOIN buyers b ON b.id = o.user_id "
                    "WHERE o.id = ANY(%s) AND b.issuer = %s AND b.subject LIKE 'load-%%'",
                    (sorted(set(order_ids)), ISSUER))
        verified, buyers = cur.fetchone()
    conn.close()
    print(f"  {verified:,} of {len(set(order_ids)):,} acknowledged orders are verified buyers' ({buyers:,} buyers)",
          flush=True)
    if verified != len(set(order_ids)):
        return [f"{len(set(order_ids)) - verified} acknowledged orders are not under a verified buyer's number"]
    return []


def run_scenario(scenario: Scenario, target: Backends | ExternalCluster, out: Path,
                 after_sold_out: float, issuer: LocalIssuer | None = None) -> Outcome:
    """One scenario; with ``issuer`` the replicas verify buyers' tokens (HC_BUYER_AUTH=jwt) and Locust's users mint
    theirs with it."""
    print(f"\n== {scenario.title}", flush=True)
    drop: list[dict[str, Any]] = []
    verified = issuer.settings_env() if issuer is not None else {}
    with target.cluster(**scenario.settings, **verified) as url:
        target.cli("unban", "--all")
        extra_env = {"HC_LOAD_ISSUER": str(issuer.directory)} if issuer is not None else {}
        if scenario.drop_stocks:
            starts_at = (datetime.now(UTC) + timedelta(seconds=scenario.lead)).isoformat()
            ids = [json.loads(target.cli("product", "create", "--name", f"Drop {i + 1}", "--stock", str(stock),
                                         "--starts-at", starts_at, "--json"))["id"]
                   for i, stock in enumerate(scenario.drop_stocks)]
            extra_env["HC_LOAD_PRODUCTS"] = ",".join(map(str, ids))
        elif scenario.queue_rate:
            starts_at = (datetime.now(UTC) + timedelta(seconds=scenario.lead)).isoformat()
            queued_id = json.loads(target.cli(
                "product", "create", "--name", "Queued drop", "--stock", str(scenario.stock), "--starts-at",
                starts_at, "--waiting-room", "--admit-per-second", str(scenario.queue_rate), "--pass-seconds", "120",
                "--json"))["id"]
            extra_env["HC_LOAD_PRODUCT"] = str(queued_id)
        elif scenario.hold_seconds:
            priced = ["--price", str(scenario.price), "--currency", "usd"] if scenario.price else []
            held_id = json.loads(target.cli(
                "product", "create", "--name", "Paid drop" if scenario.price else "Checkout drop", "--stock",
                str(scenario.stock), "--hold-seconds", str(scenario.hold_seconds), *priced, "--json"))["id"]
            extra_env["HC_LOAD_PRODUCT"] = str(held_id)
            if scenario.think is not None:
                extra_env["HC_LOAD_THINK_S"] = ",".join(f"{s:g}" for s in scenario.think)
            if scenario.price:
                extra_env["HC_LOAD_SIMULATOR"] = target.payments_url()
        else:
            target.cli("reset", "--stock", str(scenario.stock))
        access_log = getattr(target, "access_log", None)  # nginx's, when the cluster is ours
        log_from = access_log.stat().st_size if access_log is not None and access_log.exists() else None
        started = time.monotonic()
        tally = run_locust(scenario, url, out, after_sold_out, extra_env)
        seconds = time.monotonic() - started
        money: dict[str, Any] = {}
        if scenario.price:
            money = settle_and_count_money(target, held_id, scenario.price)
        status = json.loads(target.cli("status", "--json"))
    # nginx's own view of the purchases (request_time, from its JSON access log), once it has flushed it.
    purchases = [e for e in read_log(access_log, log_from) if e.get("uri") == "/purchase"]
    purchase_seconds = [float(e["request_time"]) for e in purchases]
    ok_seconds = [float(e["request_time"]) for e in purchases if e.get("status") == 200]
    if scenario.hold_seconds:  # its buyers' successes are holds (201)
        ok_seconds = [float(e["request_time"]) for e in read_log(access_log, log_from)
                      if e.get("uri") == "/checkouts" and e.get("status") == 201]
    problems = []
    queued: dict[str, Any] = {}
    checkouts: dict[str, Any] = {}
    if scenario.hold_seconds:
        checkouts = checkout_results(target.env["HC_DATABASE_URL"], held_id)
        if money:
            checkouts["money"] = money
            problems += money["problems"]
        product = {"stock": checkouts["stock"], "sold": checkouts["sold"], "initial_stock": checkouts["initial"]}
        problems += sale_problems(checkouts)
        if checkouts["held"]:
            problems.append(f"{checkouts['held']} units still held at the end")
        holds = [e for e in read_log(access_log, log_from) if e.get("uri") == "/checkouts"]
        hold_seconds = [float(e["request_time"]) for e in holds if e.get("status") == 201]
        checkouts["nginx_hold_p50"] = 1000 * percentile(hold_seconds, 0.50)
        checkouts["nginx_hold_p99"] = 1000 * percentile(hold_seconds, 0.99)
    elif scenario.drop_stocks:
        drop = drop_results(target.env["HC_DATABASE_URL"], ids)
        for row in drop:
            problems += sale_problems(row, f"product {row['id']}: ")
        product = {"stock": sum(r["stock"] for r in drop), "sold": sum(r["sold"] for r in drop),
                   "initial_stock": sum(r["initial"] for r in drop)}
    elif scenario.queue_rate:
        queued = queued_results(target.env["HC_DATABASE_URL"], queued_id)
        product = {"stock": queued["stock"], "sold": queued["sold"], "initial_stock": queued["initial"]}
        problems += sale_problems(queued)
        if queued["unticketed"]:
            problems.append(f"{queued['unticketed']} orders by buyers who never joined the queue")
    else:
        product = status["products"][0]
        if product["stock"] + product["sold"] != product["initial_stock"]:
            problems.append(f"stock {product['stock']} + sold {product['sold']} != {product['initial_stock']}")
        if scenario.sells_out and product["stock"] != 0:
            problems.append(f"the sale ended with {product['stock']} units left")
    problems += check_orders(target.env["HC_DATABASE_URL"], tally["order_ids"])
    if issuer is not None:
        problems += check_verified(target.env["HC_DATABASE_URL"], tally["order_ids"])

    stats = next(r for r in read_rows(out / f"{scenario.name}_stats.csv") if r["Name"] == "Aggregated")
    history = [r for r in read_rows(out / f"{scenario.name}_stats_history.csv") if r["Name"] == "Aggregated"]
    counts = {o: 0 for o in OUTCOMES}
    for second in tally["per_second"].values():
        for outcome, count in second.items():
            counts[outcome] += count
    failures = int(stats["Failure Count"])
    if failures:
        problems.append(f"{failures} failed requests (not 200, 409, 429 or 503 overloaded; see "
                        f"{scenario.name}_failures.csv)")
    else:  # Locust writes them anyway, header only
        for kind in ("failures", "exceptions"):
            (out / f"{scenario.name}_{kind}.csv").unlink(missing_ok=True)
    result = Outcome(
        scenario=scenario, users=scenario.users, seconds=seconds, counts=counts, replicas=tally["replicas"],
        p50=float(stats["50%"]), p95=float(stats["95%"]), p99=float(stats["99%"]), failures=failures,
        stock=product["stock"], sold=product["sold"], initial=product["initial_stock"],
        orders_checked=len(tally["order_ids"]), problems=problems, history=history,
        per_second=tally["per_second"], ok_p50=percentile(tally["ok_ms"], 0.50),
        ok_p99=percentile(tally["ok_ms"], 0.99), drop=drop, queued=queued, checkouts=checkouts,
        nginx_ok_p50=1000 * percentile(ok_seconds, 0.50), nginx_ok_p99=1000 * percentile(ok_seconds, 0.99),
    )
    if queued:
        admitted = [r for r in read_rows(out / f"{scenario.name}_stats.csv")
                    if r["Name"] == "POST /purchase (admitted)"]
        queued["purchase_p50"] = float(admitted[0]["50%"]) if admitted else 0.0
        queued["purchase_p99"] = float(admitted[0]["99%"]) if admitted else 0.0
        queued["purchases"] = int(admitted[0]["Request Count"]) if admitted else 0
        queued["nginx_p50"] = 1000 * percentile(purchase_seconds, 0.50)
        queued["nginx_p99"] = 1000 * percentile(purchase_seconds, 0.99)
        print(f"  queued drop: {queued['joined']:,} joined, sold out {queued['sold_out_ms']:.0f} ms after the start; "
              f"{queued['in_first']:,} of {queued['orders']:,} buyers held one of the first {queued['orders']:,} "
              f"tickets, the latest served ticket {queued['latest_ticket']:,}, out-of-order pairs "
              f"{100 * queued['inversions']:.2f}%; purchases by admitted buyers p50 {queued['purchase_p50']:.0f} ms, "
              f"p99 {queued['purchase_p99']:.0f} ms (Locust), p50 {queued['nginx_p50']:.0f} ms, p99 "
              f"{queued['nginx_p99']:.0f} ms (nginx)", flush=True)
    if checkouts:
        rows = {r["Name"]: r for r in read_rows(out / f"{scenario.name}_stats.csv")}
        hold_row = rows.get("POST /checkouts", {})
        checkouts["hold_p50"] = float(hold_row.get("50%", 0))
        checkouts["hold_p99"] = float(hold_row.get("99%", 0))
        checkouts["hold_requests"] = int(hold_row.get("Request Count", 0))
        confirm_row = rows.get("POST /checkouts/{id}/confirm", rows.get("POST /checkouts/{id}/confirm (paid)", {}))
        checkouts["confirm_p50"] = float(confirm_row.get("50%", 0))
        checkouts["confirm_p99"] = float(confirm_row.get("99%", 0))
        print(f"  checkout drop: {checkouts['by_status']}; {checkouts['rebooked']} re-booked; holds p50 "
              f"{checkouts['hold_p50']:.0f} ms, p99 {checkouts['hold_p99']:.0f} ms (Locust), p50 "
              f"{checkouts['nginx_hold_p50']:.0f} ms, p99 {checkouts['nginx_hold_p99']:.0f} ms (nginx); units given "
              f"back ({checkouts['returned']:,} holds) taken again after p50 {checkouts['resale_p50_ms']:.0f} ms, "
              f"p99 {checkouts['resale_p99_ms']:.0f} ms", flush=True)
    verdict = "invariant holds" if result.ok else "PROBLEMS: " + "; ".join(problems)
    total = sum(counts.values())
    print(f"  {total:,} answers in {seconds:.0f} s ({total / seconds:,.0f}/s): "
          + ", ".join(f"{k} {v:,}" for k, v in counts.items() if v)
          + f"; p50 {result.p50:.0f} ms, p95 {result.p95:.0f} ms, p99 {result.p99:.0f} ms (200s: p50 "
            f"{result.ok_p50:.0f} ms, p99 {result.ok_p99:.0f} ms; at nginx p50 {result.nginx_ok_p50:.0f} ms, "
            f"p99 {result.nginx_ok_p99:.0f} ms); failures {failures:,}")
    for row in drop:
        print(f"  product {row['id']}: {row['sold']:,} of {row['initial']:,} sold, first order "
              f"{row['first_ms']:.0f} ms after the start, sold out {row['sold_out_ms']:.0f} ms after it, "
              f"{row['early']} orders before it")
    print(f"  stock {result.stock:,} + sold {result.sold:,} = {result.initial:,}; "
          f"{result.orders_checked:,} acknowledged orders found in PostgreSQL; {verdict}", flush=True)
    return result


def drop_results(database_url: str, product_ids: list[int]) -> list[dict[str, Any]]:
    """Per product of the drop, read from PostgreSQL: stock, units sold, orders dated before the start, and when
    (after the start, by the orders' created_at) the first order and the last one were placed."""
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("""
            SELECT p.id, p.stock, p.initial_stock, p.starts_at, COALESCE(sum(o.quantity), 0), count(o.id),
                   count(o.id) FILTER (WHERE o.created_at < p.starts_at),
                   extract(epoch FROM min(o.created_at) - p.starts_at) * 1000,
                   extract(epoch FROM max(o.created_at) - p.starts_at) * 1000,
                   array_agg(extract(epoch FROM o.created_at - p.starts_at) ORDER BY o.created_at)
                       FILTER (WHERE o.id IS NOT NULL)
            FROM products p LEFT JOIN orders o ON o.product_id = p.id
            WHERE p.id = ANY(%s) GROUP BY p.id ORDER BY p.id""", (product_ids,))
        rows = cur.fetchall()
    conn.close()
    return [{"id": r[0], "stock": r[1], "initial": r[2], "starts_at": r[3].isoformat(), "sold": int(r[4]),
             "orders": r[5], "early": r[6], "first_ms": float(r[7] or 0), "sold_out_ms": float(r[8] or 0),
             "order_times": [float(t) for t in r[9] or []]} for r in rows]


def sale_problems(row: dict[str, Any], naming: str = "") -> list[str]:
    """What is wrong with a scheduled sale that should have sold out exactly: the invariant, stock left, orders
    dated before its start."""
    problems = []
    if row["stock"] + row["sold"] != row["initial"]:
        problems.append(f"{naming}stock {row['stock']} + sold {row['sold']} != {row['initial']}")
    if row["stock"] != 0:
        problems.append(f"{naming}the sale ended with {row['stock']} units left")
    if row["early"]:
        problems.append(f"{naming}{row['early']} orders dated before the start")
    return problems


def read_log(path: Path | None, offset: int | None) -> list[dict[str, Any]]:
    """nginx's JSON access-log lines written since ``offset`` (none without a log of our own)."""
    if path is None or offset is None or not path.exists():
        return []
    with path.open("rb") as log:
        log.seek(offset)
        return [json.loads(line) for line in log.read().splitlines() if line.strip().startswith(b"{")]


PAID_PRICE = 1999  # the paid drop's price, in cents
SETTLE_ATTEMPTS = 60


def settle_and_count_money(target: Backends | ExternalCluster, product_id: int, price: int) -> dict[str, Any]:
    """After the paid drop: once every payment is settled (`payments reconcile`, as often as needed), the money as
    the simulator has it against the units PostgreSQL has sold: captured = price x units sold, every authorization
    captured or cancelled, none captured twice."""
    database_url = target.env["HC_DATABASE_URL"]
    for _ in range(SETTLE_ATTEMPTS):
        target.cli("payments", "reconcile")
        with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM checkouts WHERE product_id = %s AND (payment_status IN "
                        "('capturing', 'cancelling') OR "
                        "(payment_status = 'pending' AND (status <> 'held' OR expires_at < now())))", (product_id,))
            open_payments = cur.fetchone()[0]
        conn.close()
        if open_payments == 0:
            break
        time.sleep(1)
    with urllib.request.urlopen(f"{target.payments_url()}/_simulator/intents", timeout=10) as answer:
        intents = json.load(answer)["intents"]
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM checkouts WHERE product_id = %s", (product_id,))
        mine = {row[0] for row in cur.fetchall()}
        cur.execute("SELECT COALESCE(sum(quantity), 0) FROM orders WHERE product_id = %s", (product_id,))
        sold = int(cur.fetchone()[0])
    conn.close()
    intents = [i for i in intents if (i.get("metadata") or {}).get("checkout_id") in mine]
    captured = sum(int(i["amount_received"]) for i in intents)
    statuses = Counter(i["status"] for i in intents)
    problems = []
    if captured != price * sold:
        problems.append(f"money: {captured} captured, {sold} units sold at {price}: {price * sold}")
    if statuses["requires_capture"]:
        problems.append(f"money: {statuses['requires_capture']} authorizations neither captured nor cancelled")
    twice = sum(1 for i in intents if i["captures"] > 1)
    if twice:
        problems.append(f"money: {twice} payments captured more than once")
    print(f"  paid drop: {captured / 100:,.2f} USD captured for {sold:,} units sold at {price / 100:.2f}; payments "
          f"{dict(statuses)}", flush=True)
    return {"captured": captured, "expected": price * sold, "sold": sold, "intents": dict(statuses),
            "problems": problems}


def checkout_results(database_url: str, product_id: int) -> dict[str, Any]:
    """The checkout drop, from PostgreSQL: the invariant's figures (stock + held + sold = initial), checkouts by
    how they ended, and for each hold given back (released, or expired: from the instant it ran out) how long
    until the product's next hold took units again — what a release or an expiry costs the next buyer."""
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("""
            SELECT p.stock, p.held, p.initial_stock, p.starts_at,
                   (SELECT COALESCE(sum(quantity), 0) FROM orders WHERE product_id = p.id),
                   (SELECT count(*) FROM orders WHERE product_id = p.id),
                   (SELECT count(*) FROM orders WHERE product_id = p.id AND created_at < p.starts_at)
            FROM products p WHERE p.id = %s""", (product_id,))
        stock, held, initial, _, sold, orders, early = cur.fetchone()
        cur.execute("SELECT status, count(*), count(*) FILTER (WHERE rebooked) FROM checkouts WHERE product_id = %s "
                    "GROUP BY status", (product_id,))
        rows = cur.fetchall()
        cur.execute("""
            SELECT extract(epoch FROM (SELECT min(n.created_at) FROM checkouts n
                                       WHERE n.product_id = c.product_id AND n.created_at >= c.ended_at)
                                      - c.ended_at) * 1000
            FROM checkouts c WHERE c.product_id = %s AND c.status IN ('released', 'expired')""", (product_id,))
        delays = [float(d) for (d,) in cur.fetchall() if d is not None]
    conn.close()
    return {"id": product_id, "stock": stock, "held": held, "initial": initial, "sold": int(sold),
            "orders": orders, "early": early, "by_status": {status: n for status, n, _ in rows},
            "rebooked": sum(r for _, _, r in rows), "returned": len(delays),
            "resale_p50_ms": percentile(delays, 0.50), "resale_p99_ms": percentile(delays, 0.99)}


def queued_results(database_url: str, product_id: int) -> dict[str, Any]:
    """The queued drop, from PostgreSQL (orders, by created_at, and each buyer's place in the line): the
    invariant's figures, when it sold out, and how fair the order of service was to the order of joining."""
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("""
            SELECT p.stock, p.initial_stock, p.starts_at, COALESCE(sum(o.quantity), 0), count(o.id),
                   count(o.id) FILTER (WHERE o.created_at < p.starts_at),
                   extract(epoch FROM max(o.created_at) - p.starts_at) * 1000,
                   array_agg(o.user_id ORDER BY o.created_at, o.id) FILTER (WHERE o.id IS NOT NULL)
            FROM products p LEFT JOIN orders o ON o.product_id = p.id
            WHERE p.id = %s GROUP BY p.id""", (product_id,))
        stock, initial, starts_at, sold, orders, early, sold_out_ms, buyers = cur.fetchone()
        cur.execute("""
            SELECT q.user_id, q.place FROM queue_places q JOIN products p
              ON p.id = q.product_id AND p.room_generation = q.generation
            WHERE q.product_id = %s""", (product_id,))
        numbers = {int(user): int(place) for user, place in cur.fetchall()}
    conn.close()
    served = [numbers.get(user) for user in buyers or []]
    tickets = [n for n in served if n is not None]
    inversions = sum(1 for i in range(len(tickets)) for j in range(i + 1, len(tickets)) if tickets[j] < tickets[i])
    pairs = len(tickets) * (len(tickets) - 1) // 2
    return {"id": product_id, "stock": stock, "initial": initial, "starts_at": starts_at.isoformat(),
            "sold": int(sold), "orders": orders, "early": early, "sold_out_ms": float(sold_out_ms or 0),
            "joined": len(numbers), "unticketed": len(served) - len(tickets),
            "in_first": sum(1 for n in tickets if n <= orders), "latest_ticket": max(tickets, default=0),
            "inversions": inversions / pairs if pairs else 0.0, "tickets_in_order_served": tickets}


def _one_chart() -> tuple[Any, Any]:
    """A figure with one set of axes, drawn off-screen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(9, 4))


def _save(fig: Any, ax: Any, path: Path, legend: str) -> None:
    import matplotlib.pyplot as plt

    ax.legend(loc=legend, fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def queued_chart(result: Outcome, path: Path) -> None:
    tickets = result.queued["tickets_in_order_served"]
    fig, ax = _one_chart()
    ax.scatter(range(1, len(tickets) + 1), tickets, s=4, color="#2563eb")
    ax.plot([1, len(tickets)], [1, len(tickets)], color="#16a34a", lw=1, label="served exactly in ticket order")
    ax.set(title="The queued drop: ticket number of each order, in the order the orders were placed",
           xlabel="order (by PostgreSQL created_at)", ylabel="buyer's ticket (order of joining)")
    _save(fig, ax, path, "upper left")


def drop_chart(result: Outcome, path: Path) -> None:
    fig, ax = _one_chart()
    for row in result.drop:
        times = row["order_times"]
        ax.step([0.0, *times], [0, *range(1, len(times) + 1)], where="post",
                label=f"product {row['id']} ({row['initial']:,} units): sold out at {row['sold_out_ms'] / 1000:.2f} s")
    ax.axvline(0, color="#0f172a", linewidth=1)
    ax.set(title="The drop: orders placed per product, by seconds after the common start (PostgreSQL created_at)",
           xlabel="s after starts_at", ylabel="orders")
    _save(fig, ax, path, "lower right")


def chart(result: Outcome, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rates, latency, share) = plt.subplots(1, 3, figsize=(15, 4), gridspec_kw={"width_ratios": [3, 3, 1.4]})
    fig.suptitle(result.scenario.title, fontsize=11)
    seconds = sorted(int(s) for s in result.per_second)
    if seconds:
        t0 = seconds[0]
        xs = [s - t0 for s in seconds]
        for outcome in OUTCOMES:
            ys = [result.per_second[str(s)].get(outcome, 0) for s in seconds]
            if any(ys):
                rates.plot(xs, ys, label=outcome, color=COLORS[outcome], linewidth=1.6)
    rates.set(title="answers/s by status", xlabel="s", ylabel="answers/s")
    rates.legend(loc="upper right", fontsize=8)
    rates.grid(alpha=0.3)
    if result.history:
        t0 = int(result.history[0]["Timestamp"])
        xs = [int(r["Timestamp"]) - t0 for r in result.history]
        for column, style in (("50%", "-"), ("95%", "--"), ("99%", ":")):
            ys = [float(r[column]) if r[column] not in ("", "N/A") else float("nan") for r in result.history]
            latency.plot(xs, ys, style, label=f"p{column[:-1]}", color="#0f172a", linewidth=1.3)
    latency.set(title="latency (cumulative percentiles)", xlabel="s", ylabel="ms")
    latency.legend(loc="upper left", fontsize=8)
    latency.grid(alpha=0.3)
    names = sorted(result.replicas)
    total = sum(result.replicas.values()) or 1
    share.bar(names, [100 * result.replicas[n] / total for n in names], color="#60a5fa")
    share.set(title="share per replica", ylabel="% of answers", ylim=(0, 100))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def goals(results: list[Outcome]) -> list[tuple[str, str, str, bool]]:
    """Each scenario's goal lines: (scenario, goal, what was measured, met)."""
    found = []
    for r in results:
        success = "200 and 409" if r.scenario.user_class == "OriginalUser" else "200, 409, 429 and 503 overloaded"
        found.append((r.scenario.name, f"0 failures (success: {success}), the invariant holds",
                      f"{r.failures:,} failures, invariant: {'holds' if r.ok else 'broken'}", r.ok and not r.failures))
        if r.scenario.name == "herd":
            found.append((r.scenario.name, f"Herd goal, p99 of 200s at nginx ≤ {HERD_OK_P99_GOAL_MS} ms",
                          f"{r.nginx_ok_p99:.0f} ms (Locust: {r.ok_p99:.0f} ms)",
                          r.nginx_ok_p99 <= HERD_OK_P99_GOAL_MS))
        if r.queued:
            q = r.queued
            found.append((r.scenario.name, f"admitted buyers' purchases p99 at nginx ≤ {QUEUED_P99_GOAL_MS} ms",
                          f"{q['nginx_p99']:.0f} ms (Locust: {q['purchase_p99']:.0f} ms)",
                          q["nginx_p99"] <= QUEUED_P99_GOAL_MS))
    return found


def report(results: list[Outcome], out: Path, started: str, source: str) -> Path:
    lines = [
        f"# make scenarios — {started}",
        "",
        f"Target: {source}. Machine: {os.cpu_count()} cores; Locust (FastHttpUser; the herd and the drop in "
        "--herd-processes processes), nginx, three "
        "replicas, PostgreSQL and Redis all on it. 409, 429 and 503 overloaded (with Retry-After) are expected "
        "answers; a failure is anything else.",
        "",
        "| scenario | users | s | answers/s | 200/s | 409/s | 429/s | overloaded/s | other/s | p50 ms | p95 ms | "
        "p99 ms | 200s p50 / p99 ms | 200s at nginx p50 / p99 ms | failures | final stock | sold | invariant |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        total = sum(r.counts.values())
        other = r.counts["5xx"] + r.counts["other"]
        per_s = r.seconds or 1
        shown = (total, r.counts["200"], r.counts["409"] + r.counts["not_started"], r.counts["429"],
                 r.counts["overloaded"], other)
        rates = " | ".join(f"{n / per_s:,.0f}" for n in shown)
        verdict = "holds" if r.ok else "**" + "; ".join(r.problems) + "**"
        lines.append(f"| {r.scenario.name} | {r.users:,} | {r.seconds:.0f} | {rates} | {r.p50:.0f} | {r.p95:.0f} | "
                     f"{r.p99:.0f} | {r.ok_p50:.0f} / {r.ok_p99:.0f} | {r.nginx_ok_p50:.0f} / {r.nginx_ok_p99:.0f} | "
                     f"{r.failures:,} | {r.stock:,} | {r.sold:,} | "
                     f"{verdict} |")
    lines += ["", "Rates are averages over each scenario's wall time, ramp-up and shut-down included. "
              "\"invariant\": stock + Σ orders.quantity equals the stock set before the scenario, and every order id "
              "answered with a 200 exists in PostgreSQL.", ""]
    lines += ["## Goals", "", "Latency goals are measured at nginx (its request_time: the service's own share), "
              "since Locust shares the two cores with the cluster and cannot time itself.", "",
              "| scenario | goal | measured | |", "|---|---|---|---|"]
    lines += [f"| {name} | {goal} | {measured} | {'met' if met else '**missed**'} |"
              for name, goal, measured, met in goals(results)]
    lines.append("")
    drop = next((r for r in results if r.scenario.name == "drop"), None)
    if drop is not None:
        lines += ["## The drop, per product", "",
                  f"All five start at {drop.drop[0]['starts_at'] if drop.drop else '?'}; buyers arrived before it, "
                  f"were told `sale_not_started` ({drop.counts['not_started']:,} times) and came back after the "
                  "Retry-After they were given. Times are from the orders' created_at in PostgreSQL.", "",
                  "| product | units | sold | orders | orders before the start | first order after the start | "
                  "sold out after the start | invariant |", "|---:|---:|---:|---:|---:|---:|---:|---|"]
        for row in drop.drop:
            holds = "holds" if row["stock"] + row["sold"] == row["initial"] and row["stock"] == 0 else "**broken**"
            lines.append(f"| {row['id']} | {row['initial']:,} | {row['sold']:,} | {row['orders']:,} | {row['early']} | "
                         f"{row['first_ms']:.0f} ms | {row['sold_out_ms']:.0f} ms | {holds} |")
        lines += ["", "![drop per product](drop-products.png)", ""]
    queued = next((r for r in results if r.queued), None)
    if queued is not None:
        q = queued.queued
        met = "met" if q["nginx_p99"] <= QUEUED_P99_GOAL_MS else "**missed**"
        lines += ["## The queued drop", "",
                  f"{q['joined']:,} buyers joined before the start ({q['starts_at']}); the room admitted "
                  f"{queued.scenario.queue_rate:,} a second from it, in ticket order; each admitted buyer bought one "
                  "unit with its pass. Times from the orders' created_at; places from PostgreSQL.", "",
                  "| units | sold | orders before the start | sold out after the start | buyers among the first "
                  "tickets | latest ticket served | out-of-order pairs | purchases by admitted buyers p50 / p99: "
                  "Locust | the same at nginx | invariant |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
                  f"| {q['initial']:,} | {q['sold']:,} | {q['early']} | {q['sold_out_ms'] / 1000:.1f} s | "
                  f"{q['in_first']:,} of {q['orders']:,} | {q['latest_ticket']:,} | {100 * q['inversions']:.2f}% | "
                  f"{q['purchase_p50']:.0f} / {q['purchase_p99']:.0f} ms | "
                  f"{q['nginx_p50']:.0f} / {q['nginx_p99']:.0f} ms | {'holds' if queued.ok else 'broken'} |", "",
                  f"Goal, p99 of admitted buyers' purchases at most {QUEUED_P99_GOAL_MS} ms while the queue holds "
                  f"the rest: {met}, as nginx's request_time measures it (the service's own share; Locust's "
                  "processes share the cores with the cluster and the polls of everyone waiting). Admission itself "
                  "is in ticket order by construction; what reorders purchases is "
                  "the buyers' polling (every 0.5 to 10 s), so \"out-of-order pairs\" is the share of pairs of "
                  "buyers served in the opposite order of their tickets.", "",
                  "![queued drop: tickets in the order served](queued-fairness.png)", ""]
    for held in (r for r in results if r.checkouts):
        c = held.checkouts
        money = c.get("money")
        lines += ["## The paid drop" if money else "## The checkout drop", "",
                  f"{held.users:,} buyers arrived within 10 s for {c['initial']:,} units held "
                  f"{held.scenario.hold_seconds} s each; a buyer told `units_held` waited its Retry-After (until "
                  "the next hold runs out) and held again. Resale: for each hold given back (released, or run "
                  "out: from its expiry), the time until the product's next hold took units, from the checkouts' "
                  "times in PostgreSQL.", "",
                  "| units | sold | still held | checkouts by end | re-booked | holds p50 / p99: Locust | the same at "
                  "nginx | confirms p50 / p99 (Locust) | holds given back | resale p50 / p99 | invariant |",
                  "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|",
                  f"| {c['initial']:,} | {c['sold']:,} | {c['held']} | "
                  + ", ".join(f"{k} {v:,}" for k, v in sorted(c["by_status"].items()))
                  + f" | {c['rebooked']:,} | {c['hold_p50']:.0f} / {c['hold_p99']:.0f} ms | "
                  f"{c['nginx_hold_p50']:.0f} / {c['nginx_hold_p99']:.0f} ms | "
                  f"{c['confirm_p50']:.0f} / {c['confirm_p99']:.0f} ms | {c['returned']:,} | "
                  f"{c['resale_p50_ms'] / 1000:.1f} / {c['resale_p99_ms'] / 1000:.1f} s | "
                  f"{'holds' if held.ok else 'broken'} |", ""]
        if money:
            lines += [f"Money, once every payment was settled (the simulator's intents against PostgreSQL's "
                      f"orders): {money['captured'] / 100:,.2f} USD captured for {money['sold']:,} units sold at "
                      f"{held.scenario.price / 100:.2f} (price x units: {money['expected'] / 100:,.2f}): "
                      f"{'exact' if money['captured'] == money['expected'] else '**not exact**'}. Payments by how "
                      "they ended: " + ", ".join(f"{k} {v:,}" for k, v in sorted(money["intents"].items()))
                      + ". Confirms (paid) above are the buyers' own, back from paying; the webhooks settle the "
                      "others.", ""]
    for r in results:
        shares = ", ".join(f"{name} {100 * n / max(1, sum(r.replicas.values())):.0f}%"
                           for name, n in sorted(r.replicas.items()))
        lines += [f"## {r.scenario.title}", "", f"![{r.scenario.name}]({r.scenario.name}.png)", "",
                  f"Answers: {', '.join(f'{k}: {v:,}' for k, v in r.counts.items() if v)}. Per replica: {shares}. "
                  f"Acknowledged orders checked in PostgreSQL: {r.orders_checked:,}.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def seconds_range(text: str) -> tuple[float, float]:
    """"LO-HI" seconds, as --checkout-think and --paid-think take them."""
    try:
        low, high = (float(part) for part in text.split("-"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LO-HI seconds, e.g. 1-8") from None
    if not 0 <= low <= high:
        raise argparse.ArgumentTypeError(f"{text!r}: want 0 <= LO <= HI")
    return low, high


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="use this running cluster (needs --data-dir) instead of starting one")
    parser.add_argument("--data-dir", type=Path, help="the running cluster's data dir (for reset and status)")
    parser.add_argument("--duration", type=float, default=20, help="seconds of scenarios 1 and 2 (default 20)")
    parser.add_argument("--original-users", type=int, default=300,
                        help="users of the original's load test (default 300, as it ran)")
    parser.add_argument("--drain-users", type=int, default=5000, help="users of the drain (default 5,000)")
    parser.add_argument("--drain-stock", type=int, default=10_000, help="units to drain (default 10,000)")
    parser.add_argument("--drain-timeout", type=float, default=90, help="longest the drain may take (default 90)")
    parser.add_argument("--after-sold-out", type=float, default=3, help="seconds the drain goes on once sold out")
    parser.add_argument("--herd-users", type=int, default=10_000,
                        help="buyers of the herd, arriving within 10 s, one unit each for as many units (10,000)")
    parser.add_argument("--herd-processes", type=int, default=1, help="Locust processes for the herd (default 1)")
    parser.add_argument("--drop-users", type=int, default=5000, help="buyers of the drop (default 5,000)")
    parser.add_argument("--drop-lead", type=float, default=10,
                        help="seconds from creating the drop's products to their common start (default 10)")
    parser.add_argument("--queue-users", type=int, default=5000, help="buyers of the queued drop (default 5,000)")
    parser.add_argument("--queue-stock", type=int, default=1000, help="units of the queued drop (default 1,000)")
    parser.add_argument("--queue-rate", type=int, default=250,
                        help="the queued drop's admissions a second (default 250, below what this machine's cluster "
                             "serves with Locust beside it)")
    parser.add_argument("--queue-lead", type=float, default=15,
                        help="seconds from creating the queued drop's product to its start (default 15)")
    parser.add_argument("--checkout-users", type=int, default=5000,
                        help="buyers of the checkout drop (default 5,000)")
    parser.add_argument("--checkout-stock", type=int, default=1000, help="units of the checkout drop (default 1,000)")
    parser.add_argument("--checkout-hold", type=int, default=20,
                        help="the checkout drop's hold_seconds (default 20)")
    parser.add_argument("--checkout-think", type=seconds_range, default=(1.0, 8.0), metavar="LO-HI",
                        help="seconds the checkout drop's buyers take from their hold to confirming or releasing "
                             "it, drawn uniformly (default 1-8)")
    parser.add_argument("--paid-users", type=int, default=2000, help="buyers of the paid drop (default 2,000)")
    parser.add_argument("--paid-stock", type=int, default=500, help="units of the paid drop (default 500)")
    parser.add_argument("--paid-hold", type=int, default=20, help="the paid drop's hold_seconds (default 20)")
    parser.add_argument("--paid-think", type=seconds_range, default=(1.0, 5.0), metavar="LO-HI",
                        help="seconds the paid drop's buyers take from their hold to paying (default 1-5)")
    parser.add_argument("--only", choices=["original", "write-limit", "rate-limit-shield", "flash-sale-drain", "herd",
                                           "drop", "queued-drop", "checkout-drop", "paid-drop"],
                        action="append",
                        help="run only this scenario (repeatable)")
    parser.add_argument("--buyer-auth", choices=("none", "jwt"), default="none",
                        help="jwt: buyers are verified (HC_BUYER_AUTH=jwt); every Locust user mints its own token "
                             "with a local issuer and sends no user_id (default none, as the original)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / datetime.now().strftime("%Y-%m-%d"))
    args = parser.parse_args()
    if args.url and not args.data_dir:
        parser.error("--url needs --data-dir (to reset stock and read the invariant)")
    args.out.mkdir(parents=True, exist_ok=True)
    raise_file_limit()  # Locust holds a connection per user: the herd's 10,000 need a limit above 1,024
    started = datetime.now().isoformat(timespec="seconds")
    chosen = [s for s in scenarios(args) if not args.only or s.name in args.only]
    results = []

    def run_all(target: Backends | ExternalCluster, issuer: LocalIssuer | None) -> None:
        for scenario in chosen:
            results.append(run_scenario(scenario, target, args.out, args.after_sold_out, issuer))
            chart(results[-1], args.out / f"{scenario.name}.png")
            if results[-1].drop:
                drop_chart(results[-1], args.out / "drop-products.png")
            if results[-1].queued:
                queued_chart(results[-1], args.out / "queued-fairness.png")

    if args.url:
        external = ExternalCluster(args.url, args.data_dir)
        issuer = None
        if external.env.get("HC_BUYER_AUTH") == "jwt":  # it verifies buyers: only its local issuer's tokens do
            if not external.env.get("HC_DEMO_SIGNIN"):
                parser.error("the cluster verifies buyers with an issuer whose keys this run does not have")
            issuer = LocalIssuer(Path(external.env["HC_DEMO_SIGNIN"]))
        run_all(external, issuer)
        source = f"the running cluster at {args.url}"
    else:
        with private_backends() as backends:
            issuer = LocalIssuer(backends.workdir / "issuer").ensure() if args.buyer_auth == "jwt" else None
            run_all(backends, issuer)
        source = "a cluster started for each scenario (nginx + 3 replicas, batched strategy)"
    if issuer is not None:
        source += "; buyers verified (HC_BUYER_AUTH=jwt): each Locust user signs its requests with its own token"
    path = report(results, args.out, started, source)
    print()
    for name, goal, measured, met in goals(results):
        print(f"goal {'met' if met else 'MISSED'}: {name}: {goal}: {measured}")
    print(f"\nreport: {path}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
