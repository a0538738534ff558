"""One round trip per purchase: a conditional decrement and the order insert in a single statement."""

from __future__ import annotations

from hypercheckout.checkout.errors import out_of_stock, unknown_product
from hypercheckout.checkout.models import Order, PurchaseRequest
from hypercheckout.store import Store


class AtomicStrategy:
    name = "atomic"

    def __init__(self, store: Store, *, replica: str) -> None:
        self._store = store
        self._replica = replica

    async def purchase(self, request: PurchaseRequest) -> Order:
        placed = await self._store.buy_atomic(
            request.user_id, request.product_id, request.quantity, self._replica,
        )
        if placed is None:
            # Nothing was written; a second, read-only statement says why.
            stock = await self._store.read_stock(request.product_id)
            if stock is None:
                raise unknown_product(request.product_id)
            raise out_of_stock(request.product_id, stock, request.quantity)
        order_id, created_at, remaining = placed
        return Order(
            id=order_id, user_id=request.user_id, product_id=request.product_id, quantity=request.quantity,
            created_at=created_at, remaining=remaining,
        )

    async def close(self) -> None:
        return None
