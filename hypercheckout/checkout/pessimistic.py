"""The original HyperCheckout's transaction: lock the row, check, decrement, insert. The baseline of benchmarks, and
the path every strategy takes when a purchase carries an Idempotency-Key or the product has a per-user limit."""

from __future__ import annotations

from hypercheckout.checkout.errors import (
    DuplicateKey,
    limit_reached,
    queue_pass_used,
    short_of_stock,
    unknown_product,
)
from hypercheckout.checkout.holds import hold_one
from hypercheckout.checkout.models import Hold, Order, PurchaseRequest
from hypercheckout.checkout.schedule import check_pass_in_transaction, check_sale
from hypercheckout.store import Store
from hypercheckout.store.holds import reclaim
from hypercheckout.store.line import passes_used


async def buy_in_transaction(store: Store, request: PurchaseRequest, replica: str) -> Order:
    """Everything under the product's row lock, in one transaction: key, sale window, pass, limit, stock, order.
    A purchase is a hold confirmed in the same transaction: it counts held units toward the per-user limit, takes
    units of holds that ran out, and is told ``units_held`` rather than sold out while units may come back."""
    key = request.idempotency_key
    async with store.transaction() as cur:
        locked = await Store.lock_stock(cur, request.product_id, reserve_id=key is not None)
        if locked is None:
            raise unknown_product(request.product_id)
        stock, limit = locked.stock, locked.per_user_limit
        # The key first: a retry of an order that was placed (its client perhaps told "outcome unknown") must get
        # that order back, not a refusal decided on the stock or limit left since. A refusal below rolls the
        # claim back with everything else.
        if key is not None and not await Store.claim_keys(cur, [key], [request.fingerprint], [locked.order_id]):
            raise DuplicateKey(key)  # a committed order holds the key: the checkout service replays it
        check_sale(request.product_id, locked.rules, request.quantity, locked.now, admitted=request.admitted)
        generation = None
        if locked.rules.waiting_room:
            generation = locked.room_generation
            used, now = await passes_used(cur, request.product_id, generation, [request.user_id])
            check_pass_in_transaction(request, generation, now)
            if used:
                raise queue_pass_used(request.product_id)
        if limit is not None:
            owned = (await Store.owned(cur, request.product_id, [request.user_id])).get(request.user_id, 0)
            if owned + request.quantity > limit:
                raise limit_reached(request.product_id, limit, owned, request.quantity)
        held, next_in = locked.held, None
        if stock < request.quantity and held > 0:  # holds that ran out are available: given back first
            back = await reclaim(cur, request.product_id)
            stock, held, next_in = stock + back.units, back.held, back.next_expiry_in
        if stock < request.quantity:
            raise short_of_stock(request.product_id, stock, request.quantity, held, next_in)
        await Store.decrement_stock(cur, request.product_id, request.quantity)
        order_id, created_at = await Store.insert_order(
            cur, request.user_id, request.product_id, request.quantity, replica, order_id=locked.order_id,
            room_generation=generation,
        )
    return Order(
        id=order_id, user_id=request.user_id, product_id=request.product_id, quantity=request.quantity,
        created_at=created_at, remaining=stock - request.quantity, replica=replica, held=held,
    )


class PessimisticStrategy:
    name = "pessimistic"

    def __init__(self, store: Store, *, replica: str) -> None:
        self._store = store
        self._replica = replica

    async def purchase(self, request: PurchaseRequest) -> Order:
        return await buy_in_transaction(self._store, request, self._replica)

    async def hold(self, request: PurchaseRequest) -> Hold:
        return await hold_one(self._store, request, self._replica)

    async def close(self) -> None:
        return None
