"""Sold-out fast path: once a replica has seen a product at 0, it answers 409 without asking PostgreSQL.

The flag is a cache of PostgreSQL, so it must not outlive a restock. Two mechanisms clear it:

* **Redis pub/sub** (``{prefix}product-changed``): `reset` and every product change publish the product id, every
  replica clears the flag within milliseconds (and tells its other listeners, the sale schedule among them).
  Fast, but a message sent while a replica's subscription is down is lost.
* **PostgreSQL recheck**: while any product is flagged, each replica asks PostgreSQL every ``recheck`` seconds
  (one small query for all flagged products) whether it has stock again. This is the guarantee — it holds with
  Redis down and for stock changed by hand in SQL — and bounds a stale flag to ``recheck`` (0.5 s by default).

A replica whose subscription reconnects drops every flag, since it may have missed messages meanwhile.

**Held out** is the sibling of sold out: none available, but units held by checkouts that may come back. A replica
told so by PostgreSQL refuses the product's next requests without an Idempotency-Key from memory (409
``units_held``) for ``recheck`` seconds: units a release or a lapsed hold gives back reach buyers within that, with
no message needed (a release clears it at once on the replica that released). Any change of the product clears it,
as it clears the sold-out flag.

A replica that flags a product also says so on the channel (``sold-out:<id>``), and the others flag it too: a
replica that has sold nothing of it yet then refuses at once as well, and every waiting room's tickets turn
``sold_out`` on every replica together. Such a flag is held to the same PostgreSQL recheck as the replica's own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import redis.exceptions

from hypercheckout.checkout.errors import CheckoutError, units_held
from hypercheckout.redisclient import CLIENT_FAULTS, RedisClient
from hypercheckout.store import Store

log = logging.getLogger(__name__)

ALL_PRODUCTS = "*"
SOLD_OUT = "sold-out:"


def channel_name(prefix: str) -> str:
    return f"{prefix}product-changed"


async def announce_product_changed(client: RedisClient, prefix: str, product_id: int | None = None) -> bool:
    """Tell every replica that a product changed — stock, window, limits, or deleted (None: every product). False
    if Redis is unreachable; the replicas' PostgreSQL re-reads then catch up within ``HC_SOLDOUT_RECHECK_MS`` (flags)
    and ``HC_SCHEDULE_REFRESH_MS`` (sale windows)."""
    try:
        await client.publish(channel_name(prefix), ALL_PRODUCTS if product_id is None else str(product_id))
    except (TimeoutError, redis.exceptions.RedisError, OSError, *CLIENT_FAULTS):
        return False
    return True


ChangeListener = Callable[[int | None], None]  # told a product id, or None for "any product may have changed"


class SoldOutFlags:
    """The flags, and the one subscription to product changes: ``listeners`` hear every change it receives, and
    ``None`` after each (re)subscription, since changes may have been missed while it was down."""

    def __init__(self, store: Store, client: RedisClient, *, prefix: str, recheck_seconds: float) -> None:
        self.listeners: list[ChangeListener] = []
        self._store = store
        self._redis = client
        self._channel = channel_name(prefix)
        self._recheck = recheck_seconds
        self._flagged: set[int] = set()
        # Held out: product -> (until, units held, when the next hold runs out), on the event loop's clock.
        self._held_out: dict[int, tuple[float, int, float]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._closed = asyncio.Event()  # wakes the listener's retry pause at shutdown
        self._announcing: set[asyncio.Task[bool]] = set()
        self.subscribed = asyncio.Event()

    def is_sold_out(self, product_id: int) -> bool:
        return product_id in self._flagged

    def mark(self, product_id: int) -> None:
        """This replica saw the product at 0: flag it here, and tell the other replicas (once per flagging)."""
        if product_id in self._flagged:
            return
        self._flagged.add(product_id)
        try:
            task = asyncio.get_running_loop().create_task(self._announce_sold_out(product_id))
        except RuntimeError:
            return  # no loop (a test calling in directly): nobody to tell
        self._announcing.add(task)
        task.add_done_callback(self._announcing.discard)

    async def _announce_sold_out(self, product_id: int) -> bool:
        try:
            await self._redis.publish(self._channel, f"{SOLD_OUT}{product_id}")
        except (TimeoutError, redis.exceptions.RedisError, OSError, *CLIENT_FAULTS):
            return False  # the others find out by selling, as without the message
        return True

    def clear(self, product_id: int | None = None) -> None:
        if product_id is None:
            self._flagged.clear()
            self._held_out.clear()
        else:
            self._flagged.discard(product_id)
            self._held_out.pop(product_id, None)

    def mark_held_out(self, product_id: int, held: int, retry_after: float) -> None:
        """PostgreSQL said none is available and ``held`` units are held, the next hold running out in about
        ``retry_after`` seconds."""
        now = asyncio.get_running_loop().time()
        self._held_out[product_id] = (now + self._recheck, held, now + retry_after)

    def held_out(self, product_id: int) -> CheckoutError | None:
        """The refusal to give from memory while the product is held out, or None."""
        found = self._held_out.get(product_id)
        if found is None:
            return None
        until, held, expiry = found
        now = asyncio.get_running_loop().time()
        if now >= until:
            del self._held_out[product_id]
            return None
        return units_held(product_id, held, expiry - now)

    @property
    def flagged(self) -> frozenset[int]:
        return frozenset(self._flagged)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._listen(), name="soldout-listen"),
            asyncio.create_task(self._recheck_loop(), name="soldout-recheck"),
        ]

    async def close(self) -> None:
        # The listener is not cancelled mid-read (redis-py can swallow a cancellation there, or turn it into a
        # ConnectionError that looks like an outage): it sees the flag within one poll and returns by itself.
        self._closing = True
        self._closed.set()
        listener, recheck = self._tasks or (None, None)
        if recheck is not None:
            recheck.cancel()
        pending = [t for t in (listener, recheck) if t is not None]
        if pending:
            _, still_running = await asyncio.wait(pending, timeout=2.0)
            for task in still_running:
                task.cancel()
        self._tasks = []
        for task in list(self._announcing):
            task.cancel()

    def _tell(self, product_id: int | None) -> None:
        for listener in self.listeners:
            try:
                listener(product_id)
            except Exception:
                log.exception("a product-change listener failed")

    async def _recheck_loop(self) -> None:
        while True:
            await asyncio.sleep(self._recheck)
            if not self._flagged:
                continue
            try:
                for product_id in await self._store.restocked(sorted(self._flagged)):
                    self._flagged.discard(product_id)
            except CheckoutError:
                pass  # PostgreSQL is down: purchases answer 503 anyway; try again next tick

    async def _listen(self) -> None:
        failures = 0
        while not self._closing:
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self._channel)
                    self._flagged.clear()  # messages may have been missed while not subscribed
                    self._tell(None)
                    self.subscribed.set()
                    failures = 0
                    while not self._closing:
                        # An explicit timeout, not the client's short socket timeout, bounds each wait.
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
                        if message is None:
                            continue
                        data = message.get("data")
                        if isinstance(data, bytes):
                            data = data.decode()
                        if data == ALL_PRODUCTS:
                            self.clear()
                            self._tell(None)
                        elif isinstance(data, str) and data.startswith(SOLD_OUT) and data[len(SOLD_OUT):].isdigit():
                            self._flagged.add(int(data[len(SOLD_OUT):]))
                        elif isinstance(data, str) and data.isdigit():
                            self.clear(int(data))
                            self._tell(int(data))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any Redis trouble: the PostgreSQL recheck keeps flags honest meanwhile
                self.subscribed.clear()
                if self._closing:
                    return
                if failures == 0:
                    log.warning("sold-out subscription lost (%s); retrying every second", exc)
                failures += 1
                try:
                    await asyncio.wait_for(self._closed.wait(), 1.0)
                except TimeoutError:
                    pass
