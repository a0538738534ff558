"""POST /demo/sign-in: the buyer page's demo sign-in, with the local issuer only (HC_DEMO_SIGNIN, which `hypercheckout
up --buyer-auth jwt` sets). Any name gets a token for that name: there is no password, so it proves nothing about
who the buyer is. It exists so that the page, `make up` and the load tests run the real token path end to end with
no outside identity provider; a shop signs buyers in with its own and leaves this off (the default)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from hypercheckout.api.base import JsonHandler
from hypercheckout.checkout.errors import CheckoutError
from hypercheckout.checkout.validation import parse_demo_sign_in

DEMO_TOKEN_SECONDS = 3600


class DemoSignInHandler(JsonHandler):
    route = "/demo/sign-in"

    def post(self) -> None:
        issuer = self.services.demo_issuer
        if issuer is None:
            raise CheckoutError(404, "not_found", "the demo sign-in is off (HC_DEMO_SIGNIN: the local issuer only)")
        name = parse_demo_sign_in(self.request.body, max_body_bytes=self.services.settings.max_body_bytes)
        now = int(time.time())
        self.write_json({"token": issuer.mint(name, ttl=DEMO_TOKEN_SECONDS, now=now), "subject": name, "demo": True,
                         "expires_at": datetime.fromtimestamp(now + DEMO_TOKEN_SECONDS, UTC).isoformat()})


default_handlers = [(r"/demo/sign-in", DemoSignInHandler)]
