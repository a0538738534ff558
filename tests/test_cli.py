"""The operator's commands: migrate, reset, status, unban, and finding a cluster by its data dir."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
from pathlib import Path

from hypercheckout.settings import Settings
from tests.conftest import admin_execute, with_database
from tests.helpers import limiter_for, orders_of, run_cli, settings_env, sql, stock_of


def test_migrate_creates_the_database_and_is_safe_to_run_concurrently(pg_server_url: str, settings: Settings) -> None:
    name = f"hc_fresh_{abs(hash(settings.redis_prefix)) % 10**8}"
    url = with_database(pg_server_url, name)
    env = {**settings_env(settings), "HC_DATABASE_URL": url}
    try:
        first = run_cli("migrate", env=env)
        assert first.returncode == 0, first.stderr
        # Three replicas starting at once all migrate: none may fail, the seed must exist once.
        runs = [subprocess.Popen([sys.executable, "-m", "hypercheckout", "migrate"], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
        assert [p.wait(60) for p in runs] == [0, 0, 0]
        assert sql(url, "SELECT id, stock, initial_stock FROM products") == [(1, 10_000, 10_000)]
    finally:
        admin_execute(pg_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_status_reports_stock_sales_orders_and_bans(settings: Settings) -> None:
    sql(settings.database_url, "INSERT INTO orders (user_id, product_id, quantity, replica) VALUES (1, 1, 2, 'x'), "
                               "(2, 1, 3, 'x')")
    sql(settings.database_url, "UPDATE products SET stock = stock - 5 WHERE id = 1")
    done = run_cli("status", "--json", env=settings_env(settings))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "products": [{"id": 1, "name": "Flash-sale product", "stock": 9995, "available": 9995, "held": 0,
                      "initial_stock": 10000, "sold": 5}],
        "orders": 2,
        "bans": [],
    }
    text = run_cli("status", env=settings_env(settings))
    assert "sold 5" in text.stdout


def test_reset_sets_stock_and_deletes_the_products_orders(settings: Settings) -> None:
    sql(settings.database_url, "INSERT INTO orders (user_id, product_id, quantity, replica) VALUES (1, 1, 2, 'x')")
    done = run_cli("reset", "--stock", "250", env=settings_env(settings))
    assert done.returncode == 0, done.stderr
    assert stock_of(settings.database_url) == 250
    assert orders_of(settings.database_url) == {}
    assert sql(settings.database_url, "SELECT initial_stock FROM products WHERE id = 1") == [(250,)]
    again = run_cli("reset", env=settings_env(settings))  # default: back to the initial stock
    assert again.returncode == 0 and stock_of(settings.database_url) == 250


def test_reset_of_an_unknown_product_or_negative_stock_is_refused(settings: Settings) -> None:
    missing = run_cli("reset", "--product", "99", env=settings_env(settings))
    assert missing.returncode == 1 and "unknown_product" in missing.stderr
    negative = run_cli("reset", "--stock", "-1", env=settings_env(settings))
    assert negative.returncode == 1 and "invalid_request" in negative.stderr
    assert stock_of(settings.database_url) == 10_000


def test_unban_all_clears_every_ban(settings: Settings) -> None:
    async def ban_a_buyer_and_an_address() -> None:
        client, limiter = limiter_for(settings.redis_url, settings.redis_prefix, user_rate=1.0, user_burst=1,
                                      ip_rate=1.0, ip_burst=1, ban_after=1)
        for ip in ("10.0.0.1", "10.0.0.2"):  # buyer 5 over its rate, from two addresses
            await limiter.check(5, ip)
        for user in (100, 101):  # address 10.1.1.1 over its rate, for two buyers
            await limiter.check(user, "10.1.1.1")
        await client.aclose()

    asyncio.run(ban_a_buyer_and_an_address())
    status = json.loads(run_cli("status", "--json", env=settings_env(settings)).stdout)
    assert sorted((b["kind"], b["value"]) for b in status["bans"]) == [("ip", "10.1.1.1"), ("user", "5")]
    done = run_cli("unban", "--all", env=settings_env(settings))
    assert done.returncode == 0, done.stderr
    assert json.loads(run_cli("status", "--json", env=settings_env(settings)).stdout)["bans"] == []


def test_data_dir_finds_the_cluster_through_cluster_env(settings: Settings, tmp_path: Path) -> None:
    (tmp_path / "cluster.env").write_text(
        f"# written by hypercheckout up\nHC_DATABASE_URL='{settings.database_url}'\n"
        f"HC_REDIS_URL='{settings.redis_url}'\nHC_REDIS_PREFIX='{settings.redis_prefix}'\n"
    )
    # The caller's environment points elsewhere; --data-dir wins.
    done = run_cli("status", "--json", "--data-dir", str(tmp_path),
                   env={"HC_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["products"][0]["stock"] == 10_000
    missing = run_cli("status", "--data-dir", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "cluster.env" in missing.stderr


def test_numbers_beyond_the_columns_are_one_line_errors_and_change_nothing(settings: Settings) -> None:
    for args in (("--stock", "3000000000"), ("--per-user-limit", "3000000000"), ("--product", str(2**63))):
        done = run_cli("reset", *args, env=settings_env(settings))
        assert done.returncode == 1, done
        assert done.stderr.startswith("hypercheckout: invalid_request: ") and done.stderr.count("\n") == 1, done
    assert stock_of(settings.database_url) == 10_000


def test_products_are_created_listed_updated_and_deleted_from_the_cli(settings: Settings) -> None:
    env = settings_env(settings)
    created = run_cli("product", "create", "--name", "Hoodie drop", "--stock", "40", "--starts-at", "+3600",
                      "--ends-at", "2099-01-01T00:00:00+02:00", "--per-user-limit", "2", "--max-per-order", "1",
                      "--json", env=env)
    assert created.returncode == 0, created.stderr
    product = json.loads(created.stdout)
    pid = product["id"]
    assert (product["name"], product["stock"], product["status"], product["ends_at"]) == (
        "Hoodie drop", 40, "scheduled", "2098-12-31T22:00:00+00:00")
    assert (product["per_user_limit"], product["max_per_order"]) == (2, 1)

    updated = run_cli("product", "update", str(pid), "--starts-at", "now", "--per-user-limit", "none", "--json",
                      env=env)
    assert updated.returncode == 0, updated.stderr
    assert (json.loads(updated.stdout)["status"], json.loads(updated.stdout)["per_user_limit"]) == ("live", None)
    priced = run_cli("product", "update", str(pid), "--price", "2500", "--currency", "JPY", "--json", env=env)
    assert priced.returncode == 0, priced.stderr
    assert (json.loads(priced.stdout)["price"], json.loads(priced.stdout)["currency"]) == (2500, "jpy")
    listed = run_cli("product", "list", env=env)
    assert f"product {pid} 'Hoodie drop': live, available 40, held 0, sold 0 / initial 40" in listed.stdout, \
        listed.stdout
    assert "price 2500 JPY" in listed.stdout
    as_json = json.loads(run_cli("product", "list", "--json", env=env).stdout)
    assert [p["id"] for p in as_json["products"]] == [1, pid]

    sql(settings.database_url, "INSERT INTO orders (user_id, product_id, quantity, replica) VALUES (3, %s, 1, 'x')",
        (pid,))
    refused = run_cli("product", "delete", str(pid), env=env)
    assert refused.returncode == 1 and refused.stderr.startswith("hypercheckout: has_orders: product"), refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    reset = run_cli("reset", "--product", str(pid), "--stock", "5", env=env)  # reset works for any product
    assert reset.returncode == 0 and "1 order(s) deleted" in reset.stdout, reset.stderr
    deleted = run_cli("product", "delete", str(pid), "--with-orders", env=env)
    assert deleted.returncode == 0, deleted.stderr
    assert sql(settings.database_url, "SELECT count(*) FROM products WHERE id = %s", (pid,)) == [(0,)]


def test_a_waiting_room_is_opened_tuned_and_closed_from_the_cli(settings: Settings) -> None:
    env = settings_env(settings)
    created = run_cli("product", "create", "--name", "Queued", "--stock", "9", "--waiting-room",
                      "--admit-per-second", "50", "--pass-seconds", "30", "--json", env=env)
    assert created.returncode == 0, created.stderr
    product = json.loads(created.stdout)
    pid = product["id"]
    assert (product["waiting_room"], product["admit_per_second"], product["pass_seconds"]) == (True, 50, 30)
    # A new rate during the sale keeps the admissions so far: the count goes on from where it was.
    (origin,) = sql(settings.database_url, "UPDATE products SET admission_origin = now() - interval '10 seconds' "
                                           "WHERE id = %s RETURNING admission_origin", (pid,))[0]
    tuned = run_cli("product", "update", str(pid), "--admit-per-second", "80", env=env)
    assert tuned.returncode == 0 and "waiting room: 80/s, passes 30 s" in tuned.stdout, tuned.stdout + tuned.stderr
    before, counted_from = sql(settings.database_url,
                               "SELECT admitted_before, admission_origin FROM products WHERE id = %s", (pid,))[0]
    # Exactly what 50/s admitted from the old origin to the instant of the change (however long the command took),
    # and the new rate counts on from that instant.
    assert before == math.floor((counted_from - origin).total_seconds() * 50) and before >= 500
    closed = run_cli("product", "update", str(pid), "--no-waiting-room", "--json", env=env)
    assert json.loads(closed.stdout)["waiting_room"] is False
    both = run_cli("product", "update", str(pid), "--waiting-room", "--no-waiting-room", env=env)
    assert both.returncode == 2  # one or the other


def test_bad_product_options_are_one_line_errors_with_nothing_written(settings: Settings) -> None:
    env = settings_env(settings)
    before = sql(settings.database_url, "SELECT * FROM products ORDER BY id")
    for args in (["create", "--name", "x", "--stock", "-3"],
                 ["create", "--name", "x", "--stock", "ten"],
                 ["create", "--name", "x", "--stock", "3000000000"],
                 ["create", "--name", "", "--stock", "3"],
                 ["create", "--name", "x", "--stock", "3", "--starts-at", "next tuesday"],
                 ["create", "--name", "x", "--stock", "3", "--starts-at", "2030-01-01T10:00:00"],
                 ["create", "--name", "x", "--stock", "3", "--starts-at", "+60", "--ends-at", "+10"],
                 ["create", "--name", "x", "--stock", "3", "--max-per-order", "500"],
                 ["create", "--name", "x", "--stock", "3", "--waiting-room", "--admit-per-second", "0"],
                 ["create", "--name", "x", "--stock", "3", "--waiting-room", "--pass-seconds", "100000"],
                 ["update", "1", "--ends-at", "2000-01-01T00:00:00Z", "--starts-at", "2001-01-01T00:00:00Z"],
                 ["update", "1"],
                 ["update", "999999", "--name", "y"],
                 ["delete", "999999"]):
        done = run_cli("product", *args, env=env)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("hypercheckout: "), (
            args, done.stderr)
    usage = run_cli("product", "update", "0", "--name", "y", env=env)
    assert usage.returncode == 2 and "product id must be a whole number" in usage.stderr
    assert sql(settings.database_url, "SELECT * FROM products ORDER BY id") == before
