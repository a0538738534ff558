"""The purchase use case: the in-memory refusals (pass, sale window, sold out), Idempotency-Key replays, then the
configured strategy."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from hypercheckout.checkout import holds
from hypercheckout.checkout.errors import (
    CheckoutError,
    DuplicateKey,
    checkout_cancelled,
    idempotency_key_reused,
    out_of_stock,
    payments_unavailable,
    queue_pass_required,
    queue_pass_used,
    request_in_progress,
    unknown_checkout,
)
from hypercheckout.checkout.models import Hold, Order, PurchaseRequest
from hypercheckout.checkout.queue import WaitingRooms
from hypercheckout.checkout.schedule import SaleSchedule
from hypercheckout.checkout.soldout import SoldOutFlags
from hypercheckout.checkout.strategy import Strategy
from hypercheckout.payments.provider import ProviderUnavailable
from hypercheckout.store import Store, StoredOrder

if TYPE_CHECKING:
    from hypercheckout.payments.settle import Payments

T = TypeVar("T")
USED_PASSES_KEPT = 65_536  # about 10 MB at most


class Checkout:
    def __init__(self, strategy: Strategy, sold_out: SoldOutFlags, store: Store, schedule: SaleSchedule,
                 rooms: WaitingRooms | None = None) -> None:
        self.strategy = strategy
        self.sold_out = sold_out
        self.schedule = schedule
        self.rooms = rooms
        self._store = store
        self._keys_in_flight: set[str] = set()  # this replica's; other replicas' wait on the key's row instead
        # Passes this replica saw buy (or refused as having bought): (product, opening, buyer), newest last. A pass
        # buys once, so another purchase with it is refused from memory instead of skipping the admission control
        # its room's pacing exempts it from and waiting for the product's row only to be told so there. Bounded:
        # the oldest are forgotten (and the transaction still refuses them).
        self._used_passes: OrderedDict[tuple[int, int, int], None] = OrderedDict()
        # Checkouts by how they ended here, for /metrics (holds that ran out: the sweeper and reclaims count them).
        self.holds_placed = 0
        self.holds_confirmed = 0
        self.holds_released = 0
        # HC_PAYMENTS on: a checkout of a priced product is paid, and its payment confirms it (set by app.py).
        self.payments: Payments | None = None

    async def purchase(self, request: PurchaseRequest) -> Order:
        """Sell or raise ``CheckoutError``. What this replica can refuse from memory is refused before any
        PostgreSQL work — for a request with an Idempotency-Key only what concerns the request itself (its pass):
        its retry of an order placed gets that order instead (``refused``). The sale window and sold out are
        decided for a keyed request under the product's row lock, where its first try, perhaps still queued for
        that lock on another replica, is settled before or after it, never beside it. A key already used answers
        as it did the first time (same order) or 422 for another body; one still being processed here, 409."""
        try:
            if request.idempotency_key is None:
                request = self.refuse_from_memory(request)
            else:
                request = self._check_pass(request)
        except CheckoutError as refusal:
            return await self.refused(request, refusal)
        key = request.idempotency_key
        if key is None:
            return await self._sell(request)
        return await self._once_per_key(key, lambda: self._replay(request), lambda: self._sell(request))

    async def _once_per_key(self, flight: str, replay: Callable[[], Awaitable[T | None]],
                            act: Callable[[], Awaitable[T]]) -> T:
        """``act`` for a request with an Idempotency-Key, unless ``replay`` finds what its first try got. A key
        still being processed here is 409; another replica's, the transaction waits on its row (DuplicateKey)."""
        if flight in self._keys_in_flight:
            raise request_in_progress()
        self._keys_in_flight.add(flight)
        try:
            stored = await replay()
            if stored is not None:
                return stored
            try:
                return await act()
            except DuplicateKey:
                # Another replica's request with this key committed first (we waited on its row, then rolled back).
                stored = await replay()
                if stored is None:  # deleted since (a reset): nothing to replay, nothing done here
                    raise request_in_progress() from None
                return stored
        finally:
            self._keys_in_flight.discard(flight)

    def refuse_from_memory(self, request: PurchaseRequest) -> PurchaseRequest:
        """Raise the refusal this replica can give from memory alone — a bad or missing Queue-Pass, outside the
        sale window, too many units, sold out — else return the request (marked admitted for a valid pass, so it
        is not verified twice). The transaction checks the same rules again: a stale copy sells nothing."""
        if self.rooms is not None and not request.admitted:
            request = self.rooms.check_pass(request)
        self._refuse_used_pass(request)
        self.schedule.check(request)
        if self.sold_out.is_sold_out(request.product_id):
            raise out_of_stock(request.product_id, 0, request.quantity)
        held_out = self.sold_out.held_out(request.product_id)
        if held_out is not None:
            raise held_out
        return request

    def _check_pass(self, request: PurchaseRequest) -> PurchaseRequest:
        """The request marked admitted, or the refusal of its pass (bad, expired, missing) by this replica's copy."""
        if self.rooms is not None and not request.admitted:
            request = self.rooms.check_pass(request)
        if not request.admitted and self.schedule.room(request.product_id) is not None:
            raise queue_pass_required(request.product_id)
        self._refuse_used_pass(request)
        return request

    @staticmethod
    def _pass_of(request: PurchaseRequest) -> tuple[int, int, int] | None:
        if request.pass_generation is None:
            return None
        return request.product_id, request.pass_generation, request.user_id

    def _refuse_used_pass(self, request: PurchaseRequest) -> None:
        used = self._pass_of(request)
        if used is not None and used in self._used_passes:
            raise queue_pass_used(request.product_id)

    def _pass_used(self, request: PurchaseRequest) -> None:
        used = self._pass_of(request)
        if used is None:
            return
        self._used_passes[used] = None
        self._used_passes.move_to_end(used)
        if len(self._used_passes) > USED_PASSES_KEPT:
            self._used_passes.popitem(last=False)

    def _learn(self, request: PurchaseRequest, refusal: CheckoutError) -> None:
        """What a refusal decided under the row lock tells this replica's memory for the next requests."""
        if refusal.code == "out_of_stock" and refusal.extra.get("remaining") == 0:
            self.sold_out.mark(request.product_id)
        elif refusal.code == "units_held":
            self.sold_out.mark_held_out(request.product_id, int(refusal.extra.get("held", 0)),
                                        float(refusal.headers.get("Retry-After", "1")))
        elif refusal.code == "queue_pass_used":
            self._pass_used(request)

    async def refused(self, request: PurchaseRequest, refusal: CheckoutError) -> Order:
        """For a request refused before its purchase (its pass, by the limiter): raise ``refusal`` — unless the
        request has an Idempotency-Key whose first try placed an order, which is answered instead. A first try
        still committing (perhaps in a batch on another replica) is waited for on the key's row, never on the
        product's (found by `make chaos`: a buyer banned meanwhile was told 429 for the retry of an order its
        first try had placed; issue 22: a retry whose pass had expired could be told 403 while its first try was
        committing). A first try not in its transaction yet checks its pass's expiry there, by PostgreSQL's
        clock, so it cannot buy with a pass its retry was told had expired. A refused request costs PostgreSQL no
        more than that rolled-back probe, and only with a key; when PostgreSQL cannot say, the answer is a 503,
        not a refusal that may be false."""
        if request.idempotency_key is None:
            raise refusal
        stored = await self._store.settled_order(request.idempotency_key)
        if stored is None:
            raise refusal
        return self._replayed(request, stored)

    async def _replay(self, request: PurchaseRequest) -> Order | None:
        stored = await self._store.stored_order(request.idempotency_key or "")
        return None if stored is None else self._replayed(request, stored)

    @staticmethod
    def _replayed(request: PurchaseRequest, stored: StoredOrder) -> Order:
        if stored.fingerprint != request.fingerprint:
            raise idempotency_key_reused()
        return Order(id=stored.id, user_id=stored.user_id, product_id=stored.product_id, quantity=stored.quantity,
                     created_at=stored.created_at, remaining=None, replica=stored.replica, replayed=True)

    async def _sell(self, request: PurchaseRequest) -> Order:
        try:
            order = await self.strategy.purchase(request)
        except CheckoutError as exc:
            self._learn(request, exc)
            raise
        if order.remaining == 0 and order.held == 0:  # with units held, some may come back
            self.sold_out.mark(request.product_id)
        self._pass_used(request)
        return order

    # --- checkouts (holds) -----------------------------------------------------------------------------------------

    async def hold(self, request: PurchaseRequest) -> Hold:
        """Hold units for the buyer: the same refusals as a purchase (from memory first, then under the row lock),
        the same Idempotency-Key rules (a retry gets the same checkout; another body with the key, 422). With
        payments on, its payment is made (once, a replay included) before it is answered."""
        hold = await self._hold(request if self.payments is None else dataclasses.replace(request, pays=True))
        return hold if self.payments is None else await self.payments.start(hold)

    async def _hold(self, request: PurchaseRequest) -> Hold:
        try:
            if request.idempotency_key is None:
                request = self.refuse_from_memory(request)
            else:
                request = self._check_pass(request)
        except CheckoutError as refusal:
            return await self.refused_hold(request, refusal)
        key = request.idempotency_key
        if key is None:
            return await self._take_hold(request)
        return await self._once_per_key(f"checkout:{key}", lambda: self._replay_hold(request),
                                        lambda: self._take_hold(request))

    async def refused_hold(self, request: PurchaseRequest, refusal: CheckoutError) -> Hold:
        """A hold refused before its transaction (its pass, the limiter): its checkout, if a first try with its key
        took one, else ``refusal``."""
        if request.idempotency_key is None:
            raise refusal
        stored = await self._replay_hold(request)
        if stored is None:
            raise refusal
        return stored if self.payments is None else await self.payments.start(stored)

    async def _replay_hold(self, request: PurchaseRequest) -> Hold | None:
        stored = await holds.by_key(self._store, request.idempotency_key or "")
        if stored is None:
            return None
        if stored.fingerprint != request.fingerprint:
            raise idempotency_key_reused()
        return holds.as_hold(stored, replayed=True)

    async def _take_hold(self, request: PurchaseRequest) -> Hold:
        try:
            hold = await self.strategy.hold(request)
        except CheckoutError as exc:
            self._learn(request, exc)
            raise
        self.holds_placed += 1
        self._pass_used(request)
        return hold

    async def checkout(self, checkout_id: str, *, buyer: int | None = None) -> Hold:
        """The checkout; with ``buyer`` (a verified buyer), only that buyer's (another's is unknown to it)."""
        found = await holds.find(self._store, checkout_id)
        if buyer is not None and found.user_id != buyer:
            raise unknown_checkout()
        return holds.as_hold(found)

    async def confirm(self, checkout_id: str, replica: str, *, buyer: int | None = None,
                      by_payment: bool = False) -> Order:
        """A buyer's confirm, or (``by_payment``) its authorized payment's. A buyer's confirm of a checkout that
        waits for its payment asks the provider how it stands: paid, the payment confirms it (as its webhook would);
        not, 409 ``payment_required``."""
        if buyer is not None:
            await self.checkout(checkout_id, buyer=buyer)
        try:
            order = await holds.confirm(self._store, checkout_id, replica, by_payment=by_payment)
        except CheckoutError as refusal:
            if refusal.code != "payment_required" or self.payments is None:
                raise
            return await self._confirmed_by_payment(checkout_id, refusal)
        if not order.replayed:
            self.holds_confirmed += 1
            if order.remaining == 0 and order.held == 0:
                self.sold_out.mark(order.product_id)
        return order

    async def _confirmed_by_payment(self, checkout_id: str, refusal: CheckoutError) -> Order:
        assert self.payments is not None
        try:
            await self.payments.settle(checkout_id)
        except ProviderUnavailable:
            raise payments_unavailable() from None
        found = await holds.find(self._store, checkout_id)
        if found.status == "confirmed":
            return holds.order_of(found, replayed=False)
        if found.payment_status == "pending" and found.payment_intent is not None:
            try:  # what the buyer's page says next: pay, try another card, or wait
                payment = await self.payments.provider.retrieve(found.payment_intent)
            except ProviderUnavailable:
                raise refusal from None
            refusal.extra["payment"] = {"provider_status": payment.status, "declined": payment.declined}
        elif found.payment_status == "cancelled":
            refusal = checkout_cancelled(checkout_id, found.status)
        raise refusal

    async def release(self, checkout_id: str, *, buyer: int | None = None) -> Hold:
        if buyer is not None:
            await self.checkout(checkout_id, buyer=buyer)
        hold, moved = await holds.release(self._store, checkout_id)
        if moved:
            self.sold_out.clear(hold.product_id)  # units are back: this replica's next buyer gets them at once
            if hold.status == "released":
                self.holds_released += 1
        if self.payments is not None and hold.payment_status == "pending":
            await self.payments.released(hold)
            hold = holds.as_hold(await holds.find(self._store, checkout_id))
        return hold
