"""One exception type for every answer that is not a success; mapped to HTTP in one place (api/base.py)."""

from __future__ import annotations

import math
from typing import Any

NOTHING_SOLD = {"outcome": "nothing_sold"}


class CheckoutError(Exception):
    """An expected failure with its HTTP status, machine-readable code and human message.

    ``extra`` holds additional fields for the error body (e.g. ``remaining``); ``headers`` extra response headers
    (e.g. ``Retry-After``).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra or {}
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.extra}}

    def __repr__(self) -> str:
        return f"CheckoutError({self.status}, {self.code!r}, {self.message!r})"


def invalid_request(message: str) -> CheckoutError:
    return CheckoutError(400, "invalid_request", message)


def unknown_product(product_id: int) -> CheckoutError:
    return CheckoutError(404, "unknown_product", f"product {product_id} does not exist")


def out_of_stock(product_id: int, remaining: int, requested: int) -> CheckoutError:
    return CheckoutError(
        409, "out_of_stock", f"product {product_id} has {remaining} left, {requested} requested",
        extra={"remaining": remaining},
    )


def units_held(product_id: int, held: int, next_expiry_in: float | None) -> CheckoutError:
    """None available, but some units are held by checkouts: they come back if their buyers let them go. Still a
    409, as the original's clients expect of a purchase that cannot be served; Retry-After: until the next hold
    runs out (a release may bring units back sooner)."""
    retry_after = max(1, math.ceil(next_expiry_in)) if next_expiry_in is not None else 1
    return CheckoutError(
        409, "units_held", f"product {product_id} has none available now: {held} held by buyers checking out may "
                           f"come back; retry in {retry_after} s",
        extra={"remaining": 0, "held": held}, headers={"Retry-After": str(retry_after)},
    )


def short_of_stock(product_id: int, stock: int, quantity: int, held: int, next_expiry_in: float | None) \
        -> CheckoutError:
    """The refusal of a request that does not fit what is available: sold out for good only when nothing is held."""
    if stock == 0 and held > 0:
        return units_held(product_id, held, next_expiry_in)
    return out_of_stock(product_id, stock, quantity)


def payment_required(checkout_id: str) -> CheckoutError:
    return CheckoutError(409, "payment_required", f"checkout {checkout_id} is confirmed by its payment, not by a "
                                                  "confirm: pay it (its payment's pay_url or client_secret)")


def checkout_cancelled(checkout_id: str, status: str) -> CheckoutError:
    """A paid checkout that ended without its order: its payment was cancelled, nothing charged."""
    why = "its hold ran out and its units were sold" if status == "expired" else "it was released"
    return CheckoutError(409, "checkout_cancelled", f"checkout {checkout_id} ended without an order ({why}); its "
                                                    "payment was cancelled and nothing was charged",
                         extra=dict(NOTHING_SOLD))


def payments_unavailable(what: str = "the payment provider") -> CheckoutError:
    """The provider cannot be reached: nothing is held or sold, and the request may be retried."""
    return CheckoutError(503, "payments_unavailable", f"{what} cannot be reached; nothing was held or charged, "
                                                      "retry shortly", headers={"Retry-After": "2"})


def unknown_checkout() -> CheckoutError:
    return CheckoutError(404, "unknown_checkout", "no such checkout (its product may have been deleted or reset)")


def hold_expired(checkout_id: str, available: int, quantity: int) -> CheckoutError:
    return CheckoutError(409, "hold_expired",
                         f"checkout {checkout_id} expired and its units went to other buyers: {available} available, "
                         f"{quantity} wanted; nothing was sold", extra={"remaining": available, **NOTHING_SOLD})


def checkout_released(checkout_id: str) -> CheckoutError:
    return CheckoutError(409, "checkout_released",
                         f"checkout {checkout_id} was released: its units went back; nothing was sold",
                         extra=dict(NOTHING_SOLD))


def checkout_confirmed(checkout_id: str, order_id: int) -> CheckoutError:
    return CheckoutError(409, "checkout_confirmed",
                         f"checkout {checkout_id} is confirmed (order {order_id}): it can no longer be released",
                         extra={"order_id": order_id})


def room_sold_out(product_id: int) -> CheckoutError:
    """A join to a sold-out product's waiting room: the purchase's own refusal, worded for the queue."""
    return CheckoutError(409, "out_of_stock", f"product {product_id} is sold out: its waiting room admits nobody",
                         extra={"remaining": 0})


def sale_not_started(product_id: int, starts_at: str, seconds_left: float) -> CheckoutError:
    """Before the window opens (``starts_at`` in ISO 8601). Retry-After is whole seconds to the start, at least 1:
    a client that honours it arrives at (or just after) the start, never before."""
    retry_after = max(1, math.ceil(seconds_left))
    return CheckoutError(
        409, "sale_not_started", f"the sale of product {product_id} starts at {starts_at}",
        extra={"starts_at": starts_at}, headers={"Retry-After": str(retry_after)},
    )


def sale_ended(product_id: int, ends_at: str) -> CheckoutError:
    return CheckoutError(409, "sale_ended", f"the sale of product {product_id} ended at {ends_at}",
                         extra={"ends_at": ends_at})


def too_many_for_one_order(product_id: int, maximum: int) -> CheckoutError:
    return invalid_request(f"quantity must be between 1 and {maximum} for product {product_id}")


def queue_pass_required(product_id: int) -> CheckoutError:
    return CheckoutError(403, "queue_pass_required",
                         f"product {product_id} sells through its waiting room: join the queue "
                         f"(POST /products/{product_id}/queue) and buy with the pass you are given (Queue-Pass)")


def queue_pass_invalid(why: str) -> CheckoutError:
    return CheckoutError(403, "queue_pass_invalid", f"the Queue-Pass is not valid: {why}")


def queue_pass_expired(expired_at: str) -> CheckoutError:
    return CheckoutError(403, "queue_pass_expired", f"the Queue-Pass expired at {expired_at}; join the queue again",
                         extra={"expired_at": expired_at})


def queue_pass_used(product_id: int) -> CheckoutError:
    return CheckoutError(403, "queue_pass_used",
                         f"this Queue-Pass has bought product {product_id} already: a place in line buys once "
                         "(a retry of that purchase with its Idempotency-Key gets its order back)")


def no_waiting_room(product_id: int) -> CheckoutError:
    return CheckoutError(409, "no_waiting_room", f"product {product_id} has no waiting room: buy it directly")


def unknown_ticket() -> CheckoutError:
    return CheckoutError(404, "unknown_ticket", "no such ticket (forged, or its product no longer exists)")


def has_orders(product_id: int, orders: int) -> CheckoutError:
    return CheckoutError(409, "has_orders", f"product {product_id} has {orders} order(s); delete them with it "
                                            "explicitly (with_orders) or keep the product",
                         extra={"orders": orders})


def invalid_token(why: str) -> CheckoutError:
    """RFC 6750: a missing, malformed, expired or forged token. Nothing is said of which check failed beyond
    ``why``; nothing was done."""
    return CheckoutError(401, "invalid_token", f"a valid buyer token is required (Authorization: Bearer): {why}",
                         headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


def buyer_mismatch() -> CheckoutError:
    return CheckoutError(403, "buyer_mismatch", "the body's user_id is not the buyer the token names")


def unauthorized() -> CheckoutError:
    return CheckoutError(401, "unauthorized", "missing or wrong admin token (Authorization: Bearer <token>)",
                         headers={"WWW-Authenticate": 'Bearer realm="hypercheckout-admin"'})


class Unreachable(CheckoutError):
    """A dependency that did not answer. A buyer gets 503 ``unavailable``; ``dependency`` names it for an operator,
    so that the CLI's one-line error says which service was down (with the exception's cause)."""

    def __init__(self, what: str, dependency: str, address: str = "") -> None:
        super().__init__(503, "unavailable", f"{what} is unreachable; nothing was sold, please retry",
                         extra=dict(NOTHING_SOLD))
        self.dependency = dependency
        self.address = address  # host:port/database, never credentials: it goes to an operator's terminal


def unavailable(what: str = "the database", *, dependency: str = "PostgreSQL", address: str = "") -> Unreachable:
    return Unreachable(what, dependency, address)


def queue_unavailable(retry_after: int = 1) -> CheckoutError:
    """A join got no place (the same buyer joining twice at the same instant): joining again is safe, the same
    buyer always gets the same ticket."""
    return CheckoutError(503, "unavailable", f"no place in the queue yet; join again in {retry_after} s",
                         headers={"Retry-After": str(retry_after)})


def statement_cancelled() -> CheckoutError:
    """PostgreSQL cancelled the statement (a statement timeout, or an operator's pg_cancel_backend)."""
    return CheckoutError(503, "unavailable", "the database cancelled the statement; nothing was sold, please retry",
                         extra=dict(NOTHING_SOLD))


def shutting_down() -> CheckoutError:
    return CheckoutError(503, "unavailable", "this replica is shutting down; nothing was sold, please retry",
                         extra=dict(NOTHING_SOLD))


def overloaded(retry_after: int = 1) -> CheckoutError:
    """Refused by admission control before any work: certain that nothing was sold."""
    return CheckoutError(
        503, "overloaded", f"too many purchases right now; nothing was sold, retry in {retry_after} s",
        extra=dict(NOTHING_SOLD), headers={"Retry-After": str(retry_after)},
    )


def outcome_unknown() -> CheckoutError:
    """The connection to PostgreSQL broke while a purchase was committing: it may or may not have been placed."""
    return CheckoutError(
        503, "unavailable",
        "the database connection was lost while the order was being committed; it may or may not have been "
        "placed: retry with the same Idempotency-Key to find out",
        extra={"outcome": "unknown"},
    )


def rate_limited(retry_after: float, banned: bool) -> CheckoutError:
    seconds = max(1, int(retry_after + 0.999))
    if banned:
        return CheckoutError(
            429, "banned", f"too many rejected requests; banned for {seconds} s",
            headers={"Retry-After": str(seconds)},
        )
    return CheckoutError(
        429, "rate_limited", f"too many requests; retry in {seconds} s", headers={"Retry-After": str(seconds)},
    )


def limit_reached(product_id: int, limit: int, owned: int, requested: int) -> CheckoutError:
    return CheckoutError(
        409, "limit_reached",
        f"product {product_id} allows {limit} per buyer; this buyer has {owned}, {requested} requested",
        extra={"limit": limit},
    )


def idempotency_key_reused() -> CheckoutError:
    return CheckoutError(
        422, "idempotency_key_reused", "this Idempotency-Key was used with a different request body",
    )


def request_in_progress() -> CheckoutError:
    return CheckoutError(
        409, "request_in_progress", "a request with this Idempotency-Key is still being processed; retry shortly",
        headers={"Retry-After": "1"},
    )


class DuplicateKey(Exception):
    """Not an answer: a strategy found a request's Idempotency-Key taken by a committed order and rolled back its
    own work. The checkout service answers with that stored order instead."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key
