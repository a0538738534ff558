"""Holds: a checkout takes units out of stock for the product's ``hold_seconds``, then its buyer confirms it (an
order), releases it, or lets it expire. Plain async functions over the store, each one transaction under the
product's row lock; ``HoldSweeper`` gives lapsed holds back in the background.

A hold past its expiry counts as available the moment it expires: whoever needs its units first under the row lock
(a purchase or a hold short of stock, a confirm, the sweeper) gives it back, once (store/holds.py).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence

from hypercheckout.checkout.batch import decide
from hypercheckout.checkout.errors import (
    CheckoutError,
    DuplicateKey,
    checkout_confirmed,
    checkout_released,
    hold_expired,
    limit_reached,
    payment_required,
    unknown_checkout,
    unknown_product,
)
from hypercheckout.checkout.models import Hold, Order, PurchaseRequest
from hypercheckout.checkout.schedule import check_sale
from hypercheckout.periodic import Every
from hypercheckout.store import Store
from hypercheckout.store import holds as sql

log = logging.getLogger(__name__)

Outcome = Hold | CheckoutError | DuplicateKey


def new_checkout_id() -> str:
    """128 random bits: the id is all a buyer needs to confirm or release its checkout."""
    return "co_" + secrets.token_urlsafe(16)


def as_hold(stored: sql.StoredCheckout, *, replayed: bool = False) -> Hold:
    return Hold(id=stored.id, user_id=stored.user_id, product_id=stored.product_id, quantity=stored.quantity,
                status=stored.status, created_at=stored.created_at, expires_at=stored.expires_at,
                replica=stored.replica, order_id=stored.order_id, ordered_at=stored.ordered_at,
                rebooked=stored.rebooked, ended_at=stored.ended_at, replayed=replayed, amount=stored.amount,
                currency=stored.currency, payment_status=stored.payment_status,
                payment_intent=stored.payment_intent, payment_secret=stored.payment_secret)


async def hold_in_transaction(store: Store, product_id: int, requests: Sequence[PurchaseRequest],
                              replica: str) -> list[Outcome]:
    """Hold units for each request (one product), as a purchase would sell them: one transaction under the row
    lock decides every request in arrival order — key, sale window, pass, per-user limit (held and bought units),
    stock — and writes the granted holds at once. One outcome per request; nothing is handed out before COMMIT."""
    async with store.transaction() as cur:
        locked = await sql.lock_for_hold(cur, product_id)
        if locked is None:
            return [unknown_product(product_id)] * len(requests)
        keyed = [i for i, r in enumerate(requests) if r.idempotency_key is not None]
        taken: set[int] = set()
        if keyed:
            found = await sql.keys_taken(cur, [requests[i].idempotency_key or "" for i in keyed])
            taken = {i for i in keyed if requests[i].idempotency_key in found}
        decision = await decide(cur, product_id, requests, locked, skip=taken, holds=True)
        granted = decision.granted
        ids = {i: new_checkout_id() for i in granted}
        placed: dict[str, sql.Placed] = {}
        stock_after, held_after = decision.allocation.stock_after, decision.held
        if granted:
            room = locked.rules.waiting_room
            placed, stock_after, held_after = await sql.insert_holds(
                cur, product_id, ids=[ids[i] for i in granted], user_ids=[requests[i].user_id for i in granted],
                quantities=[requests[i].quantity for i in granted],
                keys=[requests[i].idempotency_key for i in granted],
                fingerprints=[requests[i].fingerprint if requests[i].idempotency_key else None for i in granted],
                hold_seconds=locked.hold_seconds, replica=replica,
                room_generation=locked.room_generation if room else None, pays=[requests[i].pays for i in granted],
            )
    outcomes: dict[int, Outcome] = {i: DuplicateKey(requests[i].idempotency_key or "") for i in taken}
    outcomes.update(decision.refusals)
    for i in granted:
        request = requests[i]
        if ids[i] in placed:
            row = placed[ids[i]]
            outcomes[i] = Hold(id=ids[i], user_id=request.user_id, product_id=product_id, quantity=request.quantity,
                               status="held", created_at=row.created_at, expires_at=row.expires_at, replica=replica,
                               remaining=stock_after, held=held_after, amount=row.amount, currency=row.currency,
                               payment_status=row.payment_status)
        else:  # its key was committed by a first try for another product while this one waited: replay it
            outcomes[i] = DuplicateKey(request.idempotency_key or "")
    return [outcomes[i] for i in range(len(requests))]


async def hold_one(store: Store, request: PurchaseRequest, replica: str) -> Hold:
    outcome = (await hold_in_transaction(store, request.product_id, [request], replica))[0]
    if isinstance(outcome, Hold):
        return outcome
    raise outcome


async def find(store: Store, checkout_id: str) -> sql.StoredCheckout:
    async with store.cursor() as cur:
        found = await sql.get_checkout(cur, checkout_id)
    if found is None:
        raise unknown_checkout()
    return found


async def by_key(store: Store, key: str) -> sql.StoredCheckout | None:
    async with store.cursor() as cur:
        return await sql.checkout_by_key(cur, key)


def order_of(stored: sql.StoredCheckout, *, replayed: bool, remaining: int | None = None, held: int = 0) -> Order:
    assert stored.order_id is not None and stored.ordered_at is not None
    return Order(id=stored.order_id, user_id=stored.user_id, product_id=stored.product_id, quantity=stored.quantity,
                 created_at=stored.ordered_at, remaining=remaining, replica=stored.replica, replayed=replayed,
                 held=held, checkout_id=stored.id)


async def confirm(store: Store, checkout_id: str, replica: str, *, by_payment: bool = False) -> Order:
    """Turn the hold into its order; a confirmed checkout answers with its order again. A hold that ran out is
    re-booked if its units can still be had from what is available (and the sale's rules allow it now), else
    409 ``hold_expired`` with nothing sold; a released one, 409 ``checkout_released``. A checkout waiting for its
    payment is confirmed only ``by_payment`` (its authorized payment); its buyer gets 409 ``payment_required``."""
    async with store.cursor() as cur:  # the common case, a running hold: one statement
        done = await sql.confirm_now(cur, checkout_id, replica, by_payment=by_payment)
    if done is not None:
        order_id, created_at, user_id, product_id, quantity, stock, held = done
        return Order(id=order_id, user_id=user_id, product_id=product_id, quantity=quantity, created_at=created_at,
                     remaining=stock, replica=replica, held=held, checkout_id=checkout_id)
    found = await find(store, checkout_id)
    if found.status == "confirmed":
        return order_of(found, replayed=True)
    if found.status == "released":
        raise checkout_released(checkout_id)
    if found.payment_status is not None and not by_payment:
        raise payment_required(checkout_id)
    async with store.transaction() as cur:
        locked = await sql.lock_for_hold(cur, found.product_id)
        if locked is None:
            raise unknown_checkout()
        current = await sql.get_checkout(cur, checkout_id)  # under the row lock: as it is now
        if current is None:
            raise unknown_checkout()
        if current.status == "confirmed":  # confirmed by a concurrent request meanwhile
            return order_of(current, replayed=True)
        if current.status == "released":
            raise checkout_released(checkout_id)
        # Expired: given back now if it was only lapsed, then booked again from what is available.
        back = await sql.reclaim(cur, found.product_id)
        stock = locked.stock + back.units
        check_sale(found.product_id, locked.rules, found.quantity, locked.now, admitted=True)
        if locked.per_user_limit is not None:
            owned = (await Store.owned(cur, found.product_id, [found.user_id])).get(found.user_id, 0)
            if owned + found.quantity > locked.per_user_limit:
                raise limit_reached(found.product_id, locked.per_user_limit, owned, found.quantity)
        if stock < found.quantity:
            raise hold_expired(checkout_id, stock, found.quantity)
        rebooked = await sql.rebook(cur, checkout_id, replica, by_payment=by_payment)
        if rebooked is None:
            raise hold_expired(checkout_id, stock, found.quantity)
        order_id, created_at, left = rebooked
        return Order(id=order_id, user_id=found.user_id, product_id=found.product_id, quantity=found.quantity,
                     created_at=created_at, remaining=left, replica=replica, held=back.held,
                     checkout_id=checkout_id, rebooked=True)


async def release(store: Store, checkout_id: str) -> tuple[Hold, bool]:
    """Give the hold's units back at once; idempotent (a released or expired checkout answers as it is). True when
    this call moved units. A confirmed checkout cannot be released: 409 ``checkout_confirmed``."""
    found = await find(store, checkout_id)
    if found.status == "confirmed":
        raise checkout_confirmed(checkout_id, found.order_id or 0)
    moved = False
    if found.status == "held" or found.lapsed:
        async with store.transaction() as cur:
            if not await sql.lock_product(cur, found.product_id):
                raise unknown_checkout()
            moved = await sql.release(cur, checkout_id) is not None
            current = await sql.get_checkout(cur, checkout_id)
        if current is None:
            raise unknown_checkout()
        if current.status == "confirmed":
            raise checkout_confirmed(checkout_id, current.order_id or 0)
        found = current
    return as_hold(found), moved


async def list_held(store: Store, product_id: int | None = None, limit: int = 100) -> list[Hold]:
    """Running holds (lapsed ones included until given back), the soonest to expire first: for operators."""
    async with store.cursor() as cur:
        return [as_hold(stored) for stored in await sql.list_held(cur, product_id, limit)]


async def expiring(store: Store, within: float = 60.0) -> dict[int, int]:
    """Units per product whose hold runs out within ``within`` seconds."""
    async with store.cursor() as cur:
        return await sql.expiring(cur, within)


async def sweep(store: Store, limit: int = 100) -> dict[int, int]:
    """Give back every lapsed hold (at most ``limit`` products' worth per call): product -> holds given back.
    Safe beside other sweepers and after any crash: each product's are given back under its row lock, once."""
    async with store.cursor() as cur:
        products = await sql.lapsed_products(cur, limit)
    swept: dict[int, int] = {}
    for product_id in products:
        async with store.transaction() as cur:
            if not await sql.lock_product(cur, product_id):
                continue
            back = await sql.reclaim(cur, product_id)
        if back.holds:
            swept[product_id] = back.holds
    return swept


class HoldSweeper:
    """Every ``interval`` seconds, gives back the holds that ran out (on every replica: each hold once, whichever
    gets its product's row lock first) and tells ``on_returned`` which products have units again, so that every
    replica drops its sold-out flag and waiting rooms admit again."""

    def __init__(self, store: Store, *, interval: float,
                 on_returned: Callable[[int, int], Awaitable[None]] | None = None) -> None:
        self._store = store
        self._on_returned = on_returned
        self._every = Every("hold sweep", interval, self._sweep)
        self.expired = 0  # holds this replica gave back for running out

    def start(self) -> None:
        self._every.start()

    async def close(self) -> None:
        await self._every.close()

    async def run_once(self) -> dict[int, int]:
        swept = await sweep(self._store)
        for product_id, holds in swept.items():
            self.expired += holds
            if self._on_returned is not None:
                await self._on_returned(product_id, holds)
        return swept

    async def _sweep(self) -> None:
        try:
            await self.run_once()
        except CheckoutError as exc:  # PostgreSQL unavailable: the holds wait, counted as available meanwhile
            log.debug("hold sweep skipped: %s", exc.message)
