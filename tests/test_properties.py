"""Property tests (hypothesis): the purchase parser accepts exactly the valid bodies and answers anything else with
a 400, and the batch allocator keeps its rules for any stock, quantities, buyers and limit."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from hypercheckout.checkout.allocation import LIMIT_REACHED, OUT_OF_STOCK, allocate
from hypercheckout.checkout.errors import CheckoutError
from hypercheckout.checkout.validation import MAX_ID, parse_purchase

MAX_QUANTITY = 10
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=8,
)
fields = st.sampled_from(["user_id", "product_id", "quantity", "extra", "User_id"])


def valid(body: dict[str, object]) -> bool:
    if set(body) != {"user_id", "product_id", "quantity"}:
        return False
    if any(type(v) is not int for v in body.values()):
        return False
    return (1 <= body["user_id"] <= MAX_ID and 1 <= body["product_id"] <= MAX_ID  # type: ignore[operator]
            and 1 <= body["quantity"] <= MAX_QUANTITY)  # type: ignore[operator]


@settings(max_examples=600, deadline=None)
@given(st.dictionaries(fields, json_values | st.integers(min_value=-5, max_value=2**64), max_size=4))
def test_a_body_is_accepted_exactly_when_it_is_valid(body: dict[str, object]) -> None:
    raw = json.dumps(body).encode()
    try:
        request = parse_purchase(raw, max_quantity=MAX_QUANTITY, max_body_bytes=10_000)
    except CheckoutError as exc:
        assert exc.status == 400 and exc.code == "invalid_request" and not valid(body)
    else:
        assert valid(body)
        assert (request.user_id, request.product_id, request.quantity) == (
            body["user_id"], body["product_id"], body["quantity"])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_anything_else_is_a_400_never_a_crash(raw: bytes) -> None:
    try:
        parse_purchase(raw, max_quantity=MAX_QUANTITY, max_body_bytes=150)
    except CheckoutError as exc:
        assert exc.status == 400


@settings(max_examples=500, deadline=None)
@given(stock=st.integers(min_value=0, max_value=30),
       wanted=st.lists(st.tuples(st.integers(min_value=1, max_value=4), st.integers(min_value=1, max_value=5)),
                       max_size=25),
       bought=st.dictionaries(st.integers(min_value=1, max_value=4), st.integers(min_value=0, max_value=4)),
       limit=st.none() | st.integers(min_value=1, max_value=6))
def test_the_allocator_keeps_its_rules(stock: int, wanted: list[tuple[int, int]], bought: dict[int, int],
                                      limit: int | None) -> None:
    users = [user for user, _ in wanted]
    quantities = [qty for _, qty in wanted]
    result = allocate(stock, quantities, users=users, bought=bought, per_user_limit=limit)
    left = stock
    owned = dict(bought)
    for user, qty, ok, seen, refusal in zip(users, quantities, result.granted, result.remaining_before,
                                            result.refusals, strict=True):
        assert seen == left  # arrival order: each request sees what the ones before it left
        over_limit = limit is not None and owned.get(user, 0) + qty > limit
        assert ok == (not over_limit and qty <= left)  # granted whole exactly when it fits; never a partial fill
        assert refusal == (None if ok else LIMIT_REACHED if over_limit else OUT_OF_STOCK)
        if ok:
            left -= qty
            owned[user] = owned.get(user, 0) + qty
    assert result.stock_after == left >= 0  # never below zero
    if limit is not None:
        granted_to: dict[int, int] = {}
        for user, qty, ok in zip(users, quantities, result.granted, strict=True):
            granted_to[user] = granted_to.get(user, 0) + (qty if ok else 0)
        assert all(bought.get(u, 0) + n <= limit or n == 0 for u, n in granted_to.items())
