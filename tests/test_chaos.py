"""The fault campaign itself: its checker must catch every kind of violation (each hole an audit found is a case
below that the checker before it passed), its nemesis counts only what took effect, and a short campaign against a
real cluster must run, inject faults of several kinds, and find none."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg2
import pytest

LOAD_TESTS = Path(__file__).resolve().parent.parent / "load-tests"
sys.path.insert(0, str(LOAD_TESTS))

from campaign import client, nemesis  # noqa: E402
from campaign.checker import Expected, check  # noqa: E402
from campaign.database import Order, ProductState, read_database, settle_from_database  # noqa: E402
from campaign.history import NOT_SOLD, History, Operation, QueueCall  # noqa: E402
from campaign.plan import FAULTS, REDIS_MASTER, Fault, make_plan  # noqa: E402

Op = Operation


def ok(key: str, order_id: int, user: int = 1, product: int = 7, qty: int = 1, **fields: Any) -> Operation:
    return Op(key, user, product, qty, 0.0, status=200, body={"order_id": order_id}, **fields)


def refused(key: str, code: str = "out_of_stock", remaining: int = 0, product: int = 7, qty: int = 1,
            user: int = 1, **extra: Any) -> Operation:
    error = {"code": code, "message": code, **({"remaining": remaining} if code == "out_of_stock" else {}), **extra}
    return Op(key, user, product, qty, 0.0, status=409, body={"error": error})


def order(id: int, key: str | None, user: int = 1, product: int = 7, qty: int = 1, **fields: Any) -> Order:
    return Order(id, () if key is None else (key,), user, product, qty, **fields)


def judge(ops: list[Operation], stock: int, orders: list[Order], *, initial: int = 2, limit: int | None = None,
          calls: list[QueueCall] | None = None, room: bool = False, **kw: Any) -> list[str]:
    """The checker on one product, 7, created with ``initial`` units and ``limit``, ending with ``stock``."""
    return check(History(ops, calls or []), [Expected(7, initial, limit, room)],
                 [ProductState(7, stock, initial, limit)], orders, **kw)


def test_a_clean_history_passes() -> None:
    history = [ok("a", 1), ok("b", 2, user=2), refused("c")]
    assert judge(history, 0, [order(1, "a"), order(2, "b", user=2)]) == []


@pytest.mark.parametrize(("history", "stock", "orders", "says"), [
    ([ok("a", 1)], 1, [], "lost"),
    ([ok("a", 1, qty=2)], 0, [order(1, "a")], "lost"),  # the order is not what the buyer was told
    ([refused("a")], 0, [order(1, "a")], "unexpected"),  # refused, yet placed
    ([ok("a", 1)], 0, [order(1, "a"), order(2, "zz")], "no client sent"),
    ([ok("a", 1)], 0, [order(1, "a"), order(2, None)], "no key"),  # a keyless order no purchase accounts for
    ([ok("a", 1)], -1, [order(1, "a")], "oversell"),
    ([ok("a", 1), refused("b")], 5, [order(1, "a")], "oversell"),  # 5 + 1 != 2: units vanished
    ([Op("a", 1, 7, 1, 0.0)], 2, [], "unresolved"),  # no answer and never resolved
    ([Op("a", 1, 7, 1, 0.0, status=500, resolved=409, resolved_body={"error": {"code": "out_of_stock",
                                                                               "remaining": 0}})], 2, [],
     "contract"),  # a 500 is never an answer, whatever broke
    ([Op("a", 1, 7, 1, 0.0, status=200, body={"order_id": 1}, room=True)], 1, [order(1, "a")],
     "without a pass"),  # a waiting room's product bought around the queue
])
def test_every_kind_of_violation_is_caught(history, stock, orders, says) -> None:  # type: ignore[no-untyped-def]
    problems = judge(history, stock, orders)
    assert any(says in p for p in problems), problems


# --- the audit's holes: each passed as [] before -------------------------------------------------------------------

def test_every_retry_answer_is_held_to_the_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hole 1: a retry answered 500, then 502, then a definite 409: resolved, yet the 5xx are violations."""
    answers = [(500, {"error": {"code": "internal_error", "message": "x"}}), (502, {}),
               (409, {"error": {"code": "limit_reached", "message": "x", "limit": 2}})]
    fake_retries(monkeypatch, {"a": answers})
    op = Op("a", 1, 7, 1, 0.0, status=None)
    asyncio.run(client.resolve("http://unused", [op]))
    assert (op.resolved, op.resolved_by, len(op.retries)) == (409, "retry", 3)
    problems = judge([op], 2, [], limit=2, initial=2)
    assert [p for p in problems if p.startswith("contract")] == [
        "contract: key a (retry 1) was answered 500", "contract: key a (retry 2) was answered 502"], problems


