"""Waiting rooms: buyers of a product with a waiting room join a queue, are admitted first-come at the product's
``admit_per_second``, and buy with a signed pass that expires.

Nothing runs in the background, so nothing can die and stop the queue:

* **Joining** gives the buyer a place in the room's line, in PostgreSQL (one statement, `store/line.py`): one
  past the later of the last place given and where the line stands now, and the same place again to a buyer who
  joins twice. So places follow the order of joining, a late joiner is admitted within one slot (capacity nobody
  used is not handed out in a burst), and a Redis that loses its data changes nothing. The ticket is the place,
  the product, the room's generation (each opening of the room starts a new line) and the buyer, signed (HMAC):
  reading a ticket needs no lookup.
* **Admission is arithmetic**: by time t the line has reached place ``admitted_before + admit_per_second * (t -
  origin)``, the origin being the later of the sale's start and the moment the room opened (or its rate or start
  last changed: the line then moves on from where it stood, so no place is admitted twice). Every replica
  computes it from its copy of the product (the sale schedule) and PostgreSQL's clock as it reads it (``clock.py``:
  whatever its own clock's skew), so all replicas agree, in ticket order, without talking to each other. A place
  the line passed before the last change keeps the admission time it had (the product keeps the line's earlier
  segments), so its pass keeps its expiry.
* **The pass** names the buyer, the product, the room's opening and its expiry (``pass_seconds`` after the
  ticket's admission) and is signed; a purchase checks it in memory, and the purchase's transaction checks that a
  product with a waiting room is bought only with one of its current opening, and that the pass has not bought
  before (`store.line.passes_used`, under the row lock): one place in line, one purchase (its retries with the
  same Idempotency-Key replay it).
* **Stock-aware**: a product seen sold out (the sold-out flags, shared between replicas over Redis) turns every
  ticket ``sold_out`` at once; a restock clears the flags and the tickets stand where the clock puts them again. A
  later end does the same for ``ended``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from hypercheckout.checkout.clock import DatabaseClock
from hypercheckout.checkout.errors import (
    CheckoutError,
    no_waiting_room,
    queue_pass_expired,
    queue_pass_invalid,
    queue_unavailable,
    room_sold_out,
    sale_ended,
    unknown_product,
    unknown_ticket,
)
from hypercheckout.checkout.models import PurchaseRequest
from hypercheckout.checkout.schedule import SaleSchedule
from hypercheckout.checkout.soldout import SoldOutFlags
from hypercheckout.store import Store, WaitingRoom
from hypercheckout.store.line import line_lengths, take_place

TICKET, PASS = "t2", "p2"  # token kinds (and versions): a ticket can never pass for a pass


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
    generation: int  # the opening of the room it was given in
    number: int  # its place in the room's line, in the order of joining, from 1
    user_id: int


# Admission counts whole microseconds, as PostgreSQL's timestamps do, in integers: by time t the line has reached
# admitted_before + floor(microseconds since origin x rate / 1,000,000) — the very arithmetic of store.LINE_NOW,
# which places joiners and moves the line on at an edit, so a replica and PostgreSQL never disagree by a place at
# the edges (floats did, at high rates). tests/test_waiting_room_line.py holds the two to the same answers.
MICROSECONDS = 1_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(epoch: float) -> int:
    """Epoch seconds as whole microseconds (a float of today's epoch is exact to a quarter of one)."""
    return round(epoch * MICROSECONDS)


def _origin_micros(origin: datetime) -> int:
    return (origin - EPOCH) // timedelta(microseconds=1)


def admitted_by(room: WaitingRoom, now: float) -> int:
    """How many tickets the room has admitted by ``now`` (epoch seconds)."""
    if room.origin is None:
        return room.admitted_before
    elapsed = _micros(now) - _origin_micros(room.origin)
    if elapsed <= 0:
        return room.admitted_before
    return room.admitted_before + elapsed * room.admit_per_second // MICROSECONDS


def _reached(origin: int, before: int, rate: int, number: int) -> float:
    """The first microsecond (as epoch seconds) at which a segment from ``origin`` reaches place ``number``."""
    return (origin - (-(number - before) * MICROSECONDS // rate)) / MICROSECONDS


def admission_time(room: WaitingRoom, number: int) -> float | None:
    """When ticket ``number`` is (or was) admitted, epoch seconds; None while the room has no origin. A ticket the
    line passed before its last change was admitted in an earlier segment; one older than the segments kept
    (those that ended less than the longest pass ago) is long expired (epoch 0)."""
    if number > room.admitted_before:
        if room.origin is None:
            return None
        return _reached(_origin_micros(room.origin), room.admitted_before, room.admit_per_second, number)
    for origin, before, rate in reversed(room.history):
        if number > before:
            return _reached(_micros(origin), before, rate, number)
    return 0.0


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


class WaitingRooms:
    def __init__(self, store: Store, schedule: SaleSchedule, sold_out: SoldOutFlags, *, secret: str,
                 clock: DatabaseClock | None = None, join_connections: int = 2) -> None:
        self._store = store
        # Joins of one product take their line's row lock in turn: more at once than this would only hold pool
        # connections while they wait for it, and purchases would queue for a connection behind a herd of joins.
        self._join_slots = asyncio.Semaphore(join_connections)
        self._schedule = schedule
        self._sold_out = sold_out
        self._signer = Signer(secret)
        # PostgreSQL's clock as this replica reads it: admissions are counted from an origin PostgreSQL set, and
        # every replica must count alike, whatever its own clock's skew.
        self._clock = schedule.clock if clock is None else clock

    # --- joining and reading a ticket ---------------------------------------------------------------------------

    async def join(self, product_id: int, user_id: int) -> dict[str, Any]:
        """The buyer's ticket (the same one if it joined before) and where it stands now, by PostgreSQL's row
        (not this replica's copy, which may not have seen the room open yet)."""
        async with self._join_slots:
            place = await take_place(self._store, product_id, user_id)
        if place is None:
            raise unknown_product(product_id)
        product, number = place.product, place.number
        room = product.room
        if room is None:
            raise no_waiting_room(product_id)
        if number is None and place.ended:
            raise sale_ended(product_id, product.ends_at.isoformat() if product.ends_at else "")
        if number is None and product.stock <= 0 and product.held <= 0:
            raise room_sold_out(product_id)
        if number is None:
            raise queue_unavailable()
        ticket = Ticket(product_id, room.generation, number, user_id)
        token = self._signer.sign(TICKET, product_id, room.generation, number, user_id)
        return {"ticket": token, "product_id": product_id, **self._standing(ticket, room)}

    async def read(self, token: str, *, buyer: int | None = None) -> dict[str, Any]:
        """Where a ticket stands now: answered from memory, no Redis or PostgreSQL call — a ticket of a room this
        copy knows closed since the ticket's opening included (polled by every buyer who was in line) — unless
        this replica's copy cannot place the ticket (a product it does not know, or an opening newer than it has
        seen): then the room opened a moment ago and the copy has not seen it yet, or the product was deleted, and
        PostgreSQL's row says which (one primary-key read, for such tickets only). A buyer is never told its room
        is gone because one replica has not caught up. With ``buyer`` (a verified buyer's number), only that
        buyer's ticket is read: another's is as unknown as a forged one."""
        fields = self._signer.fields(token, TICKET, 4)
        if fields is None:
            raise unknown_ticket()
        ticket = Ticket(*fields)
        if buyer is not None and ticket.user_id != buyer:
            raise unknown_ticket()
        room = self._schedule.room(ticket.product_id)
        if room is None and self._schedule.closed_since(ticket.product_id, ticket.generation):
            raise no_waiting_room(ticket.product_id)  # closed after its opening, and not reopened: no lookup
        if room is None or room.generation < ticket.generation:
            product = await self._store.get_product(ticket.product_id)
            if product is None:
                raise unknown_ticket()  # its product was deleted
            room = product.room
            if room is None:
                raise no_waiting_room(ticket.product_id)  # the room was closed: buy directly
        return {"product_id": ticket.product_id, **self._standing(ticket, room)}

    def _standing(self, ticket: Ticket, room: WaitingRoom) -> dict[str, Any]:
        now = self._clock()
        rules = self._schedule.rules(ticket.product_id)
        nothing = {"position": None, "estimated_wait_s": None, "pass": None, "pass_expires_at": None}
        if ticket.generation < room.generation:
            return {"status": "expired", **nothing}  # the room was closed and opened again since: join again
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
                    "pass": self._signer.sign(PASS, ticket.product_id, ticket.user_id, ticket.generation, expires),
                    "pass_expires_at": _iso(expires)}
        ahead = ticket.number - admitted_by(room, now)
        wait = None if admitted_at is None else max(0, math.ceil(admitted_at - now))
        return {"status": "waiting", "position": max(1, ahead), "estimated_wait_s": wait, "pass": None,
                "pass_expires_at": None}

    # --- the pass, at purchase ----------------------------------------------------------------------------------

    def check_pass(self, request: PurchaseRequest) -> PurchaseRequest:
        """The request marked ``admitted`` if its Queue-Pass is valid for its buyer and product; a 403 if the
        product has a waiting room and the pass is forged, someone else's, another product's or expired. A
        product without one (by this replica's copy) ignores the header; the transaction has the last word (and
        the one purchase a pass admits is counted there, under the product's row lock)."""
        if request.queue_pass is None:
            return request
        room = self._schedule.room(request.product_id)
        try:
            generation, expires = self._verify(request.queue_pass, request.user_id, request.product_id)
            if room is not None and generation < room.generation:
                raise queue_pass_invalid("it is from an earlier opening of the waiting room; join the queue again")
        except CheckoutError:
            if room is not None:
                raise
            return request
        return replace(request, pass_generation=generation, pass_expires=expires)

    def _verify(self, token: str, user_id: int, product_id: int) -> tuple[int, int]:
        """The opening of the room the pass was given in and its expiry, if it is valid for this buyer and product
        now."""
        fields = self._signer.fields(token, PASS, 4)
        if fields is None:
            raise queue_pass_invalid("malformed or forged")
        pass_product, pass_user, generation, expires = fields
        if pass_product != product_id:
            raise queue_pass_invalid(f"it is for product {pass_product}")
        if pass_user != user_id:
            raise queue_pass_invalid("it is another buyer's")
        # Only when surely expired by PostgreSQL's clock: a retry told so must never be followed by its first try
        # buying with the pass (the transaction reads PostgreSQL's clock after claiming the key, so it agrees).
        if self._clock.surely_past(expires):
            raise queue_pass_expired(_iso(expires))
        return generation, expires

    # --- for the dashboard and /metrics ---------------------------------------------------------------------------

    async def queues(self, product_ids: list[int]) -> dict[int, dict[str, int]]:
        """Per product, ``length``: buyers in its room's line, and ``admitted``: how many of them the line has
        reached by now (PostgreSQL; a CheckoutError 503 when it cannot be asked)."""
        if not product_ids:
            return {}
        return await line_lengths(self._store, product_ids)
