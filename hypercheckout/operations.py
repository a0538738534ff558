"""Operator actions, shared by the CLI and the admin dashboard: reset stock, lift bans, report status."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypercheckout.checkout.errors import invalid_request, unknown_product
from hypercheckout.checkout.soldout import announce_product_changed
from hypercheckout.checkout.validation import MAX_ID, MAX_UNITS
from hypercheckout.limiter import RateLimiter
from hypercheckout.login_throttle import LoginThrottle
from hypercheckout.redisclient import REDIS_ERRORS, RedisClient
from hypercheckout.stats import clear_hits
from hypercheckout.store import Store


def check_range(value: int, name: str, minimum: int, maximum: int) -> None:
    """The CLI hands over numbers argparse made; they must still fit PostgreSQL's columns."""
    if not minimum <= value <= maximum:
        raise invalid_request(f"{name} must be from {minimum} to {maximum}")


@dataclass(frozen=True, slots=True)
class ResetResult:
    product_id: int
    stock: int
    deleted_orders: int
    announced: bool  # False: Redis was down; replicas clear their sold-out flags by their PostgreSQL recheck


async def reset_product(
    store: Store, client: RedisClient, prefix: str, product_id: int, stock: int | None = None, *,
    per_user_limit: int | None = None,
) -> ResetResult:
    """Set stock and initial stock (default: the current initial stock), delete the product's orders, and tell
    every replica its sold-out flag for the product is stale. ``per_user_limit``: None leaves it as it is, 0
    removes it."""
    check_range(product_id, "product id", 1, MAX_ID)
    if stock is not None:
        check_range(stock, "stock", 0, MAX_UNITS)
    if per_user_limit is not None:
        check_range(per_user_limit, "per-user limit (0: no limit)", 0, MAX_UNITS)
    if stock is None:
        product = await store.get_product(product_id)
        if product is None:
            raise unknown_product(product_id)
        stock = product.initial_stock
    deleted = await store.reset_product(product_id, stock, per_user_limit=per_user_limit)
    if deleted is None:
        raise unknown_product(product_id)
    announced = await announce_product_changed(client, prefix, product_id)
    if announced:
        await clear_hits(client, prefix)  # per-replica counts start again with the new sale
    return ResetResult(product_id=product_id, stock=stock, deleted_orders=deleted, announced=announced)


async def status_report(store: Store, limiter: RateLimiter, login_throttle: LoginThrottle) -> dict[str, Any]:
    """Per product: available, held (running holds) and sold (Σ orders.quantity), which add up to the initial
    stock; the order count; active bans and admin-login
    lockouts (None if Redis is unreachable)."""
    rows = await store.status()
    try:
        found = [*await limiter.bans(), *await login_throttle.lockouts()]
        bans: list[dict[str, object]] | None = [b.as_json() for b in found]
    except REDIS_ERRORS:
        bans = None
    return {
        "products": [
            {
                "id": r.product.id,
                "name": r.product.name,
                "stock": r.product.available,
                "available": r.product.available,
                "held": r.product.held_now,
                "initial_stock": r.product.initial_stock,
                "sold": r.sold,
            }
            for r in rows
        ],
        "orders": sum(r.orders for r in rows),
        "bans": bans,
    }
