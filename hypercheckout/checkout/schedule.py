"""Sale windows: a purchase outside its product's window, or above its per-order maximum, is refused.

Two places apply the same rules (``check_sale``):

* **In memory, on every replica** (``SaleSchedule``): each replica keeps every product's rules and compares them
  with its clock, so a herd arriving before the start costs what a sold-out rejection costs — no PostgreSQL round
  trip — and the first purchase at the start instant needs no refresh: the start is a time, not a flag. The copy
  is re-read when a product changes (the product-changed channel, within milliseconds) and every
  ``HC_SCHEDULE_REFRESH_MS`` regardless (the guarantee, with Redis down).
* **In the purchase's transaction**, against PostgreSQL's ``now()`` — the time the order carries as created_at. A
  replica whose copy is stale (a start moved later a moment ago) therefore still sells nothing early.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from hypercheckout.checkout.errors import (
    CheckoutError,
    sale_ended,
    sale_not_started,
    too_many_for_one_order,
)
from hypercheckout.checkout.models import PurchaseRequest
from hypercheckout.store import SaleRules, Store

log = logging.getLogger(__name__)


def check_sale(product_id: int, rules: SaleRules, quantity: int, now: datetime) -> None:
    """Raise the refusal for buying ``quantity`` units at ``now`` under ``rules``, if any."""
    if rules.starts_at is not None and now < rules.starts_at:
        raise sale_not_started(product_id, rules.starts_at, (rules.starts_at - now).total_seconds())
    if rules.ends_at is not None and now >= rules.ends_at:
        raise sale_ended(product_id, rules.ends_at)
    if rules.max_per_order is not None and quantity > rules.max_per_order:
        raise too_many_for_one_order(product_id, rules.max_per_order)


def utc_now() -> datetime:
    return datetime.now(UTC)


class SaleSchedule:
    """This replica's copy of every product's sale rules. A product it does not know (created a moment ago) is
    left to the transaction's check."""

    def __init__(self, store: Store, *, refresh_seconds: float, clock: Callable[[], datetime] = utc_now) -> None:
        self._store = store
        self._refresh = refresh_seconds
        self._clock = clock
        self._rules: dict[int, SaleRules] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.reads = 0  # completed reads from PostgreSQL, for tests and /metrics

    def check(self, request: PurchaseRequest) -> None:
        rules = self._rules.get(request.product_id)
        if rules is not None:
            check_sale(request.product_id, rules, request.quantity, self._clock())

    def rules(self, product_id: int) -> SaleRules | None:
        return self._rules.get(product_id)

    def changed(self, product_id: int | None = None) -> None:
        """A product changed (or any may have): read again now. One task does every read, so a slow old read can
        never overwrite a newer one."""
        self._changed.set()

    async def load(self) -> None:
        self._rules = await self._store.sale_rules()
        self.reads += 1

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sale-schedule")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._changed.wait(), self._refresh)
            except TimeoutError:
                pass
            self._changed.clear()  # before the read: a change announced during it makes another
            try:
                await self.load()
            except CheckoutError:
                pass  # PostgreSQL is down: purchases answer 503 anyway, and the transaction checks the window
