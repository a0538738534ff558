"""How one locked transaction decides a batch of requests for one product — purchases or holds alike: the sale's
rules, the waiting room's passes, holds that ran out, per-user limits, then the stock in arrival order."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import aiopg

from hypercheckout.checkout.allocation import LIMIT_REACHED, PASS_USED, Allocation, allocate
from hypercheckout.checkout.errors import CheckoutError, limit_reached, queue_pass_used, short_of_stock
from hypercheckout.checkout.models import PurchaseRequest
from hypercheckout.checkout.schedule import check_pass_in_transaction, check_sale
from hypercheckout.store import SaleRules, Store
from hypercheckout.store.holds import reclaim
from hypercheckout.store.line import passes_used


class Locked(Protocol):
    """What the product's locked row says, as a batch is decided on it (``BatchLock``, ``HoldLock``)."""

    @property
    def stock(self) -> int: ...
    @property
    def held(self) -> int: ...
    @property
    def per_user_limit(self) -> int | None: ...
    @property
    def rules(self) -> SaleRules: ...
    @property
    def now(self) -> datetime: ...  # the transaction's time (the sale window is judged on it)
    @property
    def room_generation(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Decision:
    live: list[int]  # requests that reached the stock, in arrival order
    allocation: Allocation  # over ``live``
    refusals: dict[int, CheckoutError]  # every refused request (by index), whatever refused it
    held: int  # units held once lapsed holds were given back
    stock: int  # units available before the batch took any

    @property
    def granted(self) -> list[int]:
        return [i for i, ok in zip(self.live, self.allocation.granted, strict=True) if ok]


async def decide(cur: aiopg.Cursor, product_id: int, requests: Sequence[PurchaseRequest], locked: Locked, *,
                 skip: Collection[int] = (), holds: bool = False) -> Decision:
    """Decide each request but those in ``skip`` (their key is taken: they replay). Under the row lock: the sale
    window against the transaction's time; a room's passes against PostgreSQL's clock read now (after the keys were
    claimed) and one buy per pass; holds that ran out given back when the stock alone is short; limits counting
    held and bought units; then the stock, in arrival order. Writes nothing but the lapsed holds given back."""
    refused: dict[int, CheckoutError] = {}
    for i in range(len(requests)):
        if i not in skip:
            try:
                check_sale(product_id, locked.rules, requests[i].quantity, locked.now, admitted=requests[i].admitted)
            except CheckoutError as exc:
                refused[i] = exc
    room = locked.rules.waiting_room  # every request left then holds a pass, which buys once
    used: set[int] = set()
    if room and (passing := [i for i in range(len(requests)) if i not in skip and i not in refused]):
        used, now = await passes_used(cur, product_id, locked.room_generation, [requests[i].user_id for i in passing])
        for i in passing:
            try:
                check_pass_in_transaction(requests[i], locked.room_generation, now)
            except CheckoutError as exc:
                refused[i] = exc
    live = [i for i in range(len(requests)) if i not in skip and i not in refused]
    stock, held, next_in = locked.stock, locked.held, None
    if live and held > 0 and stock < sum(requests[i].quantity for i in live):
        back = await reclaim(cur, product_id)  # holds that ran out are available: given back first
        stock, held, next_in = stock + back.units, back.held, back.next_expiry_in
    owned: dict[int, int] = {}
    if locked.per_user_limit is not None and live:
        owned = await Store.owned(cur, product_id, [requests[i].user_id for i in live])
    allocation = allocate(stock, [requests[i].quantity for i in live], users=[requests[i].user_id for i in live],
                          bought=owned, per_user_limit=locked.per_user_limit, single_use=room, used=used)
    held_after = held + (allocation.total_granted if holds else 0)
    for i, ok, before, why in zip(live, allocation.granted, allocation.remaining_before, allocation.refusals,
                                  strict=True):
        request = requests[i]
        if ok:
            continue
        if why == PASS_USED:
            refused[i] = queue_pass_used(product_id)
        elif why == LIMIT_REACHED:
            refused[i] = limit_reached(product_id, locked.per_user_limit or 0, owned.get(request.user_id, 0),
                                       request.quantity)
        else:
            if next_in is None and held > 0:  # units held: say when the next hold runs out
                next_in = (await reclaim(cur, product_id)).next_expiry_in
            refused[i] = short_of_stock(product_id, before, request.quantity, held_after, next_in)
    return Decision(live=live, allocation=allocation, refusals=refused, held=held, stock=stock)
