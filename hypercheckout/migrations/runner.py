"""The schema migration runner: the numbered SQL files of this package, each applied once, oldest first, under an
advisory lock (so replicas starting together apply each once), and recorded in ``schema_migrations``.

A migration runs in a transaction of its own: a failing one leaves nothing behind and is tried again next time.
One whose first line is ``-- hypercheckout: no-transaction`` runs statement by statement outside one — for what
PostgreSQL can only do there, ``CREATE INDEX CONCURRENTLY`` (an index built without blocking writes to a busy
table); it must be idempotent (``IF NOT EXISTS``), and an index an interrupted build left invalid is dropped
before it runs again.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg2

from hypercheckout.resources import resource_dir

if TYPE_CHECKING:
    import aiopg

    from hypercheckout.store import Store

SEED_PRODUCT_ID = 1
SEED_STOCK = 10_000

# Serialises migrations: three replicas starting at once would otherwise race to apply the same one.
MIGRATION_LOCK = 0x4843_4D49  # "HCMI"
MIGRATION_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
NO_TRANSACTION = "-- hypercheckout: no-transaction"
# A migration may take far longer than a request's statement (an index over every order): no pool timeout.
MIGRATION_STATEMENT_SECONDS = 24 * 3600.0
MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
# Read under the advisory lock: a replica that waited for another's migration sees it applied.
APPLIED_MIGRATIONS = "SELECT version FROM schema_migrations"
RECORD_MIGRATION = "INSERT INTO schema_migrations (version, name) VALUES (%(version)s, %(name)s)"
# Products selling through an open waiting room (the column exists from 0003_waiting_room.sql on). A new version may
# read the room's tickets and passes differently: an upgrade while a room is open drops every buyer waiting in it.
OPEN_ROOMS = "SELECT id FROM products WHERE waiting_room ORDER BY id"
WAITING_ROOMS_SINCE = 3
# Indexes a CREATE INDEX CONCURRENTLY left invalid when it was interrupted (PostgreSQL keeps them, unused).
INVALID_INDEXES = """
SELECT format('%I.%I', n.nspname, c.relname) FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT i.indisvalid AND n.nspname = current_schema()
"""

SEED = """
INSERT INTO products (id, name, stock, initial_stock)
VALUES (%(id)s, 'Flash-sale product', %(stock)s, %(stock)s)
ON CONFLICT (id) DO NOTHING;
-- The seed row took an explicit id: move the sequence past it so later products do not collide.
SELECT setval('products_id_seq', GREATEST((SELECT max(id) FROM products), 1));
"""


class MigrationError(RuntimeError):
    """A migration failed, or was not tried; its transaction was rolled back and it is not recorded."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def file(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"

    @property
    def transactional(self) -> bool:
        return not self.sql.startswith(NO_TRANSACTION)

    def statements(self) -> list[str]:
        """A no-transaction migration's statements, one by one (each ends a line with a semicolon)."""
        found = []
        for chunk in re.split(r";[ \t]*(?:\n|$)", self.sql):
            code = "\n".join(line for line in chunk.splitlines() if not line.lstrip().startswith("--")).strip()
            if code:
                found.append(code)
        return found


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """The numbered SQL files of ``directory`` (default: this package), by version."""
    folder = directory or resource_dir("migrations")
    found = []
    for path in folder.iterdir():
        match = MIGRATION_FILE.fullmatch(path.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a version in {folder}")
    return sorted(found, key=lambda m: m.version)


async def migrate(store: Store, *, seed_stock: int = SEED_STOCK, migrations: Sequence[Migration] | None = None,
                  force: bool = False) -> list[Migration]:
    """Apply the migrations this database has not had, oldest first (a failing one stops the rest). The first one
    also seeds product 1. Safe to run concurrently. Returns the migrations applied now. Refuses (MigrationError)
    while a product sells through an open waiting room, unless ``force``: a new version may not read the tickets
    and passes its buyers hold."""
    applied_now = []
    for migration in load_migrations() if migrations is None else migrations:
        if migration.transactional:
            async with store.transaction() as cur:
                await cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                if await _pending(cur, migration, force):
                    await _run(cur, migration, migration.sql)
                    if migration.version == 1:
                        # Seeded once, with the schema: a product the operator deleted later stays deleted.
                        await cur.execute(SEED, {"id": SEED_PRODUCT_ID, "stock": seed_stock})
                    await cur.execute(RECORD_MIGRATION, {"version": migration.version, "name": migration.name})
                    applied_now.append(migration)
            continue
        async with store.cursor() as cur:  # autocommit: each statement its own transaction
            await cur.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
            try:
                if await _pending(cur, migration, force):
                    await cur.execute(INVALID_INDEXES)
                    for (index,) in await cur.fetchall():
                        await _run(cur, migration, f"DROP INDEX CONCURRENTLY IF EXISTS {index}")
                    for statement in migration.statements():
                        await _run(cur, migration, statement)
                    await cur.execute(RECORD_MIGRATION, {"version": migration.version, "name": migration.name})
                    applied_now.append(migration)
            finally:
                await cur.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
    return applied_now


async def _pending(cur: aiopg.Cursor, migration: Migration, force: bool) -> bool:
    """Whether ``migration`` is still to apply (under the advisory lock); raises if it may not be now."""
    await cur.execute(MIGRATIONS_TABLE)
    await cur.execute(APPLIED_MIGRATIONS)
    applied = {row[0] for row in await cur.fetchall()}
    if migration.version in applied:
        return False
    if not force and max(applied, default=0) >= WAITING_ROOMS_SINCE:
        await cur.execute(OPEN_ROOMS)
        rooms = [row[0] for row in await cur.fetchall()]
        if rooms:
            raise MigrationError(_rooms_open(migration, rooms))
    return True


async def _run(cur: aiopg.Cursor, migration: Migration, statement: str) -> None:
    try:
        await cur.execute(statement, timeout=MIGRATION_STATEMENT_SECONDS)
    except psycopg2.Error as exc:
        raise MigrationError(f"migration {migration.file} failed: {exc}".strip()) from exc


def _rooms_open(migration: Migration, rooms: Sequence[int]) -> str:
    named = ", ".join(f"product {room}" for room in rooms[:10]) + (" …" if len(rooms) > 10 else "")
    return (f"not upgrading the schema ({migration.file} and later are pending) while a waiting room is open "
            f"({named}): the new version may not read the tickets and passes of the buyers in line, who would "
            "all lose their place. Close the rooms first (hypercheckout product update ID --no-waiting-room, or "
            "the dashboard), upgrade, open them again; or run `hypercheckout migrate --force` to upgrade anyway")
