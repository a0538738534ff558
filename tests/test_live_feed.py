"""The live feed's broadcast, with sockets that read at once and one that never reads: a stalled dashboard must
neither slow the others down nor hold memory for ever."""

from __future__ import annotations

import asyncio
from typing import Any

from hypercheckout.admin.live import LiveHub


class Snapshots:
    async def get(self) -> dict[str, Any]:
        return {"products": []}


class Socket:
    """A dashboard's socket: a healthy one's writes complete at once; a stalled one's never do (its buffer is
    full because the peer does not read)."""

    def __init__(self, *, stalled: bool = False) -> None:
        self.stalled = stalled
        self.sent = 0
        self.close_code: int | None = None

    def write_message(self, message: str) -> asyncio.Future[None]:
        future = asyncio.get_running_loop().create_future()
        self.sent += 1
        if not self.stalled:
            future.set_result(None)
        return future

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        self.close_code = code


async def watch(hub: LiveHub, *sockets: Socket, seconds: float) -> None:
    for socket in sockets:
        hub.join(socket)
    await asyncio.sleep(seconds)


def test_a_stalled_dashboard_does_not_hold_up_the_others() -> None:
    async def scenario() -> None:
        hub = LiveHub(Snapshots(), interval=0.01)
        stalled, healthy = Socket(stalled=True), Socket()
        await watch(hub, stalled, healthy, seconds=0.5)
        await hub.close()
        assert healthy.sent >= 20  # about one push per interval
        assert stalled.sent == 1  # one snapshot buffered for it, never a growing queue

    asyncio.run(scenario())


def test_a_dashboard_stalled_past_the_limit_is_dropped() -> None:
    async def scenario() -> None:
        hub = LiveHub(Snapshots(), interval=0.01, stall_limit=0.2)
        stalled, healthy = Socket(stalled=True), Socket()
        await watch(hub, stalled, healthy, seconds=0.5)
        assert stalled.close_code == 1008 and hub.dropped == 1
        sent = healthy.sent
        await asyncio.sleep(0.1)
        assert healthy.sent > sent and healthy.close_code is None  # the others go on
        await hub.close()

    asyncio.run(scenario())
