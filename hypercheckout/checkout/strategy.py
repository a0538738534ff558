"""The interface every purchase strategy implements, and the choice of one by name (``HC_STRATEGY``)."""

from __future__ import annotations

from typing import Protocol

from hypercheckout.checkout.models import Hold, Order, PurchaseRequest
from hypercheckout.store import Store


class Strategy(Protocol):
    """Sells ``request.quantity`` units or raises ``CheckoutError`` (404, 409 or 503) having written nothing."""

    name: str

    async def purchase(self, request: PurchaseRequest) -> Order: ...

    async def hold(self, request: PurchaseRequest) -> Hold:
        """Holds ``request.quantity`` units (a checkout) or raises ``CheckoutError`` (or ``DuplicateKey``) having
        written nothing."""
        ...

    async def close(self) -> None:
        """Finish every purchase already accepted, then release resources."""
        ...


def make_strategy(name: str, store: Store, *, replica: str, batch_window_ms: float = 2.0,
                  batch_busy_window_ms: float | None = None, batch_max: int = 64,
                  batch_queue_max: int = 512) -> Strategy:
    # Imported here so each strategy module stays independent of the others.
    if name == "pessimistic":
        from hypercheckout.checkout.pessimistic import PessimisticStrategy

        return PessimisticStrategy(store, replica=replica)
    if name == "atomic":
        from hypercheckout.checkout.atomic import AtomicStrategy

        return AtomicStrategy(store, replica=replica)
    if name == "batched":
        from hypercheckout.checkout.batched import BatchedStrategy

        return BatchedStrategy(store, replica=replica, window_ms=batch_window_ms,
                               busy_window_ms=batch_busy_window_ms, max_batch=batch_max, max_queue=batch_queue_max)
    raise ValueError(f"unknown strategy {name!r}")
