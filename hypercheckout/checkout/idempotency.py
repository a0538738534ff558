"""Idempotency-Key: what a valid key looks like, and the job that forgets keys after their time."""

from __future__ import annotations

import logging
import re

from hypercheckout.checkout.errors import CheckoutError, invalid_request
from hypercheckout.periodic import Every
from hypercheckout.store import Store

log = logging.getLogger(__name__)

KEY = re.compile(r"[\x20-\x7e]{1,255}")  # printable ASCII, as the API promises


def parse_key(header: str | None) -> str | None:
    """The Idempotency-Key header's value, None when absent, 400 when it is not 1-255 printable ASCII characters."""
    if header is None:
        return None
    if not KEY.fullmatch(header):
        raise invalid_request("Idempotency-Key must be 1 to 255 printable ASCII characters")
    return header


class KeyJanitor:
    """Deletes keys older than ``ttl`` seconds every ``interval`` seconds (every replica does; deleting twice is
    harmless). Their orders stay; only the promise to replay them ends."""

    def __init__(self, store: Store, *, ttl: float, interval: float) -> None:
        self._store = store
        self._ttl = ttl
        self._every = Every("idempotency-key janitor", interval, self._chore)
        self.expired = 0

    def start(self) -> None:
        self._every.start()

    async def close(self) -> None:
        await self._every.close()

    async def sweep(self) -> int:
        removed = await self._store.expire_keys(self._ttl)
        self.expired += removed
        return removed

    async def _chore(self) -> None:
        try:
            removed = await self.sweep()
        except CheckoutError:
            return  # PostgreSQL is down; next time
        if removed:
            log.info("forgot %d idempotency key(s) older than %.0f h", removed, self._ttl / 3600)
