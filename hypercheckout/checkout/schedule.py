"""Sale windows: a purchase outside its product's window, or above its per-order maximum, is refused.

Two places apply the same rules (``check_sale``):

* **In memory, on every replica** (``SaleSchedule``): each replica keeps every product's rules and compares them
  with PostgreSQL's clock as it reads it (``DatabaseClock``: the replica's own may be skewed), so a herd arriving
  before the start costs what a sold-out rejection costs — no PostgreSQL round trip — and the first purchase at
  the start instant needs no refresh: the start is a time, not a flag. The copy is re-read when a product
  changes (the product-changed channel, within milliseconds) and every ``HC_SCHEDULE_REFRESH_MS`` regardless (the
  guarantee, with Redis down).
* **In the purchase's transaction**, against PostgreSQL's ``now()`` — the time the order carries as created_at. A
  replica whose copy is stale (a start moved later a moment ago) therefore still sells nothing early.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from hypercheckout.checkout.clock import DatabaseClock
from hypercheckout.checkout.errors import (
    CheckoutError,
    queue_pass_expired,
    queue_pass_invalid,
    queue_pass_required,
    sale_ended,
    sale_not_started,
    too_many_for_one_order,
)
from hypercheckout.checkout.models import PurchaseRequest
from hypercheckout.periodic import Every
from hypercheckout.store import SaleRules, Store, WaitingRoom

log = logging.getLogger(__name__)


def check_sale(product_id: int, rules: SaleRules, quantity: int, now: datetime, *, admitted: bool = False) -> None:
    """Raise the refusal for buying ``quantity`` units at ``now`` under ``rules``, if any (``admitted``: the buyer
    holds a valid pass of the product's waiting room)."""
    _Window.of(rules).check(product_id, quantity, now.timestamp(), admitted)


def check_pass_in_transaction(request: PurchaseRequest, room_generation: int, now: float) -> None:
    """Under the row lock of a product with a waiting room: refuse a pass given in an earlier opening of the room
    (closed and opened again since, with a new line), or expired by PostgreSQL's clock ``now`` (epoch seconds), read
    after the purchase's key was claimed (``store.line.passes_used``): a purchase that waited (queued for the row,
    in a batch) past its pass's expiry must not buy with a pass a retry of it was meanwhile told had expired."""
    if request.pass_generation != room_generation:
        raise queue_pass_invalid("it is from an earlier opening of the waiting room; join the queue again")
    if now >= request.pass_expires:
        raise queue_pass_expired(datetime.fromtimestamp(request.pass_expires, UTC).isoformat())


@dataclass(frozen=True, slots=True)
class _Window:
    """Rules ready for the hot path: times as epoch seconds (a float comparison) and their ISO text made once, so
    refusing the herd before a start costs what a sold-out refusal does."""

    starts: float | None
    ends: float | None
    max_per_order: int | None
    starts_text: str
    ends_text: str
    waiting_room: bool

    @classmethod
    def of(cls, rules: SaleRules) -> _Window:
        starts, ends = rules.starts_at, rules.ends_at
        return cls(None if starts is None else starts.timestamp(), None if ends is None else ends.timestamp(),
                   rules.max_per_order, "" if starts is None else starts.isoformat(),
                   "" if ends is None else ends.isoformat(), rules.waiting_room)

    def check(self, product_id: int, quantity: int, now: float, admitted: bool) -> None:
        if self.starts is not None and now < self.starts:
            raise sale_not_started(product_id, self.starts_text, self.starts - now)
        if self.ends is not None and now >= self.ends:
            raise sale_ended(product_id, self.ends_text)
        if self.max_per_order is not None and quantity > self.max_per_order:
            raise too_many_for_one_order(product_id, self.max_per_order)
        if self.waiting_room and not admitted:
            raise queue_pass_required(product_id)


class SaleSchedule:
    """This replica's copy of every product's sale rules. A product it does not know (created a moment ago) is
    left to the transaction's check."""

    def __init__(self, store: Store, *, refresh_seconds: float, local_clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self.clock = DatabaseClock(local_clock)  # every in-memory decision about PostgreSQL's instants uses it
        self._rules: dict[int, SaleRules] = {}
        self._windows: dict[int, _Window] = {}
        self._rooms: dict[int, WaitingRoom] = {}
        self._openings: dict[int, int] = {}  # every known product's latest room opening, open or closed since
        self._changed = asyncio.Event()
        self._rereads: list[asyncio.Future[None]] = []  # callers of reread() waiting for the next read
        self._every = Every("sale schedule read", refresh_seconds, self._read, wake=self._changed)
        self.reads = 0  # completed reads from PostgreSQL, for tests and /metrics
        self._loads_begun = 0  # reads begun, numbered in the order they began
        self._applied = 0  # the number of the read the copy is from

    def check(self, request: PurchaseRequest) -> None:
        window = self._windows.get(request.product_id)
        if window is not None:
            window.check(request.product_id, request.quantity, self.clock(), request.admitted)

    def rules(self, product_id: int) -> SaleRules | None:
        return self._rules.get(product_id)

    def room(self, product_id: int) -> WaitingRoom | None:
        """The product's waiting room, if it has one (by this copy)."""
        return self._rooms.get(product_id)

    def closed_since(self, product_id: int, opening: int) -> bool:
        """Whether, by this copy, the product's room is closed and no opening after ``opening`` was made: a ticket
        of that opening is answered "no waiting room" from memory."""
        return product_id not in self._rooms and self._openings.get(product_id, -1) >= opening

    @property
    def rooms(self) -> dict[int, WaitingRoom]:
        return dict(self._rooms)

    def changed(self, product_id: int | None = None) -> None:
        """A product changed (or any may have): read again now. One task does every read, so a slow old read can
        never overwrite a newer one."""
        self._changed.set()

    async def reread(self) -> None:
        """Return once a read that began after this call has ended: a change this replica just committed (an
        operator's) is in its copy before the operator is answered, so the next request here sees it. A read that
        fails leaves the copy as it was (the periodic re-read catches up)."""
        if not self._every.running:  # not started (tests), or stopped: read here
            await self.load()
            return
        done = asyncio.get_running_loop().create_future()
        self._rereads.append(done)
        self._changed.set()
        await done

    async def load(self) -> None:
        """Read every product's rules into the copy — unless a read that began after this one has been applied
        meanwhile (the periodic read, slow on a busy machine, once overwrote a change a caller had just read)."""
        self._loads_begun += 1
        mine = self._loads_begun
        found = await self._store.sale_rules()
        if mine < self._applied:
            return
        self._applied = mine
        self._windows = {product_id: _Window.of(rules) for product_id, (rules, _, _) in found.items()}
        self._rooms = {product_id: room for product_id, (_, room, _) in found.items() if room is not None}
        self._rules = {product_id: rules for product_id, (rules, _, _) in found.items()}
        self._openings = {product_id: opening for product_id, (_, _, opening) in found.items()}
        self.reads += 1
        try:
            await self.clock.measure(self._store.read_clock)
        except CheckoutError:
            pass  # PostgreSQL went away meanwhile: the rules just read stand; the clock keeps its last offset

    def start(self) -> None:
        self._every.start()

    async def close(self) -> None:
        await self._every.close()

    async def _read(self) -> None:
        """One read, on a change announced or every refresh: one task does every read, in order."""
        self._changed.clear()  # before the read: a change announced during it makes another
        waiting, self._rereads = self._rereads, []
        try:
            await self.load()
        except CheckoutError:
            pass  # PostgreSQL is down: purchases answer 503 anyway, and the transaction checks the window
        finally:
            for done in waiting:
                if not done.done():
                    done.set_result(None)
