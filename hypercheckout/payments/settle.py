"""Where a checkout's money and its units are made to agree: plain async functions over the store and the provider,
called by the webhook, by the reconciler and by `hypercheckout payments reconcile` alike.

``settle`` never trusts an event's copy of a payment: it asks the provider how the payment stands now, so events
may come in any order, any number of times, or not at all, and the outcome is the same. The rules:

* authorized (``requires_capture``), hold running or re-bookable → the order is committed first (its payment
  'capturing', in the same statement), then the money captured (once: the capture's idempotency key), then
  'captured'. A crash between the two leaves 'capturing', which the reconciler finishes: never a capture without an
  order, never an order whose money is not taken.
* authorized, but no units to be had (the hold ran out and they were sold) or the buyer released it → the
  authorization is cancelled, no money moves, and the checkout says so ('expired'/'released', payment 'cancelled').
* not paid yet, or declined → nothing: the buyer may try another card until the hold runs out. A grace period after
  it ran out, the reconciler cancels the intent (a payment can no longer be made), settling it as above if it was
  authorized meanwhile.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from hypercheckout.checkout import holds
from hypercheckout.checkout.errors import CheckoutError, payments_unavailable
from hypercheckout.checkout.models import Hold, Order
from hypercheckout.payments.provider import Payment, PaymentProvider, ProviderUnavailable, WebhookEvent
from hypercheckout.periodic import Every
from hypercheckout.store import Store
from hypercheckout.store import payments as sql

log = logging.getLogger(__name__)

UNPAID = ("requires_payment_method", "requires_confirmation", "processing")
FAILPOINT_EXIT = 86
CAPTURE_AFTER_S = 5.0  # an order whose capture was not seen this long after its commit is in doubt


@dataclass
class PaymentsCounts:
    """For /metrics and the dashboard: what this replica settled."""

    created: int = 0
    captured: int = 0
    cancelled: int = 0
    rebooked: int = 0
    webhooks: int = 0
    duplicates: int = 0


class Payments:
    def __init__(self, provider: PaymentProvider, store: Store, *, replica: str, grace: float,
                 confirm: Callable[[str], Awaitable[Order]] | None = None,
                 capture_after: float = CAPTURE_AFTER_S, crash_before_capture: float = 0.0) -> None:
        self.provider = provider
        self._store = store
        self._replica = replica
        self.grace = grace  # seconds after a hold ends before its unpaid payment is cancelled
        self.capture_after = capture_after  # seconds after an order's commit before its capture is in doubt
        self._crash_before_capture = crash_before_capture  # a fault campaign's failpoint (0 in production)
        self._confirm = confirm or (lambda checkout_id: holds.confirm(store, checkout_id, replica, by_payment=True))
        self.counts = PaymentsCounts()

    # --- a new checkout ---------------------------------------------------------------------------------------------

    async def start(self, hold: Hold) -> Hold:
        """The payment of a hold that waits for one (created once, whoever asks: a retry, a replay). The provider
        unreachable: the hold is given back at once and its key let go, and the buyer gets a 503."""
        if hold.payment_status != "pending" or hold.payment_intent is not None:
            return hold
        try:
            payment = await self.provider.create(hold.id, hold.amount, hold.currency)
        except ProviderUnavailable as exc:
            log.warning("payment of %s not created: %s", hold.id, exc)
            async with self._store.transaction() as cur:
                abandoned = await sql.abandon(cur, hold.id)
            if not abandoned:  # its intent was recorded meanwhile (a concurrent replay made it): use that one
                return holds.as_hold(await holds.find(self._store, hold.id), replayed=hold.replayed)
            raise payments_unavailable() from None
        async with self._store.cursor() as cur:
            await sql.set_intent(cur, hold.id, payment.id, payment.client_secret)
        self.counts.created += 1
        return dataclasses.replace(hold, payment_intent=payment.id, payment_secret=payment.client_secret)

    # --- settling ---------------------------------------------------------------------------------------------------

    async def settle(self, checkout_id: str, *, abandon_unpaid: bool = False, intent_hint: str | None = None) -> str:
        """Make the checkout's units and money agree with its payment as the provider has it now; returns the
        payment's status after. ``abandon_unpaid``: an unpaid payment of a hold that ended a grace period ago is
        cancelled. ProviderUnavailable: nothing decided, ask again later."""
        found = await holds.find(self._store, checkout_id)
        if found.payment_status in (None, "captured", "cancelled"):
            return found.payment_status or "none"
        intent = found.payment_intent
        if intent is None and intent_hint is not None:  # made, but its id never recorded (a crash in between)
            async with self._store.cursor() as cur:
                await sql.set_intent(cur, checkout_id, intent_hint, None)
            intent = intent_hint
        if intent is None:
            if found.status != "held":  # no payment was ever made for it, and it can no longer be paid
                await self._move(checkout_id, "cancelled", ("pending",))
                return "cancelled"
            return "pending"
        payment = await self.provider.retrieve(intent)
        if found.payment_status == "capturing":
            return await self._capture(checkout_id, payment)
        if found.payment_status == "cancelling":  # claimed by a cancel that did not finish (a crash, an outage)
            return await self._cancel(checkout_id, payment)
        if payment.status == "requires_capture":
            if found.status == "released":
                return await self._cancel(checkout_id, payment)
            try:
                order = await self._confirm(checkout_id)
            except CheckoutError as refusal:  # ran out and its units are gone, released, the sale ended, a limit
                log.info("payment of %s authorized but not honoured (%s): cancelled", checkout_id, refusal.code)
                return await self._cancel(checkout_id, payment)
            if order.rebooked and not order.replayed:
                self.counts.rebooked += 1
            if not order.replayed and self._crash_before_capture and random.random() < self._crash_before_capture:
                log.warning("failpoint: crashing between the order of %s and its capture", checkout_id)
                os._exit(FAILPOINT_EXIT)  # as a kill -9 would: no cleanup, the order committed, nothing captured
            return await self._capture(checkout_id, payment)
        if payment.status == "canceled":
            await self._move(checkout_id, "cancelled", ("pending", "cancelling"))
            return "cancelled"
        if payment.status == "succeeded":  # money taken with no order: only someone else can have done this
            log.error("payment %s of checkout %s was captured without an order", payment.id, checkout_id)
            return "pending"
        if abandon_unpaid and found.status != "held":
            return await self._cancel(checkout_id, payment)
        async with self._store.cursor() as cur:
            await sql.checked(cur, checkout_id)
        return "pending"

    async def _capture(self, checkout_id: str, payment: Payment) -> str:
        if payment.status == "requires_capture":
            payment = await self.provider.capture(payment.id)
        if payment.status != "succeeded":
            # An order whose authorization is gone (cancelled or expired at the provider): money and units
            # disagree, and no retry can fix it. Said loudly; the checker counts it.
            log.error("payment %s of checkout %s cannot be captured: %s", payment.id, checkout_id, payment.status)
            return "capturing"
        if await self._move(checkout_id, "captured", ("capturing",)):
            self.counts.captured += 1
        return "captured"

    async def _cancel(self, checkout_id: str, payment: Payment) -> str:
        # Claimed first: no order can be committed for the payment from here on (the confirm statements want
        # 'pending'); if one was committed meanwhile, the claim fails and the payment is settled as it now is.
        if not await self._move(checkout_id, "cancelling", ("pending", "cancelling")):
            return await self.settle(checkout_id)
        if payment.status in (*UNPAID, "requires_capture"):
            payment = await self.provider.cancel(payment.id)
        if payment.status != "canceled":  # captured by someone else: money with no order, said loudly
            log.error("payment %s of checkout %s could not be cancelled: %s", payment.id, checkout_id,
                      payment.status)
            return "cancelling"
        if await self._move(checkout_id, "cancelled", ("cancelling",)):
            self.counts.cancelled += 1
        return "cancelled"

    async def _move(self, checkout_id: str, to: str, from_: tuple[str, ...]) -> bool:
        async with self._store.cursor() as cur:
            return await sql.move(cur, checkout_id, to, from_=from_)

    # --- the provider's word ----------------------------------------------------------------------------------------

    async def webhook(self, event: WebhookEvent) -> bool:
        """Settle the payment a verified event is about, then record the event; True the first time it is seen.
        ProviderUnavailable or the store down: raised, so the provider delivers the event again later."""
        self.counts.webhooks += 1
        checkout_id = event.checkout_id
        if checkout_id is None and event.intent_id is not None:
            async with self._store.cursor() as cur:
                checkout_id = await sql.checkout_of_intent(cur, event.intent_id)
        if checkout_id is not None and event.intent_id is not None:
            try:
                await self.settle(checkout_id, intent_hint=event.intent_id)
            except CheckoutError as exc:
                if exc.code != "unknown_checkout":  # a checkout deleted with its product: nothing to settle
                    raise
        async with self._store.cursor() as cur:
            first = await sql.record_event(cur, event.id, event.type, event.intent_id)
        if not first:
            self.counts.duplicates += 1
        return first

    async def released(self, hold: Hold) -> None:
        """After its buyer or an operator released a paid checkout: its payment is cancelled now (best effort; the
        reconciler finishes what this could not)."""
        if hold.payment_status != "pending":
            return
        try:
            await self.settle(hold.id, abandon_unpaid=True)
        except (ProviderUnavailable, CheckoutError) as exc:
            log.info("payment of released %s left to the reconciler: %s", hold.id, exc)

    async def reconcile(self, limit: int = 100) -> dict[str, int]:
        """One pass over the payments in doubt, if no other replica is making one: outcome -> checkouts."""
        outcomes: dict[str, int] = {}
        async with self._store.cursor() as lock:
            if not await sql.try_lock(lock):
                return outcomes
            try:
                async with self._store.cursor() as cur:
                    doubtful = await sql.in_doubt(cur, grace=self.grace, capture_after=self.capture_after,
                                                  recheck=self.capture_after, limit=limit)
                for checkout_id in doubtful:
                    try:
                        outcome = await self.settle(checkout_id, abandon_unpaid=True)
                    except ProviderUnavailable:
                        outcome = "provider_unavailable"
                    except CheckoutError as exc:
                        outcome = exc.code
                    outcomes[outcome] = outcomes.get(outcome, 0) + 1
            finally:
                await sql.unlock(lock)
        return outcomes


class Reconciler:
    """Every ``interval`` seconds, one replica at a time settles the payments in doubt (PostgreSQL's advisory lock)."""

    def __init__(self, payments: Payments, *, interval: float) -> None:
        self._payments = payments
        self._every = Every("payment reconciliation", interval, self._reconcile)

    def start(self) -> None:
        self._every.start()

    async def close(self) -> None:
        await self._every.close()

    async def _reconcile(self) -> None:
        try:
            outcomes = await self._payments.reconcile()
        except CheckoutError as exc:  # PostgreSQL unavailable: the next pass
            log.debug("payment reconciliation skipped: %s", exc.message)
            return
        if outcomes:
            log.info("payments reconciled: %s", outcomes)
