"""GET /shop/{id}: the buyer's page. The HTML carries only the product id — what it shows comes from the JSON API
(the product, then one small poll of the ticket a second) — so it is the same for every buyer and cacheable, and
its script and style are static files with versioned URLs."""

from __future__ import annotations

import jinja2

from hypercheckout.admin.base import CONTENT_SECURITY_POLICY
from hypercheckout.api.base import JsonHandler
from hypercheckout.api.products import PRODUCT_ID

PAGE_MAX_AGE = 60  # seconds a browser or a CDN may keep the page


class ShopHandler(JsonHandler):
    route = "/shop/{id}"

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.set_header("Cache-Control", f"public, max-age={PAGE_MAX_AGE}")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)

    def get(self, product_id: str) -> None:
        environment: jinja2.Environment = self.application.settings["jinja"]
        # What the page shows besides the product is the deployment's, never the buyer's: the page stays cacheable.
        self.finish(environment.get_template("shop.html").render(
            product_id=int(product_id), static_url=self.static_url,
            buyer_auth=self.services.settings.buyer_auth, demo_signin=self.services.demo_issuer is not None,
            payments=self.services.settings.payments))


default_handlers = [(rf"/shop/{PRODUCT_ID}", ShopHandler)]
