"""GET /admin (the page) and the operator's actions, each a POST with an XSRF token that answers JSON."""

from __future__ import annotations

import json

import tornado.web

from hypercheckout import catalog
from hypercheckout.admin.base import AdminHandler
from hypercheckout.checkout.errors import CheckoutError, invalid_request
from hypercheckout.checkout.validation import MAX_ID, MAX_UNITS, parse_address, parse_whole_number
from hypercheckout.operations import reset_product
from hypercheckout.store import Product, ProductChanges


class DashboardHandler(AdminHandler):
    route = "/admin"

    @tornado.web.authenticated
    async def get(self) -> None:
        snapshot = await self.services.snapshots.get()
        self.render_page("dashboard.html", snapshot=snapshot, snapshot_json=json.dumps(snapshot, default=str))


class ActionHandler(AdminHandler):
    """Actions answer JSON (the page calls them with fetch); an unauthenticated call gets 403, not a redirect."""

    def prepare(self) -> None:
        super().prepare()
        if not self.current_user:
            raise CheckoutError(403, "forbidden", "log in first")

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Content-Type", "application/json")

    def int_argument(self, name: str, minimum: int, maximum: int) -> int:
        return parse_whole_number(self.get_body_argument(name, ""), name, minimum, maximum)


class ResetHandler(ActionHandler):
    route = "/admin/reset"

    async def post(self) -> None:
        services = self.services
        product_id = self.int_argument("product_id", 1, MAX_ID)
        stock = self.int_argument("stock", 0, MAX_UNITS)
        result = await reset_product(services.store, services.redis, services.settings.redis_prefix,
                                     product_id, stock)
        services.sold_out.clear(product_id)  # this replica before answering; the others by the announcement
        await services.schedule.reread()
        self.write_json({"product_id": result.product_id, "stock": result.stock,
                         "deleted_orders": result.deleted_orders, "announced": result.announced})


PRODUCT_FORM_FIELDS = ("name", "stock", "starts_at", "ends_at", "per_user_limit", "max_per_order", "waiting_room",
                       "admit_per_second", "pass_seconds", "hold_seconds", "price", "currency")
# Empty: as they are (a product without a room shows no room numbers; the hold time and the price cannot be
# cleared).
ROOM_NUMBERS = ("admit_per_second", "pass_seconds", "hold_seconds", "price", "currency")


class ProductFormHandler(ActionHandler):
    """The dashboard's product forms: text fields as the CLI takes them (``catalog.changes_from_text``). A field
    left out of the form is left as it is; an empty limit or time clears it."""

    def form_changes(self, *, creating: bool) -> ProductChanges:
        unknown = sorted(set(self.request.body_arguments) - {*PRODUCT_FORM_FIELDS, "_xsrf"})
        if unknown:
            raise invalid_request(f"unknown field(s): {', '.join(unknown)}")
        fields = {name: self.get_body_argument(name, None) for name in PRODUCT_FORM_FIELDS}
        if creating:  # an empty optional field of the creation form means "not set", not "cleared"
            fields = {name: value for name, value in fields.items()
                      if value is not None and (value.strip() or name in ("name", "stock"))}
        fields = {name: None if name in ROOM_NUMBERS and value is not None and not value.strip() else value
                  for name, value in fields.items()}
        return catalog.changes_from_text(fields, creating=creating,
                                         max_quantity=self.services.settings.max_quantity, now=self.services.now())

    async def answer(self, product_id: int, product: Product | None, announced: bool, **extra: object) -> None:
        services = self.services
        services.sold_out.clear(product_id)  # this replica before answering; the others by the announcement
        await services.schedule.reread()
        body = {} if product is None else {"product": product.as_json(services.settings.max_quantity, services.now())}
        self.write_json({**body, **extra, "announced": announced})


class CreateProductHandler(ProductFormHandler):
    route = "/admin/products"

    async def post(self) -> None:
        services = self.services
        result = await catalog.create_product(services.store, services.redis, services.settings.redis_prefix,
                                              self.form_changes(creating=True))
        assert result.product is not None
        await self.answer(result.product.id, result.product, result.announced)


class UpdateProductHandler(ProductFormHandler):
    route = "/admin/products/{id}"

    async def post(self, product_id: str) -> None:
        services = self.services
        result = await catalog.update_product(services.store, services.redis, services.settings.redis_prefix,
                                              int(product_id), self.form_changes(creating=False))
        await self.answer(int(product_id), result.product, result.announced)


class DeleteProductHandler(ProductFormHandler):
    route = "/admin/products/{id}/delete"

    async def post(self, product_id: str) -> None:
        services = self.services
        with_orders = self.get_body_argument("with_orders", "false")
        if with_orders not in ("true", "false"):
            raise invalid_request("with_orders must be true or false")
        result = await catalog.delete_product(services.store, services.redis, services.settings.redis_prefix,
                                              int(product_id), with_orders=with_orders == "true")
        await self.answer(int(product_id), None, result.announced, deleted=int(product_id),
                    deleted_orders=result.deleted_orders)


class UnbanHandler(ActionHandler):
    route = "/admin/unban"

    async def post(self) -> None:
        kind = self.get_body_argument("kind", "")
        value = self.get_body_argument("value", "")
        if kind == "user":
            removed = await self.services.limiter.unban(user_id=parse_whole_number(value, "user", 1, MAX_ID))
        elif kind == "ip":
            removed = await self.services.limiter.unban(ip=parse_address(value))
        elif kind == "login":
            removed = await self.services.login_throttle.lift(parse_address(value))
        else:
            raise invalid_request("kind must be 'user', 'ip' or 'login', with a value")
        self.write_json({"removed": removed})


class ReleaseCheckoutHandler(ActionHandler):
    """The dashboard's Release button: the same release as the buyer's and the admin API's."""

    route = "/admin/checkouts/{id}/release"

    async def post(self, checkout_id: str) -> None:
        self.write_json((await self.services.checkout.release(checkout_id)).as_json())


class ClearLimitsHandler(ActionHandler):
    route = "/admin/clear-limits"

    async def post(self) -> None:
        removed = await self.services.limiter.clear_all()
        removed += await self.services.login_throttle.lift_all()
        self.write_json({"removed": removed})
