"""Answers' bodies (api/base.py encode_json): orjson's bytes, meaning what json.dumps(default=str) meant."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from hypercheckout.api.base import encode_json


@dataclasses.dataclass
class _Thing:
    name: str


WHEN = datetime(2026, 12, 7, 22, 30, 1, 250_000, tzinfo=UTC)


@pytest.mark.parametrize("body", [
    {"message": "Order placed successfully", "order_id": 9_223_372_036_854_775_807, "user_id": 1, "quantity": 2,
     "created_at": WHEN.isoformat(), "replica": "app-1"},
    {"error": {"code": "out_of_stock", "message": "only 0 left", "remaining": 0, "requested": 1}},
    {"when": WHEN, "price": Decimal("19.99"), "thing": _Thing("x"), "nested": [None, True, 1.5, "é ☃"]},
    {"too big": 2**70},  # beyond 64 bits: orjson refuses it, json takes it
    {1: "a key that is not a string"},
])
def test_a_body_means_what_json_with_str_for_the_unknown_made_of_it(body: dict[Any, Any]) -> None:
    expected = json.loads(json.dumps(body, default=str))
    assert json.loads(encode_json(body)) == expected


def test_a_body_is_compact_bytes() -> None:
    assert encode_json({"status": "ok", "replica": "app-1"}) == b'{"status":"ok","replica":"app-1"}'
