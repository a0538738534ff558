"""The fault campaign itself: its checker must catch every kind of violation, and a short campaign against a real
cluster must run, inject faults of several kinds, and find none."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

LOAD_TESTS = Path(__file__).resolve().parent.parent / "load-tests"
spec = importlib.util.spec_from_file_location("chaos", LOAD_TESTS / "chaos.py")
assert spec is not None and spec.loader is not None
chaos = importlib.util.module_from_spec(spec)
sys.modules["chaos"] = chaos  # dataclasses look their module up by name
spec.loader.exec_module(chaos)

Op, Order, State = chaos.Operation, chaos.Order, chaos.ProductState


def ok(key: str, order_id: int, user: int = 1, product: int = 7, qty: int = 1) -> chaos.Operation:
    return Op(key, user, product, qty, 0.0, status=200, body={"order_id": order_id})


def refused(key: str, code: str = "out_of_stock", remaining: int = 0, product: int = 7) -> chaos.Operation:
    return Op(key, 1, product, 1, 0.0, status=409, body={"error": {"code": code, "remaining": remaining}})


def test_a_clean_history_passes() -> None:
    history = [ok("a", 1), ok("b", 2, user=2), refused("c")]
    orders = [Order(1, "a", 1, 7, 1), Order(2, "b", 2, 7, 1)]
    assert chaos.check(history, [State(7, 0, 2, None)], orders) == []


@pytest.mark.parametrize(("history", "stock", "orders", "says"), [
    ([ok("a", 1)], 0, [Order(1, "a", 1, 7, 1), Order(2, "a", 1, 7, 1)], "duplicated"),
    ([ok("a", 1)], 1, [], "lost"),
    ([ok("a", 1, qty=2)], 0, [Order(1, "a", 1, 7, 1)], "lost"),  # the order is not what the buyer was told
    ([refused("a")], 0, [Order(1, "a", 1, 7, 1)], "unexpected"),  # refused, yet placed
    ([ok("a", 1)], 0, [Order(1, "a", 1, 7, 1), Order(2, "zz", 1, 7, 1)], "no client sent"),
    ([ok("a", 1)], 0, [Order(1, "a", 1, 7, 1), Order(2, None, 1, 7, 1)], "without an Idempotency-Key"),
    ([ok("a", 1)], -1, [Order(1, "a", 1, 7, 1)], "oversell"),
    ([ok("a", 1), refused("b")], 5, [Order(1, "a", 1, 7, 1)], "oversell"),  # 5 + 1 != 2: units vanished
    ([Op("a", 1, 7, 1, 0.0)], 2, [], "unresolved"),  # no answer and never resolved
    ([Op("a", 1, 7, 1, 0.0, status=500, resolved=409, resolved_body={"error": {"code": "out_of_stock"}})], 2, [],
     "contract"),  # a 500 is never an answer, whatever broke
    ([Op("a", 1, 7, 1, 0.0, status=200, body={"order_id": 1}, room=True)], 1, [Order(1, "a", 1, 7, 1)],
     "without a pass"),  # a waiting room's product bought around the queue
])
def test_every_kind_of_violation_is_caught(history, stock, orders, says) -> None:  # type: ignore[no-untyped-def]
    problems = chaos.check(history, [State(7, stock, 2, None)], orders)
    assert any(says in p for p in problems), problems


def test_a_pass_that_buys_twice_is_caught_and_a_closed_room_sells_without_one() -> None:
    def with_pass(key: str, order_id: int, queue_pass: str | None) -> chaos.Operation:
        return Op(key, 1, 7, 1, 0.0, status=200, body={"order_id": order_id}, room=True, queue_pass=queue_pass)

    twice = [with_pass("a", 1, "p2.7.1.1.99.x"), with_pass("b", 2, "p2.7.1.1.99.x")]
    orders = [Order(1, "a", 1, 7, 1, created_at=100.0), Order(2, "b", 1, 7, 1, created_at=101.0)]
    problems = chaos.check(twice, [State(7, 0, 2, None)], orders)
    assert any("one pass bought 2 orders" in p for p in problems), problems
    # The room was closed from 200 to 210: an order without a pass placed then is the rule, one placed at 300 not.
    passless = [with_pass("c", 3, None), with_pass("d", 4, None)]
    orders = [Order(3, "c", 1, 7, 1, created_at=205.0), Order(4, "d", 1, 7, 1, created_at=300.0)]
    problems = chaos.check(passless, [State(7, 0, 2, None)], orders, closed=[[200.0, 210.0]])
    assert [p for p in problems if "without a pass" in p] == [
        "queue: key d bought product 7 without a pass"], problems


def test_limits_and_undersell_are_caught() -> None:
    history = [ok("a", 1, qty=2), ok("b", 2, qty=2), refused("c", remaining=0)]
    orders = [Order(1, "a", 1, 7, 2), Order(2, "b", 1, 7, 2)]
    problems = chaos.check(history, [State(7, 6, 10, 3)], orders)
    assert any(p.startswith("limit: buyer 1 owns 4") for p in problems), problems
    assert any(p.startswith("undersell") for p in problems), problems  # told 0 left; 6 remain


def test_an_info_operation_is_judged_by_its_resolution() -> None:
    timed_out = Op("a", 1, 7, 1, 0.0, status=None, resolved=200, resolved_body={"order_id": 1})
    gone = Op("b", 1, 7, 1, 0.0, status=503, body={"error": {"outcome": "unknown"}}, resolved=409,
              resolved_body={"error": {"code": "out_of_stock", "remaining": 0}})
    assert (timed_out.kind, gone.kind) == ("info", "info")
    assert chaos.check([timed_out, gone], [State(7, 0, 1, None)], [Order(1, "a", 1, 7, 1)]) == []


def test_the_same_seed_plans_the_same_run() -> None:
    first = chaos.make_plan("s-1", duration=20, buyers=8, faults_per_second=0.5, replicas=3)
    again = chaos.make_plan("s-1", duration=20, buyers=8, faults_per_second=0.5, replicas=3)
    other = chaos.make_plan("s-2", duration=20, buyers=8, faults_per_second=0.5, replicas=3)
    assert first == again and first != other
    assert len(first.faults) >= 5


def test_a_short_campaign_injects_faults_and_finds_no_violation(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(LOAD_TESTS / "chaos.py"), "--runs", "2", "--duration", "8", "--seed", "ci",
         "--buyers", "12", "--faults-per-second", "1", "--waiting-room", "--out", str(tmp_path)],
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


def test_a_short_campaign_on_a_redis_cluster_kills_masters_and_finds_no_violation(tmp_path: Path) -> None:
    """`chaos.py --redis-cluster`: the limiter on, its keys on three masters, two of which are SIGKILLed."""
    kinds = tuple(chaos.REDIS_MASTER if kind == "redis-restart" else kind for kind in chaos.FAULTS)
    plan = chaos.make_plan("ci-rc-1", duration=8, buyers=12, faults_per_second=1, replicas=3, kinds=kinds)
    assert [f.kind for f in plan.faults].count(chaos.REDIS_MASTER) == 2  # the seed below plans two kills
    done = subprocess.run(
        [sys.executable, str(LOAD_TESTS / "chaos.py"), "--runs", "1", "--duration", "8", "--seed", "ci-rc",
         "--buyers", "12", "--faults-per-second", "1", "--redis-cluster", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=400, env={**os.environ, "HC_LOG_LEVEL": "WARNING"})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    (run,) = json.loads((tmp_path / "summary.json").read_text())["runs"]
    assert run["violations"] == [] and run["kinds"].get("ok", 0) > 0, run
    assert run["faults"].get(chaos.REDIS_MASTER, 0) >= 1, run  # a kill is skipped while one master is down
