"""Waiting rooms: buyers of a product with a waiting room join a queue, are admitted first-come at the product's
``admit_per_second``, and buy with a signed pass that expires.

Nothing runs in the background, so nothing can die and stop the queue:

* **Joining** numbers the buyer: one Redis script per product (`lua/queue_join.lua`, the product's keys under one
  hash tag) hands out 1, 2, 3 … in arrival order, and the same number again to a buyer who joins twice. The
  ticket is that number, the product and the buyer, signed (HMAC): reading a ticket needs no lookup.
* **Admission is arithmetic**: by time t the room has admitted ``admitted_before + admit_per_second * (t -
  origin)`` tickets, the origin being the later of the sale's start and the moment the room opened (or the rate
  last changed). Every replica computes it from its copy of the product (the sale schedule) and its clock, so all
  replicas agree, in ticket order, without talking to each other.
* **The pass** names the buyer, the product and its expiry (``pass_seconds`` after the ticket's admission) and is
  signed; a purchase checks it in memory, and the purchase's transaction checks that a product with a waiting room
  is bought only with one (`check_sale`), as it checks the sale window.
* **Stock-aware**: a product seen sold out (the sold-out flags, shared between replicas over Redis) turns every
  ticket ``sold_out`` at once; a restock clears the flags and the tickets stand where the clock puts them again. A
  later end does the same for ``ended``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from hypercheckout.checkout.errors import (
    CheckoutError,
    no_waiting_room,
    queue_pass_expired,
    queue_pass_invalid,
    queue_unavailable,
    unknown_product,
    unknown_ticket,
)
from hypercheckout.checkout.models import PurchaseRequest
from hypercheckout.checkout.schedule import SaleSchedule
from hypercheckout.checkout.soldout import SoldOutFlags
from hypercheckout.limiter import CALL_FAILED, load_script
from hypercheckout.redisclient import RedisClient
from hypercheckout.store import Store, WaitingRoom

TICKET, PASS = "t1", "p1"  # token kinds (and versions): a ticket can never pass for a pass
TICKET_TTL_SECONDS = 7 * 24 * 3600  # a product's queue is forgotten a week after its last join


class Signer:
    """HMAC-SHA256 over dot-separated fields, with a key of its own derived from the server secret (so a session
    cookie's signature can never be replayed as a pass, nor a pass as a cookie)."""

    def __init__(self, secret: str) -> None:
        self._key = hmac.new(secret.encode(), b"hypercheckout waiting room", hashlib.sha256).digest()

    def _mac(self, text: str) -> str:
        digest = hmac.new(self._key, text.encode(), hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def sign(self, *fields: object) -> str:
        text = ".".join(str(f) for f in fields)
        return f"{text}.{self._mac(text)}"

    def fields(self, token: str, kind: str, count: int) -> list[int] | None:
        """The ``count`` whole numbers a token of ``kind`` carries, or None if it is malformed or forged."""
        if len(token) > 200 or not token.isascii():  # a header may carry any byte; a MAC compares ASCII only
            return None
        text, _, mac = token.rpartition(".")
        parts = text.split(".")
        if len(parts) != count + 1 or parts[0] != kind or not all(p.isascii() and p.isdigit() for p in parts[1:]):
            return None
        if not hmac.compare_digest(mac, self._mac(text)):
            return None
        return [int(p) for p in parts[1:]]


@dataclass(frozen=True, slots=True)
class Ticket:
    product_id: int
    number: int  # its place in the order of joining, from 1
    user_id: int


def admitted_by(room: WaitingRoom, now: float) -> int:
    """How many tickets the room has admitted by ``now`` (epoch seconds)."""
    if room.origin is None:
        return room.admitted_before
    elapsed = now - room.origin.timestamp()
    if elapsed <= 0:
        return room.admitted_before
    return room.admitted_before + math.floor(elapsed * room.admit_per_second)


def admission_time(room: WaitingRoom, number: int) -> float | None:
    """When ticket ``number`` is (or was) admitted, epoch seconds; None while the room has no origin. A ticket
    admitted before the last change of rate counts from that change."""
    if room.origin is None:
        return None
    return room.origin.timestamp() + max(0, number - room.admitted_before) / room.admit_per_second


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


class WaitingRooms:
    def __init__(self, client: RedisClient, store: Store, schedule: SaleSchedule, sold_out: SoldOutFlags, *,
                 prefix: str, secret: str, clock: Callable[[], float] = time.time) -> None:
        self._redis = client
        self._store = store
        self._schedule = schedule
        self._sold_out = sold_out
        self._prefix = prefix
        self._signer = Signer(secret)
        self._clock = clock
        self._join = client.register_script(load_script("queue_join.lua"))

    def _keys(self, product_id: int) -> list[str]:
        # One hash tag per product: the join script's two keys are in one Redis Cluster slot.
        start = f"{self._prefix}{{q{product_id}}}:"
        return [f"{start}seq", f"{start}users"]

    async def _room(self, product_id: int) -> WaitingRoom:
        """The product's waiting room, from this replica's copy, or from PostgreSQL for a product the copy does
        not know yet (created a moment ago)."""
        room = self._schedule.room(product_id)
        if room is not None:
            return room
        if self._schedule.rules(product_id) is None:
            product = await self._store.get_product(product_id)
            if product is None:
                raise unknown_product(product_id)
            if product.room is not None:
                return product.room
        raise no_waiting_room(product_id)

    # --- joining and reading a ticket ---------------------------------------------------------------------------

    async def join(self, product_id: int, user_id: int) -> dict[str, Any]:
        """The buyer's ticket (the same one if it joined before) and where it stands now."""
        room = await self._room(product_id)
        # Joining twice is harmless (the same buyer gets the same number), so a call that failed — Redis busy for
        # longer than HC_REDIS_TIMEOUT in a burst of joins — is made once more before the buyer is told to retry.
        for attempt in (1, 2):
            try:
                number = int(await self._join(keys=self._keys(product_id),
                                              args=[user_id, TICKET_TTL_SECONDS * 1000]))
                break
            except CALL_FAILED:
                if attempt == 2:
                    raise queue_unavailable() from None
        ticket = Ticket(product_id, number, user_id)
        token = self._signer.sign(TICKET, product_id, number, user_id)
        return {"ticket": token, "product_id": product_id, **self._standing(ticket, room)}

    def read(self, token: str) -> dict[str, Any]:
        """Where a ticket stands now: answered from memory, no Redis or PostgreSQL call."""
        fields = self._signer.fields(token, TICKET, 3)
        if fields is None:
            raise unknown_ticket()
        ticket = Ticket(*fields)
        room = self._schedule.room(ticket.product_id)
        if room is None:
            if self._schedule.rules(ticket.product_id) is None:
                raise unknown_ticket()  # its product was deleted
            raise no_waiting_room(ticket.product_id)  # the room was closed: buy directly
        return {"product_id": ticket.product_id, **self._standing(ticket, room)}

    def _standing(self, ticket: Ticket, room: WaitingRoom) -> dict[str, Any]:
        now = self._clock()
        rules = self._schedule.rules(ticket.product_id)
        nothing = {"position": None, "estimated_wait_s": None, "pass": None, "pass_expires_at": None}
        if rules is not None and rules.ends_at is not None and now >= rules.ends_at.timestamp():
            return {"status": "ended", **nothing}
        if self._sold_out.is_sold_out(ticket.product_id):
            return {"status": "sold_out", **nothing}
        admitted_at = admission_time(room, ticket.number)
        if admitted_at is not None and admitted_at <= now:
            expires = math.ceil(admitted_at + room.pass_seconds)
            if now >= expires:
                return {"status": "expired", **nothing}
            return {"status": "admitted", "position": 0, "estimated_wait_s": 0,
                    "pass": self._signer.sign(PASS, ticket.product_id, ticket.user_id, expires),
                    "pass_expires_at": _iso(expires)}
        ahead = ticket.number - admitted_by(room, now)
        wait = None if admitted_at is None else max(0, math.ceil(admitted_at - now))
        return {"status": "waiting", "position": max(1, ahead), "estimated_wait_s": wait, "pass": None,
                "pass_expires_at": None}

    # --- the pass, at purchase ----------------------------------------------------------------------------------

    def check_pass(self, request: PurchaseRequest) -> PurchaseRequest:
        """The request marked ``admitted`` if its Queue-Pass is valid for its buyer and product; a 403 if the
        product has a waiting room and the pass is forged, someone else's, another product's or expired. A
        product without one (by this replica's copy) ignores the header; the transaction has the last word."""
        if request.queue_pass is None:
            return request
        try:
            self._verify(request.queue_pass, request.user_id, request.product_id)
        except CheckoutError:
            if self._schedule.room(request.product_id) is not None:
                raise
            return request
        return replace(request, admitted=True)

    def _verify(self, token: str, user_id: int, product_id: int) -> None:
        fields = self._signer.fields(token, PASS, 3)
        if fields is None:
            raise queue_pass_invalid("malformed or forged")
        pass_product, pass_user, expires = fields
        if pass_product != product_id:
            raise queue_pass_invalid(f"it is for product {pass_product}")
        if pass_user != user_id:
            raise queue_pass_invalid("it is another buyer's")
        if self._clock() >= expires:
            raise queue_pass_expired(_iso(expires))

    # --- for the dashboard and /metrics ---------------------------------------------------------------------------

    async def queues(self, product_ids: list[int]) -> dict[int, dict[str, int]]:
        """Per product, ``length``: buyers who joined (Redis; raises CALL_FAILED errors when it cannot be asked),
        and ``admitted``: how many of them the room has admitted by now (arithmetic, this replica's copy)."""
        if not product_ids:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for product_id in product_ids:
            pipe.get(self._keys(product_id)[0])
        values = await pipe.execute()
        now = self._clock()
        found = {}
        for product_id, value in zip(product_ids, values, strict=True):
            length, room = int(value or 0), self._schedule.room(product_id)
            found[product_id] = {"length": length, "admitted": min(length, admitted_by(room, now) if room else 0)}
        return found
