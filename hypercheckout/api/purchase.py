"""POST /purchase: parse, rate-limit, buy, answer — each step a call into the domain."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import replace
from typing import Any

from hypercheckout.api.base import JsonHandler
from hypercheckout.checkout.errors import CheckoutError, rate_limited
from hypercheckout.checkout.idempotency import parse_key
from hypercheckout.checkout.models import Order, PurchaseRequest
from hypercheckout.checkout.validation import parse_purchase


def order_body(order: Order) -> dict[str, Any]:
    """A placed order as the original's POST /purchase answers it (and a confirmed checkout, with its id)."""
    body: dict[str, Any] = {
        "message": "Order placed successfully",
        "order_id": order.id,
        "user_id": order.user_id,
        "product_id": order.product_id,
        "quantity": order.quantity,
        "created_at": order.created_at.isoformat(),
        "replica": order.replica,
    }
    if order.checkout_id is not None:
        body["checkout_id"] = order.checkout_id
    return body


class PurchaseHandler(JsonHandler):
    route = "/purchase"

    def post(self) -> Awaitable[None] | None:
        # 409 and 429 are the common answers of a flash sale: they are answered here, not through Tornado's
        # exception path (send_error, clear, log_exception), which cost a sold-out rejection a fifth of its time.
        # A refusal known from memory, when nothing is to decide before it, is given without a coroutine at all.
        try:
            request = self._parse()
            if not self.verified_buyers:
                request = self._refused_first(request)
        except CheckoutError as exc:
            self._refuse(exc)
            return None
        return self._answering(request)

    def _refuse(self, exc: CheckoutError) -> None:
        self._code = exc.code
        self.answer_error(exc)

    async def _answering(self, request: PurchaseRequest) -> None:
        try:
            await self._purchase(request)
        except CheckoutError as exc:
            self._refuse(exc)

    def _parse(self) -> PurchaseRequest:
        settings = self.services.settings
        return parse_purchase(
            self.request.body, max_quantity=settings.max_quantity, max_body_bytes=settings.max_body_bytes,
            idempotency_key=parse_key(self.header("Idempotency-Key")), queue_pass=self.header("Queue-Pass"),
            user_optional=self.verified_buyers,
        )

    def _refused_first(self, request: PurchaseRequest) -> PurchaseRequest:
        """Raise the refusal this replica knows from memory alone when it is the answer whatever would come after
        it; never for a request with an Idempotency-Key, whose first try may have placed an order (a lookup). With
        the limiter on, that is a refusal it remembers Redis deciding for this buyer or address a moment ago: the
        limiter decides before anything else, and a refusal from memory is not counted, so sold out or not started
        must wait for it (its counted 429s are what bans a bot hammering before a drop). With the limiter off, it is
        sold out, not started, no pass or too many units. Admission control would only have refused either later,
        or, past its bounds, with a 503 that is less true."""
        if request.idempotency_key is not None:
            return request
        limiter = self.services.limiter
        if limiter.enabled:
            decision = limiter.refused_locally(request.user_id, self.client_ip)
            if decision is not None:
                raise rate_limited(decision.retry_after, decision.banned)
            return request
        return self.services.checkout.refuse_from_memory(request)

    async def _purchase(self, request: PurchaseRequest) -> None:
        services = self.services
        if self.verified_buyers:
            request = self._refused_first(replace(request, user_id=await self.buyer(request.user_id)))
        turned_away = services.admission.enter(self.waited())
        if turned_away is not None:
            # A refusal known from memory (not started, ended, sold out, no pass, too many units) is the true
            # answer, and costs no more than the 503 (load-tests/rejection_cost.py). Not for a request with an
            # Idempotency-Key: its first try may have placed an order, which takes a lookup to learn; the 503
            # promises nothing.
            try:
                request = services.checkout.refuse_from_memory(request)
            except CheckoutError:
                if request.idempotency_key is None:
                    raise
                raise await services.admission.refuse(turned_away) from None
            if not (request.admitted and turned_away == "standing_queue"):
                raise await services.admission.refuse(turned_away)
            # A buyer its waiting room admitted is already paced (admit_per_second): turning it away for a queue
            # it did not make (buyers polling, joining) would only send it back later, its pass running out. The
            # in-flight bound still holds.
            services.admission.take()
        try:
            await self._admitted(request)
        finally:
            services.admission.leave()

    async def _limited(self, request: PurchaseRequest) -> CheckoutError | None:
        """The limiter's refusal of this buyer and address, if it refuses."""
        services = self.services
        if not services.limiter.enabled:
            return None
        decision = await services.limiter.check(request.user_id, self.client_ip)
        return None if decision.allowed else rate_limited(decision.retry_after, decision.banned)

    async def _admitted(self, request: PurchaseRequest) -> None:
        services = self.services
        refusal = await self._limited(request)
        if refusal is not None:
            # A retry of a purchase that was placed must learn so, limited or not.
            order = await services.checkout.refused(request, refusal)
        else:
            order = await services.checkout.purchase(request)
        if order.replayed:
            self.set_header("Idempotent-Replayed", "true")
        self.write_json(order_body(order))

    def on_finish(self) -> None:
        super().on_finish()
        self.services.hits.record(self.get_status(), getattr(self, "_code", None))


default_handlers = [(r"/purchase", PurchaseHandler)]
