"""What the store hands out and takes in: products and their rules, a line's segments, locked rows, the fields an
operator sets, an order found by its key."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

# A waiting room's defaults when a product is created without them (the columns' defaults, 0003_waiting_room.sql).
DEFAULT_ADMIT_PER_SECOND = 100
DEFAULT_PASS_SECONDS = 120
MAX_PASS_SECONDS = 86_400  # products_pass_seconds_check (0003_waiting_room.sql)
DEFAULT_HOLD_SECONDS = 600  # how long a checkout holds its units (0008_checkouts.sql)
MAX_HOLD_SECONDS = 86_400
# The columns of a products row as ``Product`` takes them, in order (its admission origin: the later of the room's
# origin and the start).
PRODUCT_COLUMNS = ("id, name, stock, initial_stock, per_user_limit, starts_at, ends_at, max_per_order, waiting_room, "
                   "admit_per_second, pass_seconds, GREATEST(admission_origin, starts_at), admitted_before, "
                   "room_generation, admission_history, held, hold_seconds, lapsed_units(id), price, currency")


@dataclass(frozen=True, slots=True)
class SaleRules:
    """When a product may be bought and how many units at once: checked before stock, in memory and in the
    locked transaction alike."""

    starts_at: datetime | None = None
    ends_at: datetime | None = None
    max_per_order: int | None = None
    waiting_room: bool = False  # a purchase needs a valid Queue-Pass


@dataclass(frozen=True, slots=True)
class WaitingRoom:
    """How a product's waiting room admits: ``admitted_before`` tickets, then ``admit_per_second`` a second from
    ``origin`` (None: not yet known — no start and the room never opened)."""

    admit_per_second: int
    pass_seconds: int
    origin: datetime | None
    admitted_before: int
    generation: int = 1
    history: tuple[tuple[float, int, int], ...] = ()  # earlier segments, oldest first: (origin, before, rate)


@dataclass(frozen=True, slots=True)
class Product:
    id: int
    name: str
    stock: int
    initial_stock: int
    per_user_limit: int | None
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    max_per_order: int | None = None  # None: the service's HC_MAX_QUANTITY
    waiting_room: bool = False
    admit_per_second: int = DEFAULT_ADMIT_PER_SECOND
    pass_seconds: int = DEFAULT_PASS_SECONDS
    admission_origin: datetime | None = None  # the later of the room's origin and the start
    admitted_before: int = 0
    room_generation: int = 0  # which opening of the room: a ticket of an earlier one admits nobody
    admission_history: Any = ()  # the line's earlier segments: [origin epoch, admitted_before, rate]
    held: int = 0  # units of checkouts still recorded as held, lapsed ones included
    hold_seconds: int = DEFAULT_HOLD_SECONDS
    lapsed: int = 0  # of ``held``, the units whose hold has expired, not yet given back: available
    price: int = 0  # a unit's, in the currency's minor units (0: free)
    currency: str = "usd"  # ISO 4217, lower case (as Stripe writes it)

    @property
    def available(self) -> int:
        """Units a purchase or a hold can take now: in stock, or held by a checkout whose hold has lapsed."""
        return self.stock + self.lapsed

    @property
    def held_now(self) -> int:
        """Units held by checkouts whose hold is still running."""
        return self.held - self.lapsed

    @property
    def sold(self) -> int:
        return self.initial_stock - self.stock - self.held

    @property
    def rules(self) -> SaleRules:
        return SaleRules(self.starts_at, self.ends_at, self.max_per_order, self.waiting_room)

    @property
    def room(self) -> WaitingRoom | None:
        if not self.waiting_room:
            return None
        return WaitingRoom(self.admit_per_second, self.pass_seconds, self.admission_origin, self.admitted_before,
                           self.room_generation, _segments(self.admission_history))

    def status(self, now: datetime) -> str:
        """``ended`` past the end, ``scheduled`` before the start, else ``sold_out`` when every unit is sold,
        ``held`` when none is available but some are held (they may come back), else ``live``."""
        if self.ends_at is not None and now >= self.ends_at:
            return "ended"
        if self.starts_at is not None and now < self.starts_at:
            return "scheduled"
        if self.available == 0:
            return "held" if self.held_now > 0 else "sold_out"
        return "live"

    def as_json(self, max_quantity: int, now: datetime) -> dict[str, Any]:
        """The product as GET /products/{id} shows it; ``max_per_order`` is the one in force (the product's own,
        never above the service's HC_MAX_QUANTITY); its status at ``now``, by PostgreSQL's clock (a replica's own
        may be skewed)."""
        return {
            "id": self.id,
            "name": self.name,
            "stock": self.available,  # the original's field: what can be bought now
            "available": self.available,
            "held": self.held_now,
            "sold": self.sold,
            "initial_stock": self.initial_stock,
            "hold_seconds": self.hold_seconds,
            "price": self.price,
            "currency": self.currency,
            "per_user_limit": self.per_user_limit,
            "max_per_order": min(self.max_per_order or max_quantity, max_quantity),
            "starts_at": None if self.starts_at is None else self.starts_at.isoformat(),
            "ends_at": None if self.ends_at is None else self.ends_at.isoformat(),
            "status": self.status(now),
            "waiting_room": self.waiting_room,
            **({"admit_per_second": self.admit_per_second, "pass_seconds": self.pass_seconds}
               if self.waiting_room else {}),
        }


@dataclass(frozen=True, slots=True)
class ProductStatus:
    product: Product
    sold: int
    orders: int
    passes_used: int = 0  # orders bought with a pass of the room's current opening (one each: orders_one_per_pass)


@dataclass(frozen=True, slots=True)
class LockedStock:
    stock: int
    per_user_limit: int | None
    order_id: int | None  # reserved for this purchase when asked for
    rules: SaleRules
    now: datetime  # the transaction's time, which its order carries as created_at
    room_generation: int = 0  # the waiting room's opening: a pass of another one buys nothing
    held: int = 0  # units held by checkouts (lapsed ones included, until given back)


@dataclass(frozen=True, slots=True)
class PlainBatch:
    """A batch settled by its one statement (``Store.settle_plain_batch``): every purchase granted, in order."""

    stock: int  # after the batch
    held: int
    now: datetime  # the transaction's time: the orders' created_at
    order_ids: list[int]  # the batch's orders, in the order of its requests


@dataclass(frozen=True, slots=True)
class BatchLock:
    stock: int
    per_user_limit: int | None
    now: datetime
    order_ids: list[int]
    rules: SaleRules
    room_generation: int = 0
    held: int = 0


@dataclass(frozen=True, slots=True)
class ProductChanges:
    """The fields an operator sets on a product. Only those named in ``given`` are written; a given None clears a
    field that may be empty (a limit, a window's end)."""

    name: Any = None
    stock: Any = None
    per_user_limit: Any = None
    max_per_order: Any = None
    starts_at: Any = None
    ends_at: Any = None
    waiting_room: Any = None
    admit_per_second: Any = None
    pass_seconds: Any = None
    hold_seconds: Any = None
    price: Any = None
    currency: Any = None
    given: frozenset[str] = frozenset()  # which of the fields above were given

    def params(self) -> dict[str, Any]:
        values = {name: getattr(self, name) for name in UPDATABLE}
        return {**values, **{f"set_{name}": name in self.given for name in UPDATABLE}}


UPDATABLE = ("name", "stock", "per_user_limit", "max_per_order", "starts_at", "ends_at", "waiting_room",
             "admit_per_second", "pass_seconds", "hold_seconds", "price", "currency")


@dataclass(frozen=True, slots=True)
class StoredOrder:
    """An order found through its Idempotency-Key, with the fingerprint of the request that placed it."""

    fingerprint: str
    id: int
    user_id: int
    product_id: int
    quantity: int
    created_at: datetime
    replica: str


def _segments(history: Any) -> tuple[tuple[float, int, int], ...]:
    return tuple((float(at), int(before), int(rate)) for at, before, rate in history or ())