def test_joins_and_polls_are_recorded_and_held_to_the_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hole 1: joins answered 500 were never recorded, and a room nobody bought through gave no violation."""
    async def fake_call(_client: Any, url: str, method: str, body: str | None = None,
                        headers: dict[str, str] | None = None) -> tuple[int | None, dict[str, Any]]:
        if url.endswith("/queue"):
            return 500, {"error": {"code": "internal_error", "message": "x"}}
        return 403, {"error": {"code": "queue_pass_required", "message": "x"}}  # purchases without a pass

    monkeypatch.setattr(client, "call", fake_call)
    plan = make_plan("audit", duration=0.3, buyers=4, faults_per_second=1, replicas=3, waiting_room=True)
    for product in plan.products:
        product.weight = 1.0 if product.room else 0.0
    history = asyncio.run(client.workload("http://unused", plan, [101, 102, 103, 104, 7], 0.3))
    assert history.calls and all(call.kind == "join" and call.status == 500 for call in history.calls)
    problems = check(history, [Expected(7, 10, None, room=True)], [ProductState(7, 10, 10, None)], [])
    assert any(p.startswith("contract: a join of product 7's room") for p in problems), problems
    assert any(p.startswith("queue: nobody bought product 7 through its waiting room") for p in problems), problems


def test_a_refusal_the_end_state_contradicts_is_caught() -> None:
    """Hole 2: stock only falls and holdings only rise, so a refusal must agree with the end and with what sold
    after it."""
    told_one_left = refused("a", remaining=1, qty=2)
    assert any(p.startswith("undersell") for p in judge([told_one_left], 5, [], initial=5)), "ends with 5"
    at_limit = refused("a", code="limit_reached", limit=3)
    assert any(p.startswith("limit: a") for p in judge([at_limit], 10, [], initial=10, limit=3)), "owns 0 of 3"
    wrong_limit = refused("a", code="limit_reached", limit=2)
    assert any("a limit of 2" in p for p in judge([wrong_limit], 10, [], initial=10, limit=3))
    none_left = refused("a", remaining=0)
    none_left.ended = 1.0
    sold_later = ok("b", 1, user=2)
    sold_later.started = 2.0
    problems = judge([none_left, sold_later], 0, [order(1, "b", user=2)], initial=1)
    assert any("1 units were sold to purchases sent after" in p for p in problems), problems
    nonsense = refused("a", remaining=3, qty=2)
    assert any("with 3 left" in p for p in judge([nonsense], 0, [], initial=0))
    # The same refusals, true: 1 left for 2 and it ends with 1; at the limit owning 3; 0 left, sold before.
    assert judge([told_one_left], 1, [], initial=1) == []
    assert judge([at_limit, ok("b", 1, qty=3)], 7, [order(1, "b", qty=3)], initial=10, limit=3) == []
    sold_before = ok("b", 1, user=2)
    sold_before.started = 0.5
    assert judge([none_left, sold_before], 0, [order(1, "b", user=2)], initial=1) == []


def test_one_order_answered_to_two_keys_is_caught() -> None:
    """Hole 3: one orders row referenced by two keys (stock fell by 2, one row of 1) passed, summed per key."""
    history = [ok("a", 1), ok("b", 1)]
    problems = judge(history, 0, [Order(1, ("a", "b"), 1, 7, 1)])
    assert any(p.startswith("shared: order 1 is the order of 2 keys") for p in problems), problems
    assert any(p.startswith("oversell") for p in problems), problems  # 0 + 1 != 2
    keyless = [ok("a", 1, keyed=False), ok("b", 1, keyed=False)]
    problems = judge(keyless, 1, [order(1, None)])
    assert any(p.startswith("shared: order 1 was answered to a and to b") for p in problems), problems


def test_products_are_judged_against_what_the_run_created() -> None:
    """Hole 4: the row's stock and limit were the reference: a product stored as 60 with no limit when the run
    made 50 and 2 passed; a product with no row got no check at all."""
    history = [ok(f"k{i}", i, user=1 if i < 10 else 2 + i) for i in range(60)]
    orders = [order(i, f"k{i}", user=1 if i < 10 else 2 + i) for i in range(60)]
    problems = check(History(history), [Expected(7, 50, 2)], [ProductState(7, 0, 60, None)], orders)
    assert any(p.startswith("setup: product 7 is stored with stock 60 and limit None") for p in problems), problems
    assert any(p.startswith("oversell") for p in problems) and any(p.startswith("limit: buyer 1 owns 10")
                                                                  for p in problems), problems
    problems = check(History([refused("a", product=8)]), [Expected(8, 5, None)], [], [])
    assert problems == ["missing: product 8 has no row (0 units sold of it)"]


def test_orders_outside_the_runs_products_are_seen() -> None:
    """Hole 5: only orders of the run's products were read; one on another product is a sale outside the run."""
    problems = judge([refused("a")], 0, [order(9, "a", product=3)], initial=0)
    assert any(p.startswith("foreign: order 9") for p in problems), problems
    assert any(p.startswith("unexpected: key a was refused") for p in problems), problems


