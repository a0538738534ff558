"""One round trip per purchase: a conditional decrement and the order insert in a single statement.

A purchase with an Idempotency-Key, of a product with a per-user limit, or with a waiting room's pass takes the
locked transaction instead (``buy_in_transaction``): checking what a buyer already owns, or whether its pass has
bought, needs the row lock first, which one statement's re-check of a locked row (EvalPlanQual) does not give a
subquery on another table.
"""

from __future__ import annotations

from hypercheckout.checkout.errors import out_of_stock, unknown_product
from hypercheckout.checkout.holds import hold_one
from hypercheckout.checkout.models import Hold, Order, PurchaseRequest
from hypercheckout.checkout.pessimistic import buy_in_transaction
from hypercheckout.store import SaleRules, Store

NO_RULES = SaleRules()


class AtomicStrategy:
    name = "atomic"

    def __init__(self, store: Store, *, replica: str) -> None:
        self._store = store
        self._replica = replica

    async def purchase(self, request: PurchaseRequest) -> Order:
        if request.idempotency_key is not None or request.admitted:
            return await buy_in_transaction(self._store, request, self._replica)
        placed = await self._store.buy_atomic(request.user_id, request.product_id, request.quantity, self._replica)
        if placed is None:
            # Nothing was written; a second, read-only statement says why.
            product = await self._store.get_product(request.product_id)
            if product is None:
                raise unknown_product(request.product_id)
            if product.per_user_limit is not None or product.rules != NO_RULES or product.held > 0:
                # The rules are decided under the row lock, against the time the order would carry; so are holds
                # that ran out (their units are available) and units that may come back.
                return await buy_in_transaction(self._store, request, self._replica)
            raise out_of_stock(request.product_id, product.stock, request.quantity)
        order_id, created_at, remaining, held = placed
        return Order(
            id=order_id, user_id=request.user_id, product_id=request.product_id, quantity=request.quantity,
            created_at=created_at, remaining=remaining, replica=self._replica, held=held,
        )

    async def hold(self, request: PurchaseRequest) -> Hold:
        return await hold_one(self._store, request, self._replica)

    async def close(self) -> None:
        return None
