"""The campaign's checker for paid checkouts (load-tests/campaign/payments.py): a clean run passes, and each way money
and units can disagree is caught."""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

LOAD_TESTS = Path(__file__).resolve().parent.parent / "load-tests"
sys.path.insert(0, str(LOAD_TESTS))

from campaign.history import Answer  # noqa: E402
from campaign.payments import PaidCheckout, PayFlow, check_payments  # noqa: E402

STOCK, PRICE = 10, 700


def intent(ident: str, checkout: str, status: str, received: int = 0, captures: int = 0) -> dict[str, Any]:
    return {"id": ident, "status": status, "amount_received": received, "captures": captures,
            "metadata": {"checkout_id": checkout}}


def clean() -> dict[str, Any]:
    """Three payers: one paid (2 units, captured), one declined and walked away (cancelled), one paid after its
    units were sold (cancelled, never captured)."""
    flows = [PayFlow("k1", 1, 2, "visa", hold=[Answer(201, {"checkout_id": "co_1"}, 0.0)], checkout_id="co_1",
                     intent_id="pi_1", acted=[Answer(200, {"order_id": 5}, 0.0)]),
             PayFlow("k2", 2, 1, "declined", hold=[Answer(201, {"checkout_id": "co_2"}, 0.0)], checkout_id="co_2",
                     intent_id="pi_2", acted=[Answer(409, {"error": {"code": "payment_required"}}, 0.0)]),
             PayFlow("k3", 3, 1, "visa", hold=[Answer(201, {"checkout_id": "co_3"}, 0.0)], checkout_id="co_3",
                     intent_id="pi_3", acted=[Answer(409, {"error": {"code": "checkout_cancelled"}}, 0.0)])]
    checkouts = {"co_1": PaidCheckout("co_1", 1, 2, "confirmed", 5, 2 * PRICE, "captured", "pi_1", "k1"),
                 "co_2": PaidCheckout("co_2", 2, 1, "expired", None, PRICE, "cancelled", "pi_2", "k2"),
                 "co_3": PaidCheckout("co_3", 3, 1, "expired", None, PRICE, "cancelled", "pi_3", "k3")}
    intents = [intent("pi_1", "co_1", "succeeded", 2 * PRICE, 1), intent("pi_2", "co_2", "canceled"),
               intent("pi_3", "co_3", "canceled")]
    return {"flows": flows, "snapshot": (8, 0, STOCK, 2, 0, 0.0), "checkouts": checkouts, "orders": {5: (1, 2)},
            "intents": intents}


def judge(case: dict[str, Any]) -> list[str]:
    return check_payments(case["flows"], STOCK, case["snapshot"], case["checkouts"], case["orders"], PRICE,
                          case["intents"])


def test_a_clean_paid_run_passes() -> None:
    assert judge(clean()) == []


def captured_twice(case: dict[str, Any]) -> None:
    case["intents"][0]["captures"] = 2


def left_authorized(case: dict[str, Any]) -> None:
    case["intents"][1]["status"] = "requires_capture"


def captured_without_order(case: dict[str, Any]) -> None:
    case["intents"][2].update(status="succeeded", amount_received=PRICE, captures=1)


def order_not_captured(case: dict[str, Any]) -> None:
    case["checkouts"]["co_1"].payment_status = "capturing"
    case["intents"][0].update(status="requires_capture", amount_received=0, captures=0)


def wrong_amount(case: dict[str, Any]) -> None:
    case["intents"][0]["amount_received"] = PRICE


def order_of_nobody(case: dict[str, Any]) -> None:
    case["orders"][6] = (9, 1)
    case["snapshot"] = (7, 0, STOCK, 3, 0, 0.0)


def units_lost(case: dict[str, Any]) -> None:
    case["snapshot"] = (9, 0, STOCK, 2, 0, 0.0)


def answered_500(case: dict[str, Any]) -> None:
    case["flows"][1].acted.append(Answer(500, {"error": {"code": "internal_error"}}, 0.0))


def told_a_checkout_that_is_not_there(case: dict[str, Any]) -> None:
    del case["checkouts"]["co_2"]
    case["intents"].pop(1)


def confirm_answered_another_order(case: dict[str, Any]) -> None:
    case["flows"][0].acted[0] = Answer(200, {"order_id": 99}, 0.0)


@pytest.mark.parametrize(("change", "says"), [
    (captured_twice, "captured 2 times"),
    (left_authorized, "neither captured nor cancelled"),
    (captured_without_order, "was captured, but its checkout"),
    (order_not_captured, "its payment is capturing"),
    (wrong_amount, "took 700, its checkout owes 1400"),
    (order_of_nobody, "not one per paid checkout"),
    (units_lost, "counted twice or lost"),
    (answered_500, "was answered 500"),
    (told_a_checkout_that_is_not_there, "does not exist as told"),
    (confirm_answered_another_order, "confirm was answered order 99"),
])
def test_each_way_money_and_units_disagree_is_caught(change: Callable[[dict[str, Any]], None], says: str) -> None:
    case = copy.deepcopy(clean())
    change(case)
    found = judge(case)
    assert any(says in problem for problem in found), found
