"""The purchase use case: Idempotency-Key replays, the in-memory refusals (sale window, sold out), then the
configured strategy."""

from __future__ import annotations

from hypercheckout.checkout.errors import (
    CheckoutError,
    DuplicateKey,
    idempotency_key_reused,
    out_of_stock,
    request_in_progress,
)
from hypercheckout.checkout.models import Order, PurchaseRequest
from hypercheckout.checkout.queue import WaitingRooms
from hypercheckout.checkout.schedule import SaleSchedule
from hypercheckout.checkout.soldout import SoldOutFlags
from hypercheckout.checkout.strategy import Strategy
from hypercheckout.store import Store


class Checkout:
    def __init__(self, strategy: Strategy, sold_out: SoldOutFlags, store: Store, schedule: SaleSchedule,
                 rooms: WaitingRooms | None = None) -> None:
        self.strategy = strategy
        self.sold_out = sold_out
        self.schedule = schedule
        self.rooms = rooms
        self._store = store
        self._keys_in_flight: set[str] = set()  # this replica's; other replicas' wait on the key's row instead

    async def purchase(self, request: PurchaseRequest) -> Order:
        """Sell or raise ``CheckoutError``. With an Idempotency-Key, a key already used answers as it did the first
        time (same order) or 422 for another body; one still being processed here answers 409. A Queue-Pass is
        checked first (in memory): a bad one for a product with a waiting room is a 403."""
        if self.rooms is not None and not request.admitted:
            try:
                request = self.rooms.check_pass(request)
            except CheckoutError:
                # A retry of a placed order must learn so, even once its pass has expired.
                stored = await self.stored(request)
                if stored is None:
                    raise
                return stored
        key = request.idempotency_key
        if key is None:
            return await self._sell(request)
        if key in self._keys_in_flight:
            raise request_in_progress()
        self._keys_in_flight.add(key)
        try:
            stored = await self._replay(request)
            if stored is not None:
                return stored
            try:
                return await self._sell(request)
            except DuplicateKey:
                # Another replica's request with this key committed first (we waited on its row, then rolled back).
                stored = await self._replay(request)
                if stored is None:  # its order was deleted since (a reset): nothing to replay, nothing sold here
                    raise request_in_progress() from None
                return stored
        finally:
            self._keys_in_flight.discard(key)

    def refuse_from_memory(self, request: PurchaseRequest) -> PurchaseRequest:
        """Raise the refusal this replica can give from memory alone — a bad Queue-Pass, outside the sale window,
        too many units, no pass, sold out — as ``purchase`` would; else return the request (marked ``admitted``
        for a valid pass, so that ``purchase`` does not verify it twice). A request with an Idempotency-Key is
        never refused here: its first try may have placed an order (see ``_sell``); its pass is still read."""
        if self.rooms is not None:
            try:
                request = self.rooms.check_pass(request)
            except CheckoutError:
                if request.idempotency_key is None:
                    raise
                return request
        if request.idempotency_key is not None:
            return request
        self.schedule.check(request)
        if self.sold_out.is_sold_out(request.product_id):
            raise out_of_stock(request.product_id, 0, request.quantity)
        return request

    async def stored(self, request: PurchaseRequest) -> Order | None:
        """The order an earlier request with this one's Idempotency-Key placed, for a request refused before the
        purchase (rate-limited): None without a key, without such an order, or when PostgreSQL cannot say (the
        refusal then stands, as it did before). A refused request costs this one primary-key lookup only when it
        carries a key."""
        if request.idempotency_key is None:
            return None
        try:
            return await self._replay(request)
        except CheckoutError as exc:
            if exc.code == "idempotency_key_reused":
                raise
            return None

    async def _replay(self, request: PurchaseRequest) -> Order | None:
        stored = await self._store.stored_order(request.idempotency_key or "")
        if stored is None:
            return None
        if stored.fingerprint != request.fingerprint:
            raise idempotency_key_reused()
        return Order(id=stored.id, user_id=stored.user_id, product_id=stored.product_id, quantity=stored.quantity,
                     created_at=stored.created_at, remaining=None, replica=stored.replica, replayed=True)

    async def _sell(self, request: PurchaseRequest) -> Order:
        """A purchase outside the sale window and a product seen at 0 are refused without a database round trip —
        unless the request has an Idempotency-Key: its first try may still be in flight on another replica, about
        to take the last unit or to commit just before the end, and the retry must wait for that outcome (the
        strategy claims the key under the row lock, then checks the same rules) rather than be told a definite
        refusal."""
        if request.idempotency_key is None:
            self.schedule.check(request)
            if self.sold_out.is_sold_out(request.product_id):
                raise out_of_stock(request.product_id, 0, request.quantity)
        try:
            order = await self.strategy.purchase(request)
        except CheckoutError as exc:
            if exc.code == "out_of_stock" and exc.extra.get("remaining") == 0:
                self.sold_out.mark(request.product_id)
            raise
        if order.remaining == 0:
            self.sold_out.mark(request.product_id)
        return order
