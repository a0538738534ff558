"""GET /orders: the verified buyer's own orders, newest first (HC_BUYER_AUTH=jwt only: with none, a buyer is a
number anyone can write, and listing its orders would show them to anyone)."""

from __future__ import annotations

from hypercheckout.api.base import JsonHandler
from hypercheckout.checkout.errors import CheckoutError
from hypercheckout.store.buyers import orders_of

ORDERS_SHOWN = 100


class OrdersHandler(JsonHandler):
    route = "/orders"

    async def get(self) -> None:
        if not self.verified_buyers:
            raise CheckoutError(404, "not_found", "GET /orders lists a verified buyer's orders: it needs "
                                                  "HC_BUYER_AUTH=jwt")
        buyer = await self.buyer()
        assert buyer is not None
        async with self.services.store.cursor() as cur:
            orders = await orders_of(cur, buyer, ORDERS_SHOWN)
        self.write_json({"user_id": buyer, "orders": orders})


default_handlers = [(r"/orders", OrdersHandler)]
