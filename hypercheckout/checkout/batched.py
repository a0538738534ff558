"""Group commit for purchases: concurrent buyers of one product share one transaction.

Per process and per product, purchases wait at most ``window_ms`` (or until ``max_batch`` are waiting; while the
product's batches are busy, ``busy_window_ms``: see ``BUSY_BATCH``), then one
transaction locks the product row once, grants in arrival order while stock lasts (``allocation.allocate``), and
writes one UPDATE and one multi-row INSERT. Each waiter gets its own order or its own 409. A batch with nothing to
decide one by one — no Idempotency-Key, no pass, a product without per-user limit or waiting room whose stock covers
it all — is settled by one statement instead of two (``Store.settle_plain_batch``): one round trip, one statement
for PostgreSQL to parse and plan fewer, and none if it turns out not to be plain (it then takes the two-statement
way). While a batch is being
settled the next one gathers, so a hot product is settled back to back with one row lock per batch instead of one
per purchase. A batch whose transaction fails fails every waiter in it with 503 and writes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hypercheckout.checkout.batch import decide
from hypercheckout.checkout.errors import (
    CheckoutError,
    DuplicateKey,
    outcome_unknown,
    overloaded,
    shutting_down,
    unavailable,
    unknown_product,
)
from hypercheckout.checkout.holds import hold_in_transaction
from hypercheckout.checkout.models import Hold, Order, PurchaseRequest
from hypercheckout.store import Store

log = logging.getLogger(__name__)


PURCHASE = "purchase"
HOLD = "hold"

# A batch this large means the product's buyers arrive faster than its batches settle: the replica is busy with
# them, and the next batch waits up to ``busy_window_ms`` (from its first buyer's arrival) instead of
# ``window_ms``. A batch's cost to the replica and to PostgreSQL (its round trip, the row lock held through the
# commit's flush) is shared by its buyers, so under load larger batches buy more purchases per second: three
# replicas at 64 connections sold about 5 % more at 8 ms than at 2 ms, and their p99 fell (load-tests/README,
# "Issue 28, sixth round"). Buyers who come one by one never make such a batch and keep the short window: at 8 ms
# for everyone, a lone buyer's median went from 4 to 11 ms.
BUSY_BATCH = 4


@dataclass(slots=True)
class _Waiter:
    request: PurchaseRequest
    answer: asyncio.Future[Any]  # an Order for a purchase, a Hold for a hold
    arrived: float  # event-loop time


@dataclass(slots=True)
class _ProductQueue:
    waiting: list[_Waiter] = field(default_factory=list)
    # Resolved to end the window early (the batch is full, or the strategy closing); None while not waiting.
    wake: asyncio.Future[None] | None = None
    task: asyncio.Task[None] | None = None


def _resolve(wake: asyncio.Future[None]) -> None:
    if not wake.done():
        wake.set_result(None)


class BatchedStrategy:
    name = "batched"

    def __init__(self, store: Store, *, replica: str, window_ms: float = 2.0, busy_window_ms: float | None = None,
                 max_batch: int = 64, max_queue: int = 512) -> None:
        self._store = store
        self._replica = replica
        self._window = window_ms / 1000
        # None: the same window busy or not. Never shorter than the window.
        self._busy_window = max(self._window, (window_ms if busy_window_ms is None else busy_window_ms) / 1000)
        self._max_batch = max_batch
        self._max_queue = max_queue  # buyers of one product waiting here at most; more are refused
        self.refused = 0  # purchases refused for a full queue, for /metrics
        self._queues: dict[tuple[int, str], _ProductQueue] = {}  # (product, purchase or hold) -> its queue
        # Products whose rules, as the last locked batch read them, had a per-user limit or a waiting room: their
        # batches go the two-statement way at once, instead of trying the plain statement first every time.
        self._not_plain: set[int] = set()
        self.plain_batches = 0  # batches settled by the one statement, for tests
        self._closing = False
        self.batch_sizes: Counter[int] = Counter()  # batch size -> batches settled; for metrics and tests

    async def purchase(self, request: PurchaseRequest) -> Order:
        order: Order = await self._enqueue(request, PURCHASE)
        return order

    async def hold(self, request: PurchaseRequest) -> Hold:
        """Holds are grouped as purchases are: concurrent holds of one product share one transaction (its own
        queue, beside the product's purchases)."""
        hold: Hold = await self._enqueue(request, HOLD)
        return hold

    async def _enqueue(self, request: PurchaseRequest, kind: str) -> Any:
        if self._closing:
            raise shutting_down()
        key = (request.product_id, kind)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _ProductQueue()
        if len(queue.waiting) >= self._max_queue:
            self.refused += 1
            raise overloaded()
        loop = asyncio.get_running_loop()
        waiter = _Waiter(request, loop.create_future(), loop.time())
        queue.waiting.append(waiter)
        if len(queue.waiting) >= self._max_batch and queue.wake is not None:
            _resolve(queue.wake)
        if queue.task is None:
            queue.task = asyncio.create_task(
                self._run(key, queue), name=f"batcher-product-{request.product_id}-{kind}",
            )
        return await waiter.answer

    async def _run(self, key: tuple[int, str], queue: _ProductQueue) -> None:
        """Settle batches of one product until nobody waits, then go away (no idle task per product ever seen)."""
        try:
            loop = asyncio.get_running_loop()
            window = self._window
            while queue.waiting:
                # The window counts from the oldest waiter's arrival: buyers who queued while the previous batch
                # was being settled have waited long enough, and go in the next transaction at once.
                remaining = queue.waiting[0].arrived + window - loop.time()
                if len(queue.waiting) < self._max_batch and remaining > 0 and not self._closing:
                    await self._gathering(queue, remaining)
                batch = queue.waiting[: self._max_batch]
                del queue.waiting[: self._max_batch]
                await self._settle(key, batch)
                window = self._busy_window if len(batch) >= BUSY_BATCH else self._window
        finally:
            # Only a cancelled task (a shutdown past its time limit) gets here with buyers still queued: they never
            # reached the database, and must not wait for a task that is gone.
            for waiter in queue.waiting:
                if not waiter.answer.done():
                    waiter.answer.set_exception(shutting_down())
            queue.waiting.clear()
            queue.task = None
            if self._queues.get(key) is queue:
                del self._queues[key]

    @staticmethod
    async def _gathering(queue: _ProductQueue, seconds: float) -> None:
        """Wait until the window closes, or until ``queue.wake`` is resolved first (the batch filled up, or the
        strategy is closing). A timer and a future: ``wait_for`` on an event made a task of the wait and cancelled it
        at every window's end, once per batch."""
        loop = asyncio.get_running_loop()
        wake = queue.wake = loop.create_future()
        timer = loop.call_later(seconds, _resolve, wake)
        try:
            await wake
        finally:
            timer.cancel()
            queue.wake = None

    async def _settle(self, key: tuple[int, str], batch: list[_Waiter]) -> None:
        product_id, kind = key
        outcomes: list[Any]
        try:
            if kind == HOLD:
                outcomes = await hold_in_transaction(self._store, product_id, [w.request for w in batch],
                                                     self._replica)
            else:
                outcomes = await self._settle_in_transaction(product_id, batch)
        except CheckoutError as exc:
            outcomes = [exc] * len(batch)
        except asyncio.CancelledError:
            # This task was cancelled while the batch was in the database, perhaps committing: say so, then stop.
            self._answer(batch, [outcome_unknown()] * len(batch))
            raise
        except Exception:
            log.exception("batch of %d %ss of product %d failed", len(batch), kind, product_id)
            outcomes = [unavailable()] * len(batch)
        self.batch_sizes[len(batch)] += 1
        self._answer(batch, outcomes)

    @staticmethod
    def _answer(batch: list[_Waiter], outcomes: list[Any]) -> None:
        for waiter, outcome in zip(batch, outcomes, strict=True):
            if waiter.answer.done():
                continue
            if isinstance(outcome, CheckoutError | DuplicateKey):
                waiter.answer.set_exception(outcome)
            else:
                waiter.answer.set_result(outcome)

    async def _settle_in_transaction(
        self, product_id: int, batch: list[_Waiter],
    ) -> list[Order | CheckoutError | DuplicateKey]:
        """Answers are only handed out after COMMIT returned: no waiter is told of an order that might roll back."""
        requests = [w.request for w in batch]
        if product_id not in self._not_plain and all(r.idempotency_key is None and not r.admitted for r in requests):
            plain = await self._store.settle_plain_batch(product_id, self._replica, [r.user_id for r in requests],
                                                         [r.quantity for r in requests])
            if plain is not None:
                self.plain_batches += 1
                return [
                    Order(id=order_id, user_id=r.user_id, product_id=product_id, quantity=r.quantity,
                          created_at=plain.now, remaining=plain.stock, replica=self._replica, held=plain.held)
                    for order_id, r in zip(plain.order_ids, requests, strict=True)
                ]
        async with self._store.transaction(explicit=True) as cur:  # BEGIN and COMMIT ride on the two statements
            locked = await Store.lock_for_batch(cur, product_id, len(requests))
            if locked is None:
                return [unknown_product(product_id)] * len(requests)
            if locked.per_user_limit is None and not locked.rules.waiting_room:
                self._not_plain.discard(product_id)
            else:
                self._not_plain.add(product_id)
            # Request i gets order id locked.order_ids[i] if it is granted; its key is claimed for that id.
            keyed = [i for i, r in enumerate(requests) if r.idempotency_key is not None]
            taken: set[int] = set()
            if keyed:
                claimed = await Store.claim_keys(
                    cur, [requests[i].idempotency_key or "" for i in keyed],
                    [requests[i].fingerprint for i in keyed], [locked.order_ids[i] for i in keyed],
                )
                taken = {i for i in keyed if requests[i].idempotency_key not in claimed}
            # The sale's rules against the transaction's time (the orders' created_at), passes, limits, stock.
            room = locked.rules.waiting_room
            decision = await decide(cur, product_id, requests, locked, skip=taken)
            granted = decision.granted
            if granted:
                await Store.settle_batch(
                    cur, product_id, self._replica,
                    order_ids=[locked.order_ids[i] for i in granted],
                    user_ids=[requests[i].user_id for i in granted],
                    quantities=[requests[i].quantity for i in granted],
                    # Claimed for a request that was refused: only orders are remembered.
                    released_keys=[requests[i].idempotency_key or "" for i in keyed
                                   if i not in taken and i not in granted],
                    room_generation=locked.room_generation if room else None,
                )
            # Nothing granted: no COMMIT was sent, so store.transaction rolls back, and the claimed keys go with it.
        outcomes: dict[int, Order | CheckoutError | DuplicateKey] = {
            i: DuplicateKey(requests[i].idempotency_key or "") for i in taken
        }
        outcomes.update(decision.refusals)
        for i in granted:
            request = requests[i]
            outcomes[i] = Order(
                id=locked.order_ids[i], user_id=request.user_id, product_id=product_id, quantity=request.quantity,
                created_at=locked.now, remaining=decision.allocation.stock_after, replica=self._replica,
                held=decision.held,
            )
        return [outcomes[i] for i in range(len(requests))]

    async def close(self) -> None:
        """Refuse new purchases and wait until every accepted one has its answer."""
        self._closing = True
        for queue in self._queues.values():
            if queue.wake is not None:
                _resolve(queue.wake)  # settle now instead of waiting out the window
        tasks = [q.task for q in self._queues.values() if q.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
