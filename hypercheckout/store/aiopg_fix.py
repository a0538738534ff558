"""A narrow correction of aiopg 1.4's error path: a descriptor it forgets leaves no writer behind in the loop.

When ``Connection._ready`` finds its connection broken and the descriptor already closed by libpq (``select``
raises EBADF), aiopg removes its reader and forgets the descriptor (``_fileno = None``); the writer it registered
while libpq was sending is then skipped by the ``if self._fileno is not None`` guard and stays registered on a
number the process no longer owns.

Under uvloop that leftover is fatal. A refused connection attempt (PostgreSQL restarting) ends in EPOLLERR, on which
uvloop closes the descriptor's poll handle but keeps it in its table until the last reader or writer is removed —
which, with the writer forgotten, never happens. The next socket given that number (a buyer's connection accepted
by Tornado, a new pool connection) cannot be registered: "unable to perform operation on <UVPoll closed=True>; the
handler is closed", and the replica drops it. asyncio's own loop has the same leftover, but its selector unregisters
the stale key on the first error and heals. ``tests/test_store_pool.py`` builds that state on demand (a refused
connect, then the number reused) under both loops.

The correction wraps ``_ready``: when a call forgot the descriptor while a writer was registered on it, the writer
is removed from the loop under that number, in the same callback, before anything else can be given the number.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any

from aiopg.connection import Connection

_original_ready = Connection._ready


def _ready(weak_self: weakref.ref[Any]) -> None:
    self = weak_self()
    if self is None:
        return
    fileno, writing = self._fileno, self._writing
    _original_ready(weak_self)
    if writing and fileno is not None and self._fileno is None:
        # RuntimeError: a loop already closed at shutdown; OSError: a selector that could not unregister a
        # descriptor already closed (asyncio's ignores that itself).
        with contextlib.suppress(OSError, RuntimeError):
            self._loop.remove_writer(fileno)


def apply() -> None:
    """Install the correction (idempotent); store/pool.py applies it on import, before any connection exists."""
    if Connection._ready is not _ready:
        Connection._ready = staticmethod(_ready)  # type: ignore[method-assign]
