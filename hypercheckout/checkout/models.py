"""Values that flow through the purchase path."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


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
