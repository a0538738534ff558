"""Products as operators manage them — create, update, delete — with one validation for every interface.

The admin JSON API hands over JSON values, the dashboard's form and the CLI hand over text; both end in
``changes_from_json``, so a field means the same everywhere and is refused with the same 400. Every change is
announced on the product-changed channel, so each replica re-reads its copy of the sale windows at once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from hypercheckout.checkout.errors import invalid_request, unknown_product
from hypercheckout.checkout.soldout import announce_product_changed
from hypercheckout.checkout.validation import MAX_ID, MAX_UNITS, parse_whole_number
from hypercheckout.redisclient import RedisClient
from hypercheckout.store import MAX_HOLD_SECONDS, MAX_PASS_SECONDS, UPDATABLE, Product, ProductChanges, Store

MAX_NAME = 200
_RELATIVE = re.compile(r"\+([0-9]{1,9})(\.[0-9]{1,6})?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
TIME_FIELDS = ("starts_at", "ends_at")
CLEARABLE = ("per_user_limit", "max_per_order", "starts_at", "ends_at")
NUMBERS = ("stock", "per_user_limit", "max_per_order", "admit_per_second", "pass_seconds", "hold_seconds",
           "price")
MAX_ADMIT_PER_SECOND = 1_000_000  # the columns' bounds (0003_waiting_room.sql)
MAX_PRICE = 99_999_999  # Stripe's largest amount (eight digits of minor units)
_CURRENCY = re.compile(r"[A-Za-z]{3}")
_YES, _NO = ("yes", "true", "on", "1"), ("no", "false", "off", "0", "")


def parse_when(text: str, name: str, now: datetime) -> datetime | None:
    """A time as operators write it: ISO 8601 with an offset (``2026-12-01T10:00:00+01:00``, ``…Z``),
    ``+SECONDS`` from now, ``now``, or ``none`` (no time: on sale now / no end)."""
    value = text.strip()
    if value.lower() == "none":
        return None
    if value.lower() == "now":
        return now
    relative = _RELATIVE.fullmatch(value)
    try:
        if relative:
            return now + timedelta(seconds=float(value[1:]))
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise invalid_request(f"{name} must be ISO 8601 with an offset (2026-12-01T10:00:00+01:00), +SECONDS "
                              "from now, now or none") from None
    except OverflowError:
        raise invalid_request(f"{name} is out of range: years 1 to 9999 in UTC") from None
    if parsed.tzinfo is None:
        raise invalid_request(f"{name} needs a UTC offset (…+01:00 or …Z): a time without one is ambiguous")
    try:
        parsed.astimezone(UTC)  # stored, compared and shown in UTC: 0001-01-01T00:00+14:00 is year 0 there
    except OverflowError:
        raise invalid_request(f"{name} is out of range: years 1 to 9999 in UTC") from None
    return parsed


def _number(value: Any, name: str, minimum: int, maximum: int, *, clearable: bool) -> int | None:
    if value is None and clearable:
        return None
    # bool is an int in Python; JSON true is not a number of units.
    if type(value) is not int or not minimum <= value <= maximum:
        empty = " or null" if clearable else ""
        raise invalid_request(f"{name} must be a whole number from {minimum} to {maximum}{empty}")
    return value


def changes_from_json(data: Any, *, creating: bool, max_quantity: int, now: datetime) -> ProductChanges:
    """Validate a product's fields (a JSON object's values); ``creating`` makes name and stock required. A time
    given as ``now`` or ``+SECONDS`` is from ``now``, PostgreSQL's clock (the one its start is checked against)."""
    if not isinstance(data, dict):
        raise invalid_request("the body must be a JSON object of product fields")
    unknown = sorted(set(data) - set(UPDATABLE))
    if unknown:
        raise invalid_request(f"unknown field(s): {', '.join(unknown)}; known: {', '.join(UPDATABLE)}")
    if creating:
        missing = [name for name in ("name", "stock") if name not in data]
        if missing:
            raise invalid_request(f"missing field(s): {', '.join(missing)}")
    if not data:
        raise invalid_request(f"nothing to change; fields: {', '.join(UPDATABLE)}")
    values: dict[str, Any] = {}
    if "name" in data:
        name = data["name"]
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME or _CONTROL.search(name):
            raise invalid_request(f"name must be text of 1 to {MAX_NAME} characters, without control characters")
        values["name"] = name.strip()
    if "stock" in data:
        values["stock"] = _number(data["stock"], "stock", 0, MAX_UNITS, clearable=False)
    if "per_user_limit" in data:
        values["per_user_limit"] = _number(data["per_user_limit"], "per_user_limit", 1, MAX_UNITS, clearable=True)
    if "max_per_order" in data:
        values["max_per_order"] = _number(data["max_per_order"], "max_per_order", 1, max_quantity, clearable=True)
    if "waiting_room" in data:
        if type(data["waiting_room"]) is not bool:
            raise invalid_request("waiting_room must be true or false")
        values["waiting_room"] = data["waiting_room"]
    if "admit_per_second" in data:
        values["admit_per_second"] = _number(data["admit_per_second"], "admit_per_second", 1, MAX_ADMIT_PER_SECOND,
                                             clearable=False)
    if "pass_seconds" in data:
        values["pass_seconds"] = _number(data["pass_seconds"], "pass_seconds", 1, MAX_PASS_SECONDS, clearable=False)
    if "hold_seconds" in data:
        values["hold_seconds"] = _number(data["hold_seconds"], "hold_seconds", 1, MAX_HOLD_SECONDS, clearable=False)
    if "price" in data:
        values["price"] = _number(data["price"], "price", 0, MAX_PRICE, clearable=False)
    if "currency" in data:
        currency = data["currency"]
        if not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
            raise invalid_request("currency must be an ISO 4217 code of three letters, e.g. usd or eur")
        values["currency"] = currency.lower()
    for name in TIME_FIELDS:
        if name in data:
            raw = data[name]
            if raw is not None and not isinstance(raw, str):
                raise invalid_request(f"{name} must be an ISO 8601 string with an offset, or null")
            values[name] = None if raw is None else parse_when(raw, name, now)
    starts, ends = values.get("starts_at"), values.get("ends_at")
    if starts is not None and ends is not None and ends <= starts:
        raise invalid_request("ends_at must be after starts_at")
    return ProductChanges(**values, given=frozenset(values))


