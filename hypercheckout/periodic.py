"""A replica's background chores: a coroutine run every so many seconds until the replica stops.

The hold sweeper, the idempotency-key janitor, the hit counter's flush and the payment reconciler each had their own
copy of this start / sleep / close loop; this is the one copy.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Every:
    """Calls ``chore`` every ``interval`` seconds (the first time one interval after ``start``) until ``close``;
    with ``wake``, also as soon as that event is set (the chore clears it).

    A chore handles the failures it expects (PostgreSQL or Redis down: next time) itself; anything else it raises is
    logged with its traceback and the chore runs again at the next interval, so one bug does not silently end a
    replica's sweeping for good.
    """

    def __init__(self, name: str, interval: float, chore: Callable[[], Awaitable[object]], *,
                 wake: asyncio.Event | None = None) -> None:
        self.name = name
        self.interval = interval
        self._chore = chore
        self._wake = wake
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        self._closing = False
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def close(self) -> None:
        """Stop; a chore running now is cancelled (each chore's work is one transaction or one call, all or none).

        Cancelling alone is not enough on Python 3.11: its ``wait_for``, inside aiopg's queries, returns the result
        instead of raising when a cancellation arrives with it, and the loop would sleep out another interval
        while the replica's stop waits. ``_closing`` ends the loop once the chore returns."""
        if self._task is not None:
            self._closing = True
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while not self._closing:
            await self._wait()
            if self._closing:
                return
            try:
                await self._chore()
            except Exception:
                log.exception("%s failed; again in %.0f s", self.name, self.interval)

    async def _wait(self) -> None:
        if self._wake is None:
            await asyncio.sleep(self.interval)
            return
        try:
            # Not wait_for, which on Python 3.11 loses a cancellation that comes with the event.
            async with asyncio.timeout(self.interval):
                await self._wake.wait()
        except TimeoutError:
            pass
