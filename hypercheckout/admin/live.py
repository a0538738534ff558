"""WebSocket /admin/live: pushes the dashboard snapshot to every open dashboard twice a second.

One broadcast task per process, running only while somebody watches, computes one snapshot per tick and sends it
to every socket — the cost does not grow with the number of dashboards.
"""

from __future__ import annotations

import asyncio
import json
import logging

import tornado.websocket

from hypercheckout.admin.base import SESSION_COOKIE, SESSION_DAYS
from hypercheckout.admin.snapshot import Snapshotter

log = logging.getLogger(__name__)

PUSH_INTERVAL = 0.5


class LiveHub:
    def __init__(self, snapshots: Snapshotter, interval: float = PUSH_INTERVAL) -> None:
        self._snapshots = snapshots
        self._interval = interval
        self._sockets: set[LiveSocket] = set()
        self._task: asyncio.Task[None] | None = None

    def join(self, socket: LiveSocket) -> None:
        self._sockets.add(socket)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._broadcast(), name="admin-live")

    def leave(self, socket: LiveSocket) -> None:
        self._sockets.discard(socket)

    async def close(self) -> None:
        for socket in list(self._sockets):
            socket.close(1001, "server shutting down")
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _broadcast(self) -> None:
        while self._sockets:
            try:
                message = json.dumps(await self._snapshots.get(), default=str)
            except Exception:
                log.exception("dashboard snapshot failed")
                message = None
            for socket in list(self._sockets):
                if message is not None:
                    try:
                        await socket.write_message(message)
                    except tornado.websocket.WebSocketClosedError:
                        self._sockets.discard(socket)
            await asyncio.sleep(self._interval)


class LiveSocket(tornado.websocket.WebSocketHandler):
    route = "/admin/live"

    def prepare(self) -> None:
        # Refused before the upgrade: no session, no feed. Tornado's check_origin (kept) refuses other origins.
        if not self.get_signed_cookie(SESSION_COOKIE, max_age_days=SESSION_DAYS):
            raise tornado.web.HTTPError(403)

    def open(self) -> None:
        self.application.settings["services"].live.join(self)

    def on_close(self) -> None:
        self.application.settings["services"].live.leave(self)

    def on_message(self, message: str | bytes) -> None:
        pass  # the feed is one-way
