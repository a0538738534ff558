"""Values that flow through the purchase path."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class PurchaseRequest:
    user_id: int
    product_id: int
    quantity: int


@dataclass(frozen=True, slots=True)
class Order:
    """A committed order. ``remaining`` is the product's stock right after it, as the settling transaction saw it."""

    id: int
    user_id: int
    product_id: int
    quantity: int
    created_at: datetime
    remaining: int
