"""Values that flow through the purchase path."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class PurchaseRequest:
    user_id: int
    product_id: int
    quantity: int
    idempotency_key: str | None = None
    queue_pass: str | None = None  # the Queue-Pass header, as sent
    # Set once the pass was checked (valid, unexpired, for this buyer and product): the opening of the room it was
    # given in. With the buyer and the product it names the pass, which buys once.
    pass_generation: int | None = None
    pass_expires: int = 0  # the pass's expiry (epoch seconds), checked again in the transaction
    pays: bool = False  # a hold (payments on) that its payment, not its buyer, confirms if its product has a price

    @property
    def admitted(self) -> bool:
        return self.pass_generation is not None

    @property
    def fingerprint(self) -> str:
        """What an Idempotency-Key is bound to: the request's meaning, not its bytes (spacing, key order)."""
        return f"{self.user_id}:{self.product_id}:{self.quantity}"


@dataclass(frozen=True, slots=True)
class Order:
    """A committed order. ``remaining`` is the product's stock right after it, as the settling transaction saw it."""

    id: int
    user_id: int
    product_id: int
    quantity: int
    created_at: datetime
    remaining: int | None  # None for a replayed answer: the stock now is another question
    replica: str = ""  # which replica placed it (a replayed answer names the original one)
    replayed: bool = False  # the stored answer to an earlier request with the same Idempotency-Key
    held: int = 0  # units held by checkouts right after it (with none left and none held: sold out for good)
    checkout_id: str | None = None  # the checkout it confirmed
    rebooked: bool = False  # that checkout's hold had run out: its units were taken again from what was available


@dataclass(frozen=True, slots=True)
class Hold:
    """A checkout: units held for its buyer until ``expires_at`` (PostgreSQL's clock), then confirmed into an
    order, released, or expired."""

    id: str
    user_id: int
    product_id: int
    quantity: int
    status: str  # held, confirmed, released, expired
    created_at: datetime
    expires_at: datetime
    replica: str = ""
    order_id: int | None = None
    ordered_at: datetime | None = None
    rebooked: bool = False
    ended_at: datetime | None = None
    replayed: bool = False
    remaining: int | None = None  # stock right after it was taken, as its transaction saw it
    held: int = 0  # units held right after it was taken
    amount: int = 0  # what it owes (minor units of currency)
    currency: str = "usd"
    payment_status: str | None = None  # None: no payment (free, or payments off); else 0012_payments.sql's
    payment_intent: str | None = None
    payment_secret: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The checkout as GET /checkouts/{id} shows it."""
        body: dict[str, Any] = {
            "checkout_id": self.id,
            "status": self.status,
            "user_id": self.user_id,
            "product_id": self.product_id,
            "quantity": self.quantity,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "replica": self.replica,
        }
        if self.ended_at is not None:
            body["ended_at"] = self.ended_at.isoformat()
        if self.order_id is not None:
            body["order_id"] = self.order_id
            body["rebooked"] = self.rebooked
        if self.payment_status is not None:
            body["payment"] = {"status": self.payment_status, "amount": self.amount, "currency": self.currency,
                               "intent_id": self.payment_intent, "client_secret": self.payment_secret}
        return body
