"""Checkouts (holds): POST /checkouts takes units for a while, as POST /purchase would sell them (same body, headers,
admission, limits and refusals); GET /checkouts/{id} says where it stands; confirm turns it into its order, release
gives the units back."""

from __future__ import annotations

from typing import Any

from hypercheckout.api.base import JsonHandler
from hypercheckout.api.purchase import PurchaseHandler, order_body
from hypercheckout.checkout.errors import CheckoutError, unknown_checkout
from hypercheckout.checkout.models import Hold, PurchaseRequest

CHECKOUT_ID = r"([A-Za-z0-9_-]{1,64})"


def checkout_body(services: Any, hold: Hold) -> dict[str, Any]:
    """The checkout as its buyer sees it; a payment to make says where (the simulator's page) when it can."""
    body = hold.as_json()
    payment = body.get("payment")
    if payment is not None and services.payments is not None:
        payment["pay_url"] = (services.payments.provider.pay_url(hold.payment_intent, hold.payment_secret)
                              if hold.payment_status == "pending" and hold.status == "held" else None)
    return body


class CheckoutsHandler(PurchaseHandler):
    """POST /checkouts: PurchaseHandler's parsing, admission and limiter; a hold instead of a sale."""

    route = "/checkouts"

    async def _admitted(self, request: PurchaseRequest) -> None:
        services = self.services
        refusal = await self._limited(request)
        if refusal is not None:
            hold = await services.checkout.refused_hold(request, refusal)
        else:
            hold = await services.checkout.hold(request)
        if hold.replayed:
            self.set_header("Idempotent-Replayed", "true")
        self.set_header("Location", f"/checkouts/{hold.id}")
        self.write_json(checkout_body(services, hold), status=200 if hold.replayed else 201)


class _CheckoutAction(JsonHandler):
    counted = False  # in the dashboard's purchase requests per replica and by outcome: a confirm (a sale) is

    def on_finish(self) -> None:
        super().on_finish()
        if self.counted:
            self.services.hits.record(self.get_status(), getattr(self, "_code", None))

    async def _answer(self, work: Any) -> None:
        # Refusals answered here, as POST /purchase does, not through Tornado's exception path.
        try:
            await work
        except CheckoutError as exc:
            self._code = exc.code
            self.answer_error(exc)


class CheckoutHandler(_CheckoutAction):
    route = "/checkouts/{id}"

    async def get(self, checkout_id: str) -> None:
        await self._answer(self._show(checkout_id))

    async def _show(self, checkout_id: str) -> None:
        hold = await self.services.checkout.checkout(checkout_id, buyer=await self.buyer())
        self.write_json(checkout_body(self.services, hold))


class ConfirmHandler(_CheckoutAction):
    route = "/checkouts/{id}/confirm"
    counted = True

    async def post(self, checkout_id: str) -> None:
        await self._answer(self._confirm(checkout_id))

    async def _confirm(self, checkout_id: str) -> None:
        services = self.services
        order = await services.checkout.confirm(checkout_id, services.settings.replica_id,
                                                buyer=await self.buyer())
        if order.replayed:
            self.set_header("Idempotent-Replayed", "true")
        self.write_json(order_body(order))


class ReleaseHandler(_CheckoutAction):
    route = "/checkouts/{id}/release"

    async def post(self, checkout_id: str) -> None:
        await self._answer(self._release(checkout_id))

    async def _release(self, checkout_id: str) -> None:
        hold = await self.services.checkout.release(checkout_id, buyer=await self.buyer())
        self.write_json(checkout_body(self.services, hold))


class MalformedCheckoutHandler(_CheckoutAction):
    """An id that no checkout can have: the same 404 as an unknown one."""

    route = "/checkouts/{id}"

    def prepare(self) -> None:
        super().prepare()
        self._code = "unknown_checkout"
        raise unknown_checkout()


default_handlers = [
    (r"/checkouts", CheckoutsHandler),
    (rf"/checkouts/{CHECKOUT_ID}", CheckoutHandler),
    (rf"/checkouts/{CHECKOUT_ID}/confirm", ConfirmHandler),
    (rf"/checkouts/{CHECKOUT_ID}/release", ReleaseHandler),
    (r"/checkouts/[^/]*(?:/confirm|/release)?", MalformedCheckoutHandler),
]