def changes_from_text(fields: Mapping[str, str | None], *, creating: bool, max_quantity: int,
                      now: datetime) -> ProductChanges:
    """The same fields as text (a form, CLI options): numbers in ASCII digits; an empty limit or time, or
    ``none``, clears it (and a per-user limit of 0 means none, as for `reset`). Fields given as None are absent."""
    data: dict[str, Any] = {}
    for name, raw in fields.items():
        if raw is None:
            continue
        text = raw.strip()
        if name in CLEARABLE and (text == "" or text.lower() == "none" or (name == "per_user_limit" and text == "0")):
            data[name] = None
        elif name in NUMBERS:
            data[name] = parse_whole_number(text, name, 0, MAX_UNITS)
        elif name == "waiting_room":
            if text.lower() not in _YES + _NO:
                raise invalid_request("waiting_room must be on or off")
            data[name] = text.lower() in _YES
        else:
            data[name] = raw
    return changes_from_json(data, creating=creating, max_quantity=max_quantity, now=now)


@dataclass(frozen=True, slots=True)
class Changed:
    product: Product | None  # None after a delete
    deleted_orders: int
    announced: bool  # False: Redis was down; replicas catch up by their periodic re-read


async def create_product(store: Store, client: RedisClient, prefix: str, changes: ProductChanges) -> Changed:
    product = await store.create_product(changes)
    return Changed(product, 0, await announce_product_changed(client, prefix, product.id))


async def update_product(store: Store, client: RedisClient, prefix: str, product_id: int,
                         changes: ProductChanges) -> Changed:
    _check_id(product_id)
    product = await store.update_product(product_id, changes)
    if product is None:
        raise unknown_product(product_id)
    return Changed(product, 0, await announce_product_changed(client, prefix, product_id))


async def delete_product(store: Store, client: RedisClient, prefix: str, product_id: int, *,
                         with_orders: bool) -> Changed:
    _check_id(product_id)
    deleted = await store.delete_product(product_id, with_orders=with_orders)
    if deleted is None:
        raise unknown_product(product_id)
    return Changed(None, deleted, await announce_product_changed(client, prefix, product_id))


def _check_id(product_id: int) -> None:
    if not 1 <= product_id <= MAX_ID:
        raise invalid_request(f"product id must be from 1 to {MAX_ID}")