def test_a_retry_refused_for_itself_does_not_settle_the_first_try(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hole 6: a retry's 503 overloaded (or 429, 403) was taken as the first try's outcome, "not sold"."""
    overloaded = (503, {"error": {"code": "overloaded", "message": "x", "outcome": "nothing_sold"}})
    limited = (429, {"error": {"code": "rate_limited", "message": "x"}})
    fake_retries(monkeypatch, {"a": [overloaded, (200, {"order_id": 9})], "b": [limited]})
    first = Op("a", 1, 7, 1, 0.0, status=503, body={"error": {"code": "unavailable", "outcome": "unknown"}})
    second = Op("b", 1, 7, 1, 0.0, status=None)
    asyncio.run(client.resolve("http://unused", [first, second]))
    assert (first.resolved, first.resolved_body, first.resolved_by) == (200, {"order_id": 9}, "retry")
    assert second.resolved is None and len(second.retries) == client.REFUSED_RETRIES
    assert client.refused_for_itself(second) and not client.refused_for_itself(Op("c", 1, 7, 1, 0.0))


def test_request_in_progress_is_an_unknown_outcome() -> None:
    """Hole 8: a first answer of 409 request_in_progress was a definite refusal, never retried."""
    op = Op("a", 1, 7, 1, 0.0, status=409, body={"error": {"code": "request_in_progress", "message": "x"}})
    assert op.kind == "info"


def test_keyless_purchases_are_accounted_for_by_their_orders() -> None:
    sold = ok("a", 1, keyed=False)
    unknown = Op("b", 2, 7, 1, 0.0, keyed=False)  # no answer: it may have sold
    orders = [order(1, None), order(2, None, user=2)]
    assert judge([sold, unknown], 0, orders) == []  # a keyless unknown is not "unresolved": it cannot be retried
    problems = judge([sold, unknown], 0, [*orders, order(3, None, user=2)], initial=3)
    assert any(p.startswith("unexpected: order 3 has no key") for p in problems), problems  # two orders, one try
    assert any(p.startswith("lost") for p in judge([ok("a", 1, keyed=False)], 1, [order(1, "a")], initial=2))


def fake_retries(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[tuple[int | None, dict[str, Any]]]])\
        -> None:
    async def fake_purchase(_client: Any, _url: str, op: Operation) -> tuple[int | None, dict[str, Any]]:
        seq = answers[op.key]
        return seq.pop(0) if len(seq) > 1 else seq[0]

    real_sleep = asyncio.sleep

    async def no_wait(_seconds: float) -> None:
        await real_sleep(0)

    monkeypatch.setattr(client, "purchase", fake_purchase)
    monkeypatch.setattr(client.asyncio, "sleep", no_wait)


# --- what PostgreSQL holds ------------------------------------------------------------------------------------------

def test_the_database_is_read_one_row_per_order_with_its_keys_and_settles_keys(database_url: str) -> None:
    conn = psycopg2.connect(database_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("INSERT INTO products (name, stock, initial_stock) VALUES ('run', 8, 10), ('other', 5, 5) "
                    "RETURNING id")
        run, other = (row[0] for row in cur.fetchall())
        cur.execute("SELECT coalesce(max(id), 0) FROM orders")
        (before,) = cur.fetchone()
        cur.execute("INSERT INTO orders (user_id, product_id, quantity, replica) VALUES (1, %s, 2, 'r'), "
                    "(2, %s, 1, 'r') RETURNING id", (run, other))
        mine, foreign = (row[0] for row in cur.fetchall())
        cur.execute("INSERT INTO idempotency_keys (key, fingerprint, order_id) VALUES ('s/1/1', 'f', %s), "
                    "('s/1/2', 'f', %s)", (mine, mine))
    conn.close()
    products, orders = read_database(database_url, [run], after_order=before, key_prefix="s/")
    assert products == [ProductState(run, 8, 10, None)]
    assert [(o.id, o.keys, o.product) for o in orders] == [(mine, ("s/1/1", "s/1/2"), run), (foreign, (), other)]
    placed, refused_op = Op("s/1/1", 1, run, 2, 0.0), Op("s/9/9", 1, run, 1, 0.0)
    settle_from_database(database_url, [placed, refused_op])
    assert (placed.resolved, placed.resolved_body, placed.resolved_by) == (200, {"order_id": mine}, "database")
    assert (refused_op.resolved, refused_op.resolved_by) == (NOT_SOLD, "database")


# --- the nemesis ----------------------------------------------------------------------------------------------------

class FakeProcess:
    def __init__(self) -> None:
        self.alive = True
        self.process = SimpleNamespace(pid=-1)

    def running(self) -> bool:
        return self.alive

    def kill(self, wait: bool = True, sig: int = 9) -> None:
        self.alive = False

    def start(self) -> None:
        self.alive = True


class FakePostgres(FakeProcess):
    def __init__(self, returncode: int = 0) -> None:
        super().__init__()
        self.stops, self.returncode = 0, returncode

    def stop(self, mode: str = "fast") -> SimpleNamespace:
        if self.alive:
            self.stops += 1
        self.alive = self.alive and self.returncode != 0
        return SimpleNamespace(returncode=self.returncode, stderr="pg_ctl: could not stop", stdout="")


def fake_cluster(postgres: FakePostgres | None = None) -> Any:
    return SimpleNamespace(apps=[FakeProcess() for _ in range(3)], postgres=postgres or FakePostgres(),
                           redis=FakeProcess(), nginx=FakeProcess(), standby=None, redis_nodes=None)


def test_a_fault_counts_only_when_it_took_effect() -> None:
    """Hole 7: a replica killed twice, PostgreSQL stopped while already down, were counted as faults."""
    cluster = fake_cluster()
    nem = nemesis.Nemesis(cluster)
    faults = [Fault(0.0, "postgres-restart-fast", 0, 0.5), Fault(0.0, "kill-replica", 0, 0.5),
              Fault(0.1, "postgres-restart-immediate", 0, 0.5), Fault(0.1, "kill-replica", 0, 0.5)]
    nem.run(faults, time.monotonic(), threading.Event())
    assert dict(nem.applied) == {"postgres-restart-fast": 1, "kill-replica": 1}
    assert dict(nem.skipped) == {"postgres-restart-immediate: PostgreSQL was already down": 1,
                                 "kill-replica: the replica was already down": 1}
    assert cluster.postgres.stops == 1 and nem.errors == []


def test_a_failed_injection_is_an_error_and_the_other_faults_still_come() -> None:
    """Hole 7: an injection that raised killed the nemesis thread silently; pg_ctl stop's failure was ignored."""
    cluster = fake_cluster(FakePostgres(returncode=1))
    nem = nemesis.Nemesis(cluster)
    faults = [Fault(0.0, "postgres-restart-fast", 0, 0.1), Fault(0.05, "kill-replica", 1, 0.1),
              Fault(0.1, "kill-replica", 2, 0.1)]
    stop = threading.Event()
    nem.run(faults, time.monotonic(), stop)
    assert len(nem.errors) == 1 and "pg_ctl stop failed" in nem.errors[0], nem.errors
    assert nem.applied["kill-replica"] == 2
    stop.set()
    nem.run([Fault(5.0, "kill-replica", 0, 0.1)], time.monotonic(), stop)  # the run's purchases are over
    assert nem.skipped == {"kill-replica: the run's purchases were over": 1}


def test_the_same_seed_plans_the_same_run() -> None:
    first = make_plan("s-1", duration=20, buyers=8, faults_per_second=0.5, replicas=3)
    again = make_plan("s-1", duration=20, buyers=8, faults_per_second=0.5, replicas=3)
    other = make_plan("s-2", duration=20, buyers=8, faults_per_second=0.5, replicas=3)
    assert first == again and first != other
    assert len(first.faults) >= 5


def test_a_waiting_room_closed_sells_without_a_pass_but_a_pass_buys_once() -> None:
    def with_pass(key: str, order_id: int, queue_pass: str | None) -> Operation:
        return ok(key, order_id, room=True, queue_pass=queue_pass)

    twice = [with_pass("a", 1, "p2.7.1.1.99.x"), with_pass("b", 2, "p2.7.1.1.99.x")]
    orders = [order(1, "a", created_at=100.0), order(2, "b", created_at=101.0)]
    problems = judge(twice, 0, orders, room=True)
    assert any("one pass bought 2 orders" in p for p in problems), problems
    # The room was closed from 200 to 210: an order without a pass placed then is the rule, one placed at 300 not.
    passless = [with_pass("c", 3, None), with_pass("d", 4, None)]
    orders = [order(3, "c", created_at=205.0), order(4, "d", created_at=300.0)]
    problems = judge(passless, 0, orders, closed=[[200.0, 210.0]])
    assert [p for p in problems if "without a pass" in p] == [
        "queue: key d bought product 7 without a pass"], problems


def test_a_short_campaign_injects_faults_and_finds_no_violation(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(LOAD_TESTS / "chaos.py"), "--runs", "2", "--duration", "8", "--seed", "ci",
         "--buyers", "12", "--faults-per-second", "1", "--waiting-room", "--holds", "--payments", "--out",
         str(tmp_path)],
        capture_output=True, text=True, timeout=400, env={**os.environ, "HC_LOG_LEVEL": "WARNING"})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    runs = summary["runs"]
    assert len(runs) == 2 and all(r["violations"] == [] for r in runs)
    assert all(r["operations"] > 50 and r["kinds"].get("ok", 0) > 0 for r in runs)
    kinds = {kind for r in runs for kind in r["faults"]}
    assert sum(sum(r["faults"].values()) for r in runs) >= 10 and len(kinds) >= 3, runs
    assert "violations 0" in done.stdout
    # The waiting room's product: bought with passes, and every purchase sent without one refused (the checker
    # counts any that sold as a violation).
    assert all(r["room"]["bought_with_pass"] > 0 and r["room"]["sent_without_pass"] > 0 for r in runs), runs
    # Operators' changes to the room (a rate edited, the room closed and opened again) are among the faults.
    assert kinds & {"room-rate-edit", "room-close-reopen"}, runs
    # And a burst of more rate edits than the line once kept segments for (issue 45, item 2).
    assert max(r["room"]["burst_rate_edits"] for r in runs) > 32, runs
    # Checkouts under the same faults (--holds): held, confirmed, and a watcher reading their units meanwhile.
    assert all(r["holds"]["held"] > 0 and r["holds"]["confirmed"] > 0 and r["holds"]["watched"] > 10
               for r in runs), runs
    # Paid checkouts under the simulator's faults (--payments): units paid for, the money rules checked, and the
    # simulator's own faults among those that took effect.
    assert sum(r["payments"].get("paid units", 0) for r in runs) > 0, runs
    assert all(r["payments"]["watched"] > 10 for r in runs), runs
    assert kinds & {"payments-outage", "webhooks-delayed", "webhooks-duplicated", "webhooks-lost",
                    "webhooks-reordered"}, runs


