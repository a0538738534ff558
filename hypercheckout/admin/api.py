"""The admin JSON API for automation: products and resets, authenticated with ``Authorization: Bearer <token>``.

No cookie is involved, so there is nothing for cross-site request forgery to ride on (JsonHandler skips the XSRF
check). Wrong tokens count as failed logins: the same throttle as the login form caps guesses per address and in
total, and a locked-out address learns nothing, not even whether its guess was right.
"""

from __future__ import annotations

import hmac
from typing import Any

from hypercheckout import catalog
from hypercheckout.api.base import JsonHandler
from hypercheckout.api.checkouts import CHECKOUT_ID
from hypercheckout.api.products import PRODUCT_ID
from hypercheckout.checkout import holds
from hypercheckout.checkout.errors import CheckoutError, unauthorized, unknown_product
from hypercheckout.checkout.validation import MAX_ID, parse_json_body, parse_whole_number
from hypercheckout.login_throttle import ThrottleUnavailable
from hypercheckout.operations import reset_product
from hypercheckout.redisclient import CALL_FAILED
from hypercheckout.store import Product, ProductChanges

ADMIN_MAX_BODY = 16 * 1024
BEARER = "bearer "


class AdminApiHandler(JsonHandler):
    async def prepare(self) -> None:
        super().prepare()
        services = self.services
        throttle, address = services.login_throttle, self.client_ip
        try:
            lockout = await throttle.attempt(address)
        except ThrottleUnavailable:
            raise CheckoutError(503, "unavailable", "admin API closed for now: failed attempts cannot be counted "
                                                    "(Redis is unreachable); retry shortly") from None
        if lockout is not None:
            seconds = max(1, int(lockout.retry_after + 0.999))
            raise CheckoutError(429, "rate_limited", f"too many failed admin logins; retry in {seconds} s",
                                headers={"Retry-After": str(seconds)})
        header = self.request.headers.get("Authorization", "")
        token = header[len(BEARER):].strip() if header[:len(BEARER)].lower() == BEARER else ""
        if not token or not hmac.compare_digest(token.encode(), services.settings.admin_token.encode()):
            services.failed_logins += 1  # already counted in Redis by the attempt
            raise unauthorized()
        try:
            await throttle.succeeded(address)
        except CALL_FAILED:
            pass  # the attempt stays counted until its window ends

    def body_json(self) -> Any:
        return parse_json_body(self.request.body, ADMIN_MAX_BODY)

    def product_json(self, product: Product, **extra: Any) -> dict[str, Any]:
        return {**product.as_json(self.services.settings.max_quantity, self.services.now()), **extra}

    async def changed(self, product_id: int) -> None:
        """This replica before the operator is answered; the others by the announcement (or their periodic
        re-read)."""
        self.services.sold_out.clear(product_id)
        await self.services.schedule.reread()


class ProductsApiHandler(AdminApiHandler):
    route = "/admin/api/products"

    async def get(self) -> None:
        rows = await self.services.store.status()
        self.write_json({"products": [self.product_json(r.product, sold=r.sold, orders=r.orders) for r in rows]})

    async def post(self) -> None:
        services = self.services
        changes = catalog.changes_from_json(self.body_json(), creating=True,
                                            max_quantity=services.settings.max_quantity, now=services.now())
        result = await catalog.create_product(services.store, services.redis, services.settings.redis_prefix,
                                              changes)
        assert result.product is not None
        await self.changed(result.product.id)
        self.set_header("Location", f"/admin/api/products/{result.product.id}")
        self.write_json(self.product_json(result.product), status=201)


class ProductApiHandler(AdminApiHandler):
    route = "/admin/api/products/{id}"

    async def get(self, product_id: str) -> None:
        wanted = int(product_id)
        for row in await self.services.store.status(wanted):
            self.write_json(self.product_json(row.product, sold=row.sold, orders=row.orders))
            return
        raise unknown_product(wanted)

    async def patch(self, product_id: str) -> None:
        services = self.services
        changes = catalog.changes_from_json(self.body_json(), creating=False,
                                            max_quantity=services.settings.max_quantity, now=services.now())
        result = await catalog.update_product(services.store, services.redis, services.settings.redis_prefix,
                                              int(product_id), changes)
        assert result.product is not None
        await self.changed(result.product.id)
        self.write_json(self.product_json(result.product))

    async def delete(self, product_id: str) -> None:
        services = self.services
        with_orders = self.get_query_argument("with_orders", "false").lower()
        if with_orders not in ("true", "false"):
            raise CheckoutError(400, "invalid_request", "with_orders must be true or false")
        result = await catalog.delete_product(services.store, services.redis, services.settings.redis_prefix,
                                              int(product_id), with_orders=with_orders == "true")
        await self.changed(int(product_id))
        self.write_json({"deleted": int(product_id), "deleted_orders": result.deleted_orders})


class ResetApiHandler(AdminApiHandler):
    route = "/admin/api/products/{id}/reset"

    async def post(self, product_id: str) -> None:
        services = self.services
        body = self.body_json() if self.request.body.strip() else {}
        if not isinstance(body, dict) or set(body) - {"stock", "per_user_limit"}:
            raise CheckoutError(400, "invalid_request", "the body may hold stock and per_user_limit only")
        # An empty body resets to the initial stock; a null per_user_limit removes the limit.
        changes = catalog.changes_from_json(body, creating=False, max_quantity=services.settings.max_quantity,
                                            now=services.now()) if body else ProductChanges()
        stock = changes.stock if "stock" in changes.given else None
        limit = (changes.per_user_limit or 0) if "per_user_limit" in changes.given else None
        result = await reset_product(services.store, services.redis, services.settings.redis_prefix,
                                     int(product_id), stock, per_user_limit=limit)
        await self.changed(result.product_id)
        self.write_json({"product_id": result.product_id, "stock": result.stock,
                         "deleted_orders": result.deleted_orders, "announced": result.announced})


class CheckoutsApiHandler(AdminApiHandler):
    """Running holds, the soonest to expire first (``product_id``, ``limit`` up to 1,000)."""

    route = "/admin/api/checkouts"

    async def get(self) -> None:
        product = self.get_query_argument("product_id", None)
        limit = self.get_query_argument("limit", "100")
        wanted = None if product is None else parse_whole_number(product, "product_id", 1, MAX_ID)
        found = await holds.list_held(self.services.store, wanted, parse_whole_number(limit, "limit", 1, 1000))
        self.write_json({"checkouts": [h.as_json() for h in found]})


class ReleaseCheckoutApiHandler(AdminApiHandler):
    """An operator gives a hold's units back (the same release as the buyer's)."""

    route = "/admin/api/checkouts/{id}/release"

    async def post(self, checkout_id: str) -> None:
        self.write_json((await self.services.checkout.release(checkout_id)).as_json())


default_handlers = [
    (r"/admin/api/checkouts", CheckoutsApiHandler),
    (rf"/admin/api/checkouts/{CHECKOUT_ID}/release", ReleaseCheckoutApiHandler),
    (r"/admin/api/products", ProductsApiHandler),
    (rf"/admin/api/products/{PRODUCT_ID}", ProductApiHandler),
    (rf"/admin/api/products/{PRODUCT_ID}/reset", ResetApiHandler),
]
