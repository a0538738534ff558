"""Statements PostgreSQL parses and plans once per connection (PREPARE), then only executes (EXECUTE).

A plain batch's statement (``SETTLE_PLAIN_BATCH``) cost PostgreSQL's backend 455 µs of CPU per batch of eight sent
as text, and 272 µs prepared (``load-tests/prepared_cost.py``: two rounds of 3,000 batches each way on one
connection, the backend's time from /proc): parsing, analysing and planning it were 40 % of what it cost.
psycopg2 speaks only the simple query protocol, so such a statement is prepared with PREPARE the first time a
connection runs it, in a round trip of its own, and is run with EXECUTE from then on.

PREPARE is not transactional (a transaction rolled back keeps what it prepared), so what a connection has prepared
lasts as long as the connection: each statement remembers the connections it was prepared on, weakly, and a new
connection (a restarted server, another host after a failover) prepares it again. The two errors that say a
connection's statement is no longer usable — gone, or planned for columns whose types a migration changed — close
that connection, so that the next one prepares it afresh, and are answered 503: the statement was not run.
"""

from __future__ import annotations

import logging
import re
import weakref
from typing import Any

import aiopg
import psycopg2.errors

from hypercheckout.checkout.errors import unavailable

log = logging.getLogger(__name__)

_PLACEHOLDER = re.compile(r"%\((\w+)\)s")
# Not run, and never will be on this connection: its prepared statement is gone, or its plan's result types changed.
STALE = (psycopg2.errors.InvalidSqlStatementName, psycopg2.errors.FeatureNotSupported)


class Prepared:
    """``body`` with ``%(name)s`` placeholders, prepared with ``types`` (name → SQL type, in the order of the
    statement's parameters). ``before`` and ``after`` ride in the same round trip as the EXECUTE (``BEGIN;``,
    ``COMMIT;``)."""

    def __init__(self, name: str, body: str, types: dict[str, str], *, before: str = "", after: str = "") -> None:
        order = list(types)
        unknown = set(_PLACEHOLDER.findall(body)) - set(order)
        if unknown:
            raise ValueError(f"{name}: no type for {sorted(unknown)}")
        self.name = name
        self.prepare_sql = f"PREPARE {name} ({', '.join(types.values())}) AS " + _PLACEHOLDER.sub(
            lambda match: f"${order.index(match.group(1)) + 1}", body)
        arguments = ", ".join(f"%({parameter})s" for parameter in order)
        self.execute_sql = f"{before} EXECUTE {name} ({arguments}); {after}".strip()
        self._prepared_on: weakref.WeakSet[aiopg.Connection] = weakref.WeakSet()

    async def ready(self, cur: aiopg.Cursor) -> None:
        """Prepare the statement on ``cur``'s connection unless it already is. Inside a transaction too: PREPARE
        does not take part in it."""
        conn = cur.connection
        if conn not in self._prepared_on:
            await cur.execute(self.prepare_sql)
            self._prepared_on.add(conn)

    async def run(self, cur: aiopg.Cursor, params: dict[str, Any]) -> None:
        """Execute on ``cur``, whose connection it was prepared on (``ready``)."""
        try:
            await cur.execute(self.execute_sql, params)
        except STALE as exc:
            log.warning("PostgreSQL refused the prepared statement %s (%s): its connection is closed, and the next "
                        "one prepares it again", self.name, str(exc).strip())
            self._prepared_on.discard(cur.connection)
            cur.connection.close()
            raise unavailable() from exc  # it was not run: nothing was done


async def execute(cur: aiopg.Cursor, statement: str | Prepared, params: dict[str, Any] | None = None) -> None:
    """Run ``statement`` on ``cur``: text as it is, a ``Prepared`` one prepared on its connection first if need be."""
    if isinstance(statement, str):
        await cur.execute(statement, params)
        return
    await statement.ready(cur)
    await statement.run(cur, params or {})
