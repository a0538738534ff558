"""Versioned schema migrations: numbered SQL files applied once each, in a transaction, recorded, under the advisory
lock — and a database made before migrations existed upgrades with every row kept."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hypercheckout.migrations.runner import MigrationError, load_migrations
from hypercheckout.processes import free_port
from hypercheckout.settings import Settings
from hypercheckout.store import Store
from tests.conftest import admin_execute, with_database
from tests.helpers import run_cli, settings_env, sql
from tests.locks import open_transaction, wait_for_lock_waiters

# The schema as the code before versioned migrations created it (and re-ran at every start), word for word.
PREVIOUS_SCHEMA = (Path(__file__).parent / "data" / "schema-before-migrations.sql").read_text()
PREVIOUS_SEED = """
INSERT INTO products (id, name, stock, initial_stock) VALUES (1, 'Flash-sale product', 10000, 10000);
SELECT setval('products_id_seq', 1);
"""


@pytest.fixture
def empty_database(pg_server_url: str, redis_prefix: str):  # type: ignore[no-untyped-def]
    name = f"hc_migr_{redis_prefix.strip(':').replace('-', '_')}"
    admin_execute(pg_server_url, f'CREATE DATABASE "{name}"')
    yield with_database(pg_server_url, name)
    admin_execute(pg_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def migrate(url: str, **kwargs) -> list[str]:  # type: ignore[no-untyped-def]
    async def run() -> list[str]:
        store = await Store.connect(url, size=1, timeout=10)
        try:
            return [m.file for m in await store.migrate(**kwargs)]
        finally:
            await store.close()

    return asyncio.run(run())


def test_a_fresh_database_gets_every_migration_once_and_the_seed(empty_database: str) -> None:
    every = [m.file for m in load_migrations()]
    assert every[0] == "0001_initial.sql"
    assert migrate(empty_database) == every
    assert sql(empty_database, "SELECT version, name FROM schema_migrations ORDER BY version") == [
        (m.version, m.name) for m in load_migrations()]
    assert sql(empty_database, "SELECT id, stock FROM products") == [(1, 10_000)]
    assert migrate(empty_database) == []  # nothing twice
    # The seed comes with the schema, once: a product 1 the operator deleted is not brought back by a restart.
    sql(empty_database, "DELETE FROM products WHERE id = 1")
    assert migrate(empty_database) == []
    assert sql(empty_database, "SELECT count(*) FROM products") == [(0,)]


def test_a_database_made_before_migrations_upgrades_with_every_row_kept(empty_database: str) -> None:
    sql(empty_database, PREVIOUS_SCHEMA)
    sql(empty_database, PREVIOUS_SEED)
    sql(empty_database, "UPDATE products SET stock = 9997 WHERE id = 1")
    sql(empty_database, "INSERT INTO orders (user_id, product_id, quantity, replica) VALUES (5, 1, 2, 'old'), "
                        "(6, 1, 1, 'old')")
    sql(empty_database, "INSERT INTO idempotency_keys (key, fingerprint, order_id) "
                        "SELECT 'k-' || id, '5:1:2', id FROM orders WHERE user_id = 5")
    columns = {table: ", ".join(name for (name,) in sql(
        empty_database, "SELECT column_name FROM information_schema.columns WHERE table_name = %s "
                        "ORDER BY ordinal_position", (table,)))
               for table in ("products", "orders", "idempotency_keys")}
    before = {table: sql(empty_database, f"SELECT {names} FROM {table} ORDER BY 1") for table, names in columns.items()}
    assert migrate(empty_database) == [m.file for m in load_migrations()]
    for table, rows in before.items():
        assert sql(empty_database, f"SELECT {columns[table]} FROM {table} ORDER BY 1") == rows, table
    # The old product is on sale now, as it was: no window, no per-order maximum of its own.
    assert sql(empty_database, "SELECT starts_at, ends_at, max_per_order FROM products") == [(None, None, None)]
    # New orders continue the old sequence.
    sql(empty_database, "INSERT INTO orders (user_id, product_id, quantity, replica) VALUES (7, 1, 1, 'new')")
    assert sql(empty_database, "SELECT count(DISTINCT id) FROM orders") == [(3,)]


def test_a_failing_migration_leaves_nothing_and_is_retried_next_time(empty_database: str, tmp_path: Path) -> None:
    (tmp_path / "0001_initial.sql").write_text(load_migrations()[0].sql)
    (tmp_path / "0002_extras.sql").write_text(
        "CREATE TABLE extras (id integer); ALTER TABLE products ADD COLUMN extra integer; SELECT 1 / 0;")
    with pytest.raises(MigrationError, match=r"0002_extras\.sql failed: division by zero"):
        migrate(empty_database, migrations=load_migrations(tmp_path))
    assert sql(empty_database, "SELECT version FROM schema_migrations") == [(1,)]
    assert sql(empty_database, "SELECT to_regclass('extras')") == [(None,)]  # rolled back whole
    (tmp_path / "0002_extras.sql").write_text("CREATE TABLE extras (id integer);")
    assert migrate(empty_database, migrations=load_migrations(tmp_path)) == ["0002_extras.sql"]
    assert sql(empty_database, "SELECT version FROM schema_migrations ORDER BY 1") == [(1,), (2,)]


def test_the_cli_says_what_it_applied_and_a_failure_in_one_line(empty_database: str, settings: Settings) -> None:
    env = {**settings_env(settings), "HC_DATABASE_URL": empty_database}
    first = run_cli("migrate", env=env)
    assert first.returncode == 0, first.stderr
    assert "applied 0001_initial.sql" in first.stdout
    again = run_cli("migrate", env=env)
    assert again.stdout.strip().endswith("(up to date)")
    # The initial migration is idempotent: run again over its own schema (its record lost), it passes.
    sql(empty_database, "DELETE FROM schema_migrations")
    assert run_cli("migrate", env=env).returncode == 0


def test_replicas_creating_the_database_at_once_all_start(pg_server_url: str, redis_prefix: str) -> None:
    """Two `serve` processes on a fresh server race to create the database: PostgreSQL tells the loser either
    "already exists" or, when both checks passed at once, a duplicate of pg_database's name index. Neither may
    crash; exactly one created it."""
    from hypercheckout.store import ensure_database

    for attempt in range(5):
        name = f"hc_race_{redis_prefix.strip(':').replace('-', '_')}_{attempt}"
        url = with_database(pg_server_url, name)

        async def race(url: str = url) -> list[bool]:
            return list(await asyncio.gather(*(ensure_database(url) for _ in range(6))))

        try:
            created = asyncio.run(race())
            assert created.count(True) == 1, created
        finally:
            admin_execute(pg_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_an_upgrade_is_refused_while_a_waiting_room_is_open_unless_forced(empty_database: str,
                                                                         settings: Settings) -> None:
    """Issue 45, item 5: an upgrade that changes the waiting room's tokens drops every buyer waiting in an open
    room (their tickets and passes no longer read). A database with pending migrations and an open room is not
    migrated — by `hypercheckout migrate`, nor by a replica starting — and the message says which rooms and what
    to do; `--force` migrates anyway, and with the rooms closed it just migrates."""
    every = load_migrations()
    assert migrate(empty_database, migrations=every[:-1]) == [m.file for m in every[:-1]]
    room = sql(empty_database, "INSERT INTO products (name, stock, initial_stock, waiting_room, admission_origin) "
                               "VALUES ('drop', 10, 10, true, now()) RETURNING id")[0][0]
    with pytest.raises(MigrationError, match=rf"product {room}\b.*--force"):
        migrate(empty_database)
    env = {**settings_env(settings), "HC_DATABASE_URL": empty_database}
    refused = run_cli("migrate", env=env)
    assert refused.returncode == 1 and f"product {room}" in refused.stderr, refused
    assert "close the rooms" in refused.stderr.lower(), refused.stderr
    # A replica of the new version does not start either.
    serving = run_cli("serve", "--port", str(free_port()), env=env, timeout=60)
    assert serving.returncode == 1 and f"product {room}" in serving.stderr, serving.stderr[-2000:]
    assert sql(empty_database, "SELECT max(version) FROM schema_migrations") == [(every[-2].version,)]
    forced = run_cli("migrate", "--force", env=env)
    assert forced.returncode == 0 and f"applied {every[-1].file}" in forced.stdout, forced.stderr
    # Closed rooms are no reason to wait.
    sql(empty_database, "DELETE FROM schema_migrations WHERE version = %s", (every[-1].version,))
    sql(empty_database, "UPDATE products SET waiting_room = false")
    assert migrate(empty_database) == [every[-1].file]


def test_the_one_purchase_per_pass_index_is_built_without_blocking_purchases(empty_database: str) -> None:
    """From issue 45's review: 0005 built its unique index on orders inside its transaction, which holds a lock
    that blocks every INSERT into orders — every purchase — until the index is built. It is built CONCURRENTLY
    now (0007, outside a transaction): while the build waits for a purchase still open, another purchase goes
    through; and an index an interrupted build left invalid is built again."""
    every = load_migrations()[:7]  # up to 0007, the one under test
    assert not every[-1].transactional and every[-1].statements()[0].startswith("CREATE UNIQUE INDEX CONCURRENTLY")
    migrate(empty_database, migrations=every[:-1])
    insert = "INSERT INTO orders (user_id, product_id, quantity, replica, room_generation) VALUES (%s, 1, 1, 'r', 1)"
    with open_transaction(empty_database) as open_purchase:
        open_purchase.execute(insert, (1,))

        async def build_while_purchasing() -> list[str]:
            building = asyncio.ensure_future(asyncio.to_thread(migrate, empty_database, migrations=every))
            try:
                await wait_for_lock_waiters(empty_database, 1)  # the build waits for the open purchase
                # Another purchase meanwhile: not blocked by the build (PostgreSQL gives up after 20 s if it is).
                sql(empty_database, "SET statement_timeout = '20s'; " + insert, (2,))
            finally:
                open_purchase.connection.commit()  # the build can end, whatever happened
            return await building

        assert asyncio.run(build_while_purchasing()) == [every[-1].file]
    assert valid_index(empty_database, "orders_one_per_pass") is True

    # A build interrupted (here: by a duplicate) leaves the index invalid; the next migration builds it again.
    sql(empty_database, "DROP INDEX orders_one_per_pass; DELETE FROM schema_migrations WHERE version = %s",
        (every[-1].version,))
    sql(empty_database, insert, (2,))
    with pytest.raises(Exception, match="could not create unique index"):
        sql(empty_database, every[-1].statements()[0])
    assert valid_index(empty_database, "orders_one_per_pass") is False
    sql(empty_database, "DELETE FROM orders WHERE id = (SELECT max(id) FROM orders)")
    assert migrate(empty_database, migrations=every) == [every[-1].file]
    assert valid_index(empty_database, "orders_one_per_pass") is True


def valid_index(url: str, name: str) -> bool | None:
    found = sql(url, "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = %s",
                (name,))
    return found[0][0] if found else None


def test_a_database_of_the_schema_before_holds_upgrades_and_its_sales_go_on(empty_database: str) -> None:
    """Issue 24: 0008 adds holds to a database of the schema before them (0007) with orders, Idempotency-Keys, a
    waiting room's line and an order bought with its pass: every row is kept, nothing is held, and the invariant
    stock + held + sold = initial holds for every product."""
    every = load_migrations()[:8]  # up to 0008, the one under test
    assert every[-1].file == "0008_checkouts.sql"
    migrate(empty_database, migrations=every[:-1])
    sql(empty_database, "UPDATE products SET stock = 9997 WHERE id = 1")
    sql(empty_database, "INSERT INTO orders (user_id, product_id, quantity, replica) VALUES (5, 1, 2, 'old'), "
                        "(6, 1, 1, 'old')")
    sql(empty_database, "INSERT INTO idempotency_keys (key, fingerprint, order_id) "
                        "SELECT 'k-' || id, '5:1:2', id FROM orders WHERE user_id = 5")
    sql(empty_database, "INSERT INTO products (name, stock, initial_stock, waiting_room, admission_origin, "
                        "room_generation) VALUES ('drop', 9, 10, false, now(), 1)")
    sql(empty_database, "INSERT INTO queue_lines (product_id, generation, last_place, joined) VALUES (2, 1, 1, 1)")
    sql(empty_database, "INSERT INTO queue_places (product_id, generation, user_id, place, ordinal) "
                        "VALUES (2, 1, 8, 1, 1)")
    sql(empty_database, "INSERT INTO orders (user_id, product_id, quantity, replica, room_generation) "
                        "VALUES (8, 2, 1, 'old', 1)")
    tables = ("orders", "idempotency_keys", "queue_lines", "queue_places")
    before = {table: sql(empty_database, f"SELECT * FROM {table} ORDER BY 1") for table in tables}
    products = sql(empty_database, "SELECT id, stock, initial_stock FROM products ORDER BY id")

    assert migrate(empty_database, migrations=every) == ["0008_checkouts.sql"]
    for table, rows in before.items():
        assert sql(empty_database, f"SELECT * FROM {table} ORDER BY 1") == rows, table
    assert sql(empty_database, "SELECT id, stock, initial_stock FROM products ORDER BY id") == products
    assert sql(empty_database, "SELECT id, held, hold_seconds, lapsed_units(id) FROM products ORDER BY id") == [
        (1, 0, 600, 0), (2, 0, 600, 0)]
    assert sql(empty_database, """
        SELECT bool_and(p.stock + p.held + (SELECT COALESCE(sum(quantity), 0) FROM orders WHERE product_id = p.id)
                        = p.initial_stock) FROM products p""") == [(True,)]
    # Holds can be written.
    sql(empty_database, "INSERT INTO checkouts (id, product_id, user_id, quantity, expires_at, replica) "
                        "VALUES ('co_test', 1, 9, 1, now() + interval '1 minute', 'new')")
