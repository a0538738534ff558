"""The purchase use case: the sold-out fast path in front of the configured strategy."""

from __future__ import annotations

from hypercheckout.checkout.errors import CheckoutError, out_of_stock
from hypercheckout.checkout.models import Order, PurchaseRequest
from hypercheckout.checkout.soldout import SoldOutFlags
from hypercheckout.checkout.strategy import Strategy


class Checkout:
    def __init__(self, strategy: Strategy, sold_out: SoldOutFlags) -> None:
        self.strategy = strategy
        self.sold_out = sold_out

    async def purchase(self, request: PurchaseRequest) -> Order:
        """Sell or raise ``CheckoutError``. A product seen at 0 is refused without a database round trip."""
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
