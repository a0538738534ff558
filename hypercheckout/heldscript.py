"""A Lua script called on one Redis connection held for it, the command packed by hiredis.

redis-py's own path for a script call (the client's command, its pool, retries, events and its encoder for every
argument) cost 189 µs of CPU for a limiter call of one attempt here; sent and read on a connection held for it,
89 µs (in process, uvloop, 10,000 calls each; issue 28). The limiter makes one call at a time on one server
(limiter.py), so one connection, taken from the client's pool once and kept, is all it needs; it stays the
pool's, so closing the client closes it. redis-py's connection still does what is hard: connecting, TLS, AUTH and
SELECT from the URL, reconnecting after a failure, and timing out a read.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoScriptError


class HeldConnectionScript:
    """Called as redis-py's ``Script`` is (``await script(keys=..., args=...)``), one call at a time: a second
    call waits for the first to be answered, as two calls on one connection must."""

    def __init__(self, client: aioredis.Redis, source: str) -> None:
        self._pool = client.connection_pool
        self._source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self._connection: AbstractConnection | None = None
        self._turn = asyncio.Lock()

    async def __call__(self, *, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        async with self._turn:
            if self._connection is None:
                self._connection = await self._pool.get_connection()
            try:
                return await self._command(("EVALSHA", self.sha, len(keys), *keys, *args))
            except NoScriptError:
                # Redis restarted (or flushed its scripts) since: EVAL runs it and caches it again.
                return await self._command(("EVAL", self._source, len(keys), *keys, *args))

    async def _command(self, command: tuple[str | int, ...]) -> Any:
        assert self._connection is not None
        # Never a health check: a PING before each call would double its round trips. A connection Redis closed
        # fails this call (the limiter fails open) and is connected again for the next.
        await self._connection.send_packed_command(hiredis.pack_command(command), check_health=False)
        return await self._connection.read_response()
