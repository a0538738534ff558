"""The original HyperCheckout's transaction: lock the row, check, decrement, insert. The baseline of benchmarks."""

from __future__ import annotations

from hypercheckout.checkout.errors import out_of_stock, unknown_product
from hypercheckout.checkout.models import Order, PurchaseRequest
from hypercheckout.store import Store


class PessimisticStrategy:
    name = "pessimistic"

    def __init__(self, store: Store, *, replica: str) -> None:
        self._store = store
        self._replica = replica

    async def purchase(self, request: PurchaseRequest) -> Order:
        async with self._store.transaction() as cur:
            stock = await Store.lock_stock(cur, request.product_id)
            if stock is None:
                raise unknown_product(request.product_id)
            if stock < request.quantity:
                raise out_of_stock(request.product_id, stock, request.quantity)
            await Store.decrement_stock(cur, request.product_id, request.quantity)
            order_id, created_at = await Store.insert_order(
                cur, request.user_id, request.product_id, request.quantity, self._replica,
            )
        return Order(
            id=order_id, user_id=request.user_id, product_id=request.product_id, quantity=request.quantity,
            created_at=created_at, remaining=stock - request.quantity,
        )

    async def close(self) -> None:
        return None
