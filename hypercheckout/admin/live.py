"""WebSocket /admin/live: pushes the dashboard snapshot to every open dashboard twice a second.

One broadcast task per process, running only while somebody watches, computes one snapshot per tick and sends it
to every socket — the cost does not grow with the number of dashboards.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

import tornado.websocket

from hypercheckout.admin.base import SESSION_DAYS, session_cookie
from hypercheckout.admin.snapshot import Snapshotter

log = logging.getLogger(__name__)

PUSH_INTERVAL = 0.5
# A dashboard that has not taken a snapshot for this long (its socket's buffer is full: a stalled tab, a dead
# network) is dropped; until then it simply misses pushes. Tornado's ping/pong (app settings) catches silent peers.
STALL_LIMIT = 10.0


@dataclass(slots=True)
class _Feed:
    pending: asyncio.Future[None] | None = None  # the last snapshot written to this socket, until it is sent
    since: float = 0.0  # loop time of that write


class LiveHub:
    """Never awaits a socket: each one has at most one snapshot on its way, so a slow dashboard costs memory for
    one message and the others' pace is the hub's own."""

    def __init__(self, snapshots: Snapshotter, interval: float = PUSH_INTERVAL,
                 stall_limit: float = STALL_LIMIT) -> None:
        self._snapshots = snapshots
        self._interval = interval
        self._stall_limit = stall_limit
        self._sockets: dict[Any, _Feed] = {}
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0  # sockets closed for being too slow, for tests and the log

    def join(self, socket: Any) -> None:
        self._sockets[socket] = _Feed()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._broadcast(), name="admin-live")

    def leave(self, socket: Any) -> None:
        self._sockets.pop(socket, None)

    async def close(self) -> None:
        for socket in list(self._sockets):
            socket.close(1001, "server shutting down")
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _broadcast(self) -> None:
        loop = asyncio.get_running_loop()
        while self._sockets:
            try:
                message = json.dumps(await self._snapshots.get(), default=str)
            except Exception:
                log.exception("dashboard snapshot failed")
                message = None
            now = loop.time()
            for socket, feed in list(self._sockets.items()):
                if feed.pending is not None and not feed.pending.done():
                    if now - feed.since > self._stall_limit:
                        self._drop(socket, now - feed.since)
                    continue  # still sending the previous snapshot: skip this one
                if message is None:
                    continue
                try:
                    feed.pending = socket.write_message(message)
                except tornado.websocket.WebSocketClosedError:
                    self._sockets.pop(socket, None)
                    continue
                feed.since = now
                feed.pending.add_done_callback(_consume)
            await asyncio.sleep(self._interval)

    def _drop(self, socket: Any, stalled: float) -> None:
        self._sockets.pop(socket, None)
        self.dropped += 1
        log.warning("dropping a dashboard that took no snapshot for %.0f s", stalled)
        socket.close(1008, "too slow to follow the live feed")  # Tornado aborts the stream 5 s later at most


def _consume(future: asyncio.Future[None]) -> None:
    """A write that failed because the socket closed needs no handling, but must not be reported as unretrieved."""
    if not future.cancelled():
        future.exception()


class LiveSocket(tornado.websocket.WebSocketHandler):
    route = "/admin/live"

    def prepare(self) -> None:
        # Refused before the upgrade: no session, no feed.
        settings = self.application.settings["services"].settings
        name, _ = session_cookie(settings)
        if not self.get_signed_cookie(name, max_age_days=SESSION_DAYS):
            raise tornado.web.HTTPError(403)
        # With public origins configured (HC_PUBLIC_URL), only pages of those may open the feed. Tornado's own
        # check, which runs after this, accepts any origin naming the Host the request came with — which a DNS-
        # rebinding page controls. Browsers always send Origin on a WebSocket handshake.
        origin = self.request.headers.get("Origin")
        if settings.public_urls and origin is not None and origin.lower().rstrip("/") not in settings.public_urls:
            raise tornado.web.HTTPError(403)

    def check_origin(self, origin: str) -> bool:
        """Cross-origin by Tornado's rule (another host than the request's): the configured public origins."""
        return origin.lower().rstrip("/") in self.application.settings["services"].settings.public_urls

    def open(self) -> None:
        self.application.settings["services"].live.join(self)

    def on_close(self) -> None:
        self.application.settings["services"].live.leave(self)

    def on_message(self, message: str | bytes) -> None:
        pass  # the feed is one-way
