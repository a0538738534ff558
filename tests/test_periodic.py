"""The one background-chore loop every sweeper, janitor, flush and reconciler runs on."""

from __future__ import annotations

import asyncio
import logging

import pytest

from hypercheckout.periodic import Every


def test_a_chore_that_fails_unexpectedly_is_logged_and_runs_again_until_closed(
        caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    async def chore() -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise ValueError("a bug in the chore")

    async def scenario() -> None:
        every = Every("test chore", 0.01, chore)
        every.start()
        for _ in range(1000):  # until it ran again after its failure (10 s at most)
            if len(calls) >= 3:
                break
            await asyncio.sleep(0.01)
        await every.close()
        ran = len(calls)
        await asyncio.sleep(0.05)
        assert len(calls) == ran  # closed: it runs no more
        await every.close()  # closing twice is harmless

    with caplog.at_level(logging.ERROR, logger="hypercheckout.periodic"):
        asyncio.run(scenario())
    assert len(calls) >= 3
    [failure] = [r for r in caplog.records if r.name == "hypercheckout.periodic"]
    assert "test chore failed" in failure.getMessage() and failure.exc_info[0] is ValueError


def test_closing_stops_a_chore_that_swallowed_its_cancellation() -> None:
    """Python 3.11's ``wait_for`` inside aiopg can return a query's answer instead of raising the cancellation that
    came with it: the loop must not go on to sleep another interval (an hour here) while the replica stops."""
    started = asyncio.Event()

    async def chore() -> None:
        started.set()
        try:
            await asyncio.sleep(0.2)
        except asyncio.CancelledError:
            pass  # swallowed, as wait_for does

    async def scenario() -> None:
        every = Every("test chore", 0.01, chore)
        every.start()
        await started.wait()
        every.interval = 3600  # the next sleep would be an hour
        await asyncio.wait_for(every.close(), 30)

    asyncio.run(scenario())