def one_short_run(tmp_path: Path, seed: str, *flags: str) -> dict[str, Any]:
    """One run of 8 s of ``chaos.py`` (12 buyers, a fault a second) with ``flags``: its summary, once it found no
    violation and sold."""
    done = subprocess.run(
        [sys.executable, str(LOAD_TESTS / "chaos.py"), "--runs", "1", "--duration", "8", "--seed", seed,
         "--buyers", "12", "--faults-per-second", "1", *flags, "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=400, env={**os.environ, "HC_LOG_LEVEL": "WARNING"})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    (run,) = json.loads((tmp_path / "summary.json").read_text())["runs"]
    assert run["violations"] == [] and run["kinds"].get("ok", 0) > 0, run
    return run


def test_a_short_campaign_on_a_redis_cluster_kills_masters_and_finds_no_violation(tmp_path: Path) -> None:
    """`chaos.py --redis-cluster`: the limiter on, its keys on three masters, two of which are SIGKILLed."""
    kinds = tuple(REDIS_MASTER if kind == "redis-restart" else kind for kind in FAULTS)
    plan = make_plan("ci-rc-1", duration=8, buyers=12, faults_per_second=1, replicas=3, kinds=kinds)
    assert [f.kind for f in plan.faults].count(REDIS_MASTER) == 2  # the seed below plans two kills
    run = one_short_run(tmp_path, "ci-rc", "--redis-cluster")
    assert run["faults"].get(REDIS_MASTER, 0) >= 1, run  # a kill is skipped while one master is down


def test_a_short_campaign_with_the_limiter_on_one_redis_restarted_finds_no_violation(tmp_path: Path) -> None:
    """`chaos.py --limiter`: every purchase decided by the limiter on the one Redis server, which is restarted under
    it (its calls go on a connection held for them: heldscript.py)."""
    plan = make_plan("ci-limiter-1", duration=8, buyers=12, faults_per_second=1, replicas=3)
    assert [f.kind for f in plan.faults].count("redis-restart") == 2  # the seed below plans two restarts
    run = one_short_run(tmp_path, "ci-limiter", "--limiter")
    assert run["faults"].get("redis-restart", 0) >= 1, run  # one is skipped while Redis is still down
