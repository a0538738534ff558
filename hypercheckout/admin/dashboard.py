"""GET /admin (the page) and the operator's actions, each a POST with an XSRF token that answers JSON."""

from __future__ import annotations

import json

import tornado.web

from hypercheckout.admin.base import AdminHandler
from hypercheckout.checkout.errors import CheckoutError, invalid_request
from hypercheckout.checkout.validation import MAX_ID, MAX_UNITS, parse_address, parse_whole_number
from hypercheckout.operations import reset_product


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
        services.sold_out.clear(product_id)  # this replica at once; the others by the announcement
        self.write_json({"product_id": result.product_id, "stock": result.stock,
                         "deleted_orders": result.deleted_orders, "announced": result.announced})


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


class ClearLimitsHandler(ActionHandler):
    route = "/admin/clear-limits"

    async def post(self) -> None:
        removed = await self.services.limiter.clear_all()
        removed += await self.services.login_throttle.lift_all()
        self.write_json({"removed": removed})
