"""POST /webhooks/payments: the provider's word on a payment. The signature is verified with the official stripe
library (300 s tolerance); the event only says which checkout to settle — how its payment stands is asked of the
provider — so any order and any number of deliveries come to the same end. Anything not settled (the provider or
PostgreSQL unreachable) is a 503, and the provider delivers the event again."""

from __future__ import annotations

from hypercheckout.api.base import JsonHandler
from hypercheckout.checkout.errors import CheckoutError, payments_unavailable
from hypercheckout.payments.provider import ProviderUnavailable, WebhookRefused


class PaymentWebhookHandler(JsonHandler):
    route = "/webhooks/payments"

    async def post(self) -> None:
        payments = self.services.payments
        if payments is None:
            raise CheckoutError(404, "not_found", "payments are off (HC_PAYMENTS)")
        try:
            event = payments.provider.event(self.request.body, self.request.headers.get("Stripe-Signature"))
        except WebhookRefused as exc:
            raise CheckoutError(400, "invalid_signature", f"not a webhook of the payment provider: {exc}") from None
        try:
            first = await payments.webhook(event)
        except ProviderUnavailable:
            raise payments_unavailable() from None
        self.write_json({"received": event.id, "duplicate": not first})


default_handlers = [(r"/webhooks/payments", PaymentWebhookHandler)]
