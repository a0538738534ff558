"""The waiting room's two calls: join a product's queue, and read where a ticket stands (polled by the buyer)."""

from __future__ import annotations

from hypercheckout.api.base import JsonHandler
from hypercheckout.api.products import PRODUCT_ID
from hypercheckout.checkout.errors import rate_limited
from hypercheckout.checkout.validation import parse_join


class JoinHandler(JsonHandler):
    route = "/products/{id}/queue"

    async def post(self, product_id: str) -> None:
        services = self.services
        # Joins have an in-flight bound of their own: a herd of them must not take the purchases' places.
        admission = services.join_admission
        turned_away = admission.enter(self.waited())
        if turned_away is not None:
            raise await admission.refuse(turned_away)
        try:
            user_id = parse_join(self.request.body, max_body_bytes=services.settings.max_body_bytes,
                                 user_optional=self.verified_buyers)
            if self.verified_buyers:
                user_id = await self.buyer(user_id) or 0
            # Joining is limited as buying is: a bot cannot take a thousand places, nor a place a thousand times.
            if services.limiter.enabled:
                decision = await services.limiter.check(user_id, self.client_ip)
                if not decision.allowed:
                    raise rate_limited(decision.retry_after, decision.banned)
            answer = await services.rooms.join(int(product_id), user_id)
        finally:
            admission.leave()
        self.write_json(answer, status=202)


class TicketHandler(JsonHandler):
    route = "/queue/{ticket}"

    async def get(self, ticket: str) -> None:
        # Answered from this replica's memory (the ticket is signed, admission is arithmetic): a poll costs no
        # Redis or PostgreSQL call, so a queue of thousands polling every second stays cheap (a ticket the copy
        # cannot place yet is looked up: WaitingRooms.read).
        buyer = await self.buyer()
        self.write_json(await self.services.rooms.read(ticket, buyer=buyer))


default_handlers = [
    (rf"/products/{PRODUCT_ID}/queue", JoinHandler),
    (r"/queue/([A-Za-z0-9._-]{1,200})", TicketHandler),
]
