"""The campaign's checker for checkouts (load-tests/campaign/holds.py): a clean history passes, and each way units
or answers can go wrong is caught."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

LOAD_TESTS = Path(__file__).resolve().parent.parent / "load-tests"
sys.path.insert(0, str(LOAD_TESTS))

from campaign.history import Answer  # noqa: E402
from campaign.holds import Checkout, HoldFlow, check_holds  # noqa: E402

STOCK = 10


def flow(key: str, action: str, *, hold: tuple[int | None, dict[str, Any]] = (201, {}),
         acted: list[tuple[int | None, dict[str, Any]]] | None = None, user: int = 1, qty: int = 1) -> HoldFlow:
    status, body = hold
    checkout_id = f"co_{key}" if status in (200, 201) else None
    body = {"checkout_id": checkout_id, **body} if checkout_id else body
    return HoldFlow(key, user, 7, qty, action, hold=[Answer(status, body, 0.0)], checkout_id=checkout_id,
                    acted=[Answer(s, b, 0.0) for s, b in acted or []])


def stored(key: str, status: str, order_id: int | None = None, user: int = 1, qty: int = 1) -> Checkout:
    return Checkout(f"co_{key}", user, qty, status, order_id, key)


def clean() -> tuple[list[HoldFlow], dict[str, Checkout], dict[int, tuple[int, int]]]:
    flows = [
        flow("a", "confirm", acted=[(200, {"order_id": 1})]),
        flow("b", "release", acted=[(200, {"status": "released"})]),
        flow("c", "abandon"),
        flow("d", "confirm", acted=[(409, {"error": {"code": "hold_expired"}})]),
        flow("e", "confirm", hold=(409, {"error": {"code": "units_held"}})),
    ]
    checkouts = {c.id: c for c in (stored("a", "confirmed", 1), stored("b", "released"), stored("c", "expired"),
                                   stored("d", "expired"))}
    return flows, checkouts, {1: (1, 1)}


def snapshot(stock: int = 9, held: int = 0, sold: int = 1, in_holds: int = 0, late: float = 0.0) -> tuple[Any, ...]:
    return (stock, held, STOCK, sold, in_holds, late)


def test_a_clean_history_of_holds_passes() -> None:
    flows, checkouts, orders = clean()
    assert check_holds(flows, STOCK, snapshot(), checkouts, orders) == []


@pytest.mark.parametrize(("change", "says"), [
    (lambda f, c, o, s: {"snapshot": snapshot(stock=10)}, "counted twice or lost"),  # a release given back twice
    (lambda f, c, o, s: {"snapshot": snapshot(held=1)}, "checkouts still held have 0"),
    (lambda f, c, o, s: {"snapshot": snapshot(late=30.0)}, "nothing swept it"),
    (lambda f, c, o, s: o.update({2: (1, 1)}) or {"snapshot": snapshot(stock=8, sold=2)}, "order of 0 checkouts"),
    (lambda f, c, o, s: c.update({"co_d": stored("d", "confirmed", 1)}) or {}, "order of 2 checkouts"),
    (lambda f, c, o, s: c.pop("co_a") and {}, "does not exist as told"),
    (lambda f, c, o, s: c.update({"co_e": stored("e", "released")}) or {}, "yet has checkout"),
    (lambda f, c, o, s: c.update({"co_a": stored("a", "released")}) or o.clear()
     or {"snapshot": snapshot(stock=10, sold=0)}, "but the checkout is released"),
    (lambda f, c, o, s: c.update({"co_d": stored("d", "confirmed", 2)}) or o.update({2: (1, 1)})
     or {"snapshot": snapshot(stock=8, sold=2)}, "was refused"),
    (lambda f, c, o, s: c.update({"co_b": stored("b", "confirmed", 2)}) or o.update({2: (1, 1)})
     or {"snapshot": snapshot(stock=8, sold=2)}, "the release of co_b"),
    (lambda f, c, o, s: f[0].acted.append(Answer(None, {}, 0.0)) or {}, "no definite answer"),
    (lambda f, c, o, s: f[4].hold.append(Answer(500, {}, 0.0)) or {}, "no definite answer"),
    (lambda f, c, o, s: f[1].acted.insert(0, Answer(502, {}, 0.0)) or {}, "contract"),
])
def test_every_kind_of_holds_violation_is_caught(change: Any, says: str) -> None:
    flows, checkouts, orders = clean()
    given = change(flows, checkouts, orders, None) or {}
    problems = check_holds(flows, STOCK, given.get("snapshot", snapshot()), checkouts, orders)
    assert any(says in problem for problem in problems), problems
