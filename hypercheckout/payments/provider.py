"""The one adapter between the service and the payment provider: Stripe's PaymentIntents with manual capture,
through the official ``stripe`` library (async, over httpx), against Stripe itself or the simulator — the same code,
only the API base differs. Webhooks are verified with the library's own ``Webhook.construct_event``.

Every call that changes money carries an idempotency key derived from the checkout, so a retry after a timeout, a
crash or a duplicated webhook can never make a second intent, a second capture or a second cancellation."""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

WEBHOOK_TOLERANCE_S = 300  # Stripe's own default: an older signature is a replay


class ProviderUnavailable(Exception):
    """The provider could not be reached or failed (timeout, 5xx, 429): try again later."""


class WebhookRefused(Exception):
    """A webhook that is not the provider's: no or a bad signature, too old, or not an event."""


@dataclass(frozen=True, slots=True)
class Payment:
    """What the service needs of a PaymentIntent."""

    id: str
    status: str  # requires_payment_method, requires_confirmation, processing, requires_capture, succeeded, canceled
    amount: int
    currency: str
    client_secret: str | None
    amount_received: int
    checkout_id: str | None  # from its metadata
    declined: bool = False  # its last attempt failed (a declined card): the buyer may try another

    @classmethod
    def of(cls, resource: Any) -> Payment:
        intent = resource.to_dict() if hasattr(resource, "to_dict") else dict(resource)
        metadata = intent.get("metadata") or {}
        return cls(id=intent["id"], status=intent["status"], amount=int(intent["amount"]),
                   currency=intent["currency"], client_secret=intent.get("client_secret"),
                   amount_received=int(intent.get("amount_received") or 0),
                   checkout_id=metadata.get("checkout_id"), declined=bool(intent.get("last_payment_error")))


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    id: str
    type: str
    intent_id: str | None
    checkout_id: str | None


class PaymentProvider:
    def __init__(self, api_key: str, *, api_base: str, webhook_secret: str, timeout: float,
                 page_url: str | None = None) -> None:
        # Imported here, not with the module: the library takes 0.4 s to import, and every replica and CLI call
        # would pay it with payments off.
        stripe = self._stripe = importlib.import_module("stripe")
        self._http = stripe.HTTPXClient(timeout=timeout)
        self._client = stripe.StripeClient(api_key, base_addresses={"api": api_base}, max_network_retries=0,
                                           http_client=self._http)
        self._webhook_secret = webhook_secret
        self._page_url = page_url  # the simulator's hosted page; with Stripe the buyer page uses the client secret

    async def create(self, checkout_id: str, amount: int, currency: str) -> Payment:
        """The checkout's PaymentIntent (manual capture): the same one however many times this is called. Any
        failure, a refusal included, is ProviderUnavailable: no payment could be started."""
        try:
            return await self._call(self._client.v1.payment_intents.create_async(
                {"amount": amount, "currency": currency, "capture_method": "manual",
                 "metadata": {"checkout_id": checkout_id}, "description": f"HyperCheckout {checkout_id}"},
                {"idempotency_key": f"hc-intent-{checkout_id}"}))
        except self._stripe.StripeError as exc:
            raise ProviderUnavailable(str(exc)) from None

    async def retrieve(self, intent_id: str) -> Payment:
        return await self._call(self._client.v1.payment_intents.retrieve_async(intent_id))

    async def capture(self, intent_id: str) -> Payment:
        """Take the authorized money, once: a capture already made answers as the intent now is."""
        return await self._settle(self._client.v1.payment_intents.capture_async(
            intent_id, {}, {"idempotency_key": f"hc-capture-{intent_id}"}), intent_id)

    async def cancel(self, intent_id: str) -> Payment:
        """Let the authorization go (no money moves); an intent that can no longer be cancelled answers as it is."""
        return await self._settle(self._client.v1.payment_intents.cancel_async(
            intent_id, {"cancellation_reason": "abandoned"}, {"idempotency_key": f"hc-cancel-{intent_id}"}),
            intent_id)

    def pay_url(self, intent_id: str | None, client_secret: str | None) -> str | None:
        if self._page_url is None or intent_id is None or client_secret is None:
            return None
        return f"{self._page_url}/pay/{intent_id}?client_secret={client_secret}"

    def event(self, payload: bytes, signature: str | None) -> WebhookEvent:
        """The verified event of a webhook, or WebhookRefused."""
        try:
            event = self._stripe.Webhook.construct_event(payload, signature or "", self._webhook_secret,
                                                   tolerance=WEBHOOK_TOLERANCE_S)
        except self._stripe.SignatureVerificationError as exc:
            raise WebhookRefused(f"signature: {exc.user_message or exc}") from None
        except ValueError as exc:
            raise WebhookRefused(f"not an event: {exc}") from None
        body = event.to_dict()
        obj = (body.get("data") or {}).get("object") or {}
        if not body.get("id") or not body.get("type"):
            raise WebhookRefused("not an event: no id or type")
        is_intent = obj.get("object") == "payment_intent"
        return WebhookEvent(id=body["id"], type=body["type"], intent_id=obj.get("id") if is_intent else None,
                            checkout_id=(obj.get("metadata") or {}).get("checkout_id") if is_intent else None)

    async def close(self) -> None:
        await self._http.close_async()

    async def _call(self, request: Any) -> Payment:
        try:
            return Payment.of(await request)
        except (self._stripe.APIConnectionError, self._stripe.RateLimitError) as exc:
            raise ProviderUnavailable(str(exc)) from None
        except self._stripe.StripeError as exc:
            if exc.http_status is None or exc.http_status >= 500:
                raise ProviderUnavailable(str(exc)) from None
            raise

    async def _settle(self, request: Any, intent_id: str) -> Payment:
        try:
            return await self._call(request)
        except self._stripe.InvalidRequestError as exc:
            if exc.code != "payment_intent_unexpected_state":
                raise
            return await self.retrieve(intent_id)  # captured or cancelled already (or not capturable): as it is
