"""Strict parsing of a purchase body: anything but three positive integers is rejected before any I/O."""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

from hypercheckout.checkout.errors import invalid_request
from hypercheckout.checkout.models import PurchaseRequest

FIELDS = ("user_id", "product_id", "quantity")
MAX_ID = 2**63 - 1  # ids are PostgreSQL bigints
MAX_UNITS = 2**31 - 1  # stock and per-user limits are PostgreSQL integers
_WHOLE_NUMBER = re.compile(r"[0-9]{1,19}")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A duplicated key would let a body say two things at once ({"quantity": 1, "quantity": -5}).
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate field {key!r}")
        result[key] = value
    return result


# Built once: json.loads with hooks builds a new decoder on every call.
_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_reject_constant)


def parse_whole_number(raw: str, name: str, minimum: int, maximum: int) -> int:
    """An operator's number (a form field, a CLI argument): ASCII digits only — ``str.isdigit`` also accepts "²",
    which ``int`` refuses — within the column's range, or a 400 naming the field."""
    text = raw.strip()
    if not _WHOLE_NUMBER.fullmatch(text) or not minimum <= int(text) <= maximum:
        raise invalid_request(f"{name} must be a whole number from {minimum} to {maximum}")
    return int(text)


def parse_address(raw: str) -> str:
    """A client address as the limiter keys it (canonical form), or a 400."""
    try:
        return str(ipaddress.ip_address(raw.strip()))
    except ValueError:
        raise invalid_request(f"{raw[:60]!r} is not an IP address") from None


def parse_json_body(body: bytes, max_body_bytes: int, *, empty: str = "body is empty; expected a JSON object") -> Any:
    """Strict JSON (no duplicate keys, no NaN) within a size limit, or a 400 saying what is wrong."""
    if len(body) > max_body_bytes:
        raise invalid_request(f"body is larger than {max_body_bytes} bytes")
    if not body.strip():
        raise invalid_request(empty)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise invalid_request("body is not valid UTF-8") from None
    try:
        return _DECODER.decode(text)
    except (ValueError, RecursionError) as exc:
        raise invalid_request(f"body is not valid JSON: {exc}") from None


def parse_join(body: bytes, *, max_body_bytes: int, user_optional: bool = False) -> int:
    """The buyer of a ``POST /products/{id}/queue`` body (``{"user_id": N}``), or a 400 saying what is wrong.
    ``user_optional`` (the buyer is a verified token's): an empty object is the token's buyer (0 here)."""
    data = parse_json_body(body, max_body_bytes, empty="body is empty; expected a JSON object with user_id")
    if not isinstance(data, dict):
        raise invalid_request("body must be a JSON object")
    unknown = sorted(set(data) - {"user_id"})
    if unknown:
        raise invalid_request(f"unknown field(s): {', '.join(unknown)}")
    if "user_id" not in data:
        if user_optional:
            return 0
        raise invalid_request("missing field(s): user_id")
    user_id = data["user_id"]
    if type(user_id) is not int:
        kind = "null" if user_id is None else type(user_id).__name__
        raise invalid_request(f"user_id must be an integer, got {kind}")
    if not 1 <= user_id <= MAX_ID:
        raise invalid_request(f"user_id must be between 1 and {MAX_ID}")
    return int(user_id)


DEMO_NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")


def parse_demo_sign_in(body: bytes, *, max_body_bytes: int) -> str:
    """The name of a ``POST /demo/sign-in`` body (``{"name": "alice"}``): 1-64 letters, digits, ``. _ @ -``."""
    data = parse_json_body(body, max_body_bytes, empty="body is empty; expected a JSON object with name")
    if not isinstance(data, dict):
        raise invalid_request("body must be a JSON object")
    unknown = sorted(set(data) - {"name"})
    if unknown:
        raise invalid_request(f"unknown field(s): {', '.join(unknown)}")
    name = data.get("name")
    if not isinstance(name, str) or not DEMO_NAME.fullmatch(name):
        raise invalid_request("name must be 1 to 64 letters, digits, '.', '_', '@' or '-'")
    return name


def parse_purchase(body: bytes, *, max_quantity: int, max_body_bytes: int,
                   idempotency_key: str | None = None, queue_pass: str | None = None,
                   user_optional: bool = False) -> PurchaseRequest:
    """Parse and validate a ``POST /purchase`` body or raise a 400 ``CheckoutError`` saying what is wrong.
    ``user_optional`` (the buyer is a verified token's): a body without user_id gets 0, the token's buyer."""
    data = parse_json_body(body, max_body_bytes,
                           empty="body is empty; expected a JSON object with user_id, product_id and quantity")
    if not isinstance(data, dict):
        raise invalid_request("body must be a JSON object")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise invalid_request(f"unknown field(s): {', '.join(unknown)}")
    absent = user_optional and "user_id" not in data
    if absent:
        data = {**data, "user_id": 0}  # the token's buyer, set by the handler
    missing = [name for name in FIELDS if name not in data]
    if missing:
        raise invalid_request(f"missing field(s): {', '.join(missing)}")
    for name in FIELDS:
        value = data[name]
        # bool is a subclass of int in Python; JSON true must not buy one unit.
        if type(value) is not int:
            kind = "null" if value is None else type(value).__name__
            raise invalid_request(f"{name} must be an integer, got {kind}")
    user_id, product_id, quantity = data["user_id"], data["product_id"], data["quantity"]
    if not 1 <= user_id <= MAX_ID and not absent:
        raise invalid_request(f"user_id must be between 1 and {MAX_ID}")
    if not 1 <= product_id <= MAX_ID:
        raise invalid_request(f"product_id must be between 1 and {MAX_ID}")
    if not 1 <= quantity <= max_quantity:
        raise invalid_request(f"quantity must be between 1 and {max_quantity}")
    return PurchaseRequest(user_id=user_id, product_id=product_id, quantity=quantity, idempotency_key=idempotency_key,
                           queue_pass=queue_pass)
