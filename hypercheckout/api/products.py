"""GET /products and GET /products/{id}: the stock, sale window and status as PostgreSQL has them now."""

from __future__ import annotations

from hypercheckout.api.base import JsonHandler
from hypercheckout.checkout.errors import unknown_product


class ProductsHandler(JsonHandler):
    route = "/products"

    async def get(self) -> None:
        products = await self.services.store.list_products()
        max_quantity, now = self.services.settings.max_quantity, self.services.now()
        self.write_json({"products": [p.as_json(max_quantity, now) for p in products]})


class ProductHandler(JsonHandler):
    route = "/products/{id}"

    async def get(self, product_id: str) -> None:
        product = await self.services.store.get_product(int(product_id))
        if product is None:
            raise unknown_product(int(product_id))
        self.write_json(product.as_json(self.services.settings.max_quantity, self.services.now()))


# The id pattern is bounded so that int() can never see a number too large for PostgreSQL's bigint.
PRODUCT_ID = r"([1-9][0-9]{0,17})"

default_handlers = [
    (r"/products", ProductsHandler),
    (rf"/products/{PRODUCT_ID}", ProductHandler),
]
