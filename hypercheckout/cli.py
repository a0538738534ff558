"""The `hypercheckout` command: serve, up, migrate, product, reset, unban, status, settings."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypercheckout import __version__, catalog
from hypercheckout.app import redis_client, serve
from hypercheckout.checkout import holds
from hypercheckout.checkout.errors import CheckoutError
from hypercheckout.checkout.validation import MAX_ID, parse_address, parse_whole_number
from hypercheckout.cluster import read_env_file
from hypercheckout.failures import explain
from hypercheckout.limiter import RateLimiter
from hypercheckout.login_throttle import LoginThrottle
from hypercheckout.operations import reset_product, status_report
from hypercheckout.payments.commands import (
    add_payments_arguments,
    add_simulator_arguments,
    cmd_payments,
    cmd_payments_simulator,
)
from hypercheckout.settings import Settings, SettingsError, documentation
from hypercheckout.store import (
    DEFAULT_ADMIT_PER_SECOND,
    DEFAULT_HOLD_SECONDS,
    DEFAULT_PASS_SECONDS,
    Store,
    ensure_database,
)

CLUSTER_ENV = "cluster.env"


def read_cluster_env(data_dir: Path) -> dict[str, str]:
    """The ``KEY=value`` lines `hypercheckout up` wrote into ``DATA/cluster.env`` (shell-quoted values)."""
    path = data_dir / CLUSTER_ENV
    if not path.is_file():
        raise SettingsError(f"{path} not found: is a cluster started with `hypercheckout up --data-dir {data_dir}`?")
    return read_env_file(path)


def load_settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    environ: dict[str, str] = dict(os.environ)
    if getattr(args, "data_dir", None):
        # The cluster's own addresses win over the caller's environment: --data-dir names that cluster.
        environ.update(read_cluster_env(Path(args.data_dir)))
    settings = Settings.from_env(environ, **{k: v for k, v in overrides.items() if v is not None})
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return settings


def _login_throttle(settings: Settings, client: Any) -> LoginThrottle:
    return LoginThrottle(client, prefix=settings.redis_prefix, per_address=settings.login_failures_per_address,
                         total=settings.login_failures_total)


def _limiter(settings: Settings, client: Any) -> RateLimiter:
    return RateLimiter(
        client, prefix=settings.redis_prefix, user_rate=settings.rate_limit, user_burst=settings.rate_burst,
        ip_rate=settings.ip_rate_limit, ip_burst=settings.ip_rate_burst, ban_after=settings.ban_after,
        ban_window=settings.ban_window, ban_seconds=settings.ban_seconds,
    )


async def _with_store(settings: Settings, action: Callable[[Store, Any], Awaitable[int]]) -> int:
    store = await Store.connect(settings.database_url, size=2, timeout=settings.db_timeout)
    client = redis_client(settings)
    try:
        return await action(store, client)
    finally:
        await client.aclose()
        await store.close()


def cmd_serve(args: argparse.Namespace) -> int:
    settings = load_settings(args, port=args.port, replica_id=args.replica_id, host=args.host,
                             strategy=args.strategy)
    if settings.event_loop == "uvloop":
        # Safe since store/aiopg_fix.py: aiopg left a writer on descriptors libpq closed, and uvloop then refused
        # every later socket given such a number (load-tests/README.md, "uvloop").
        import uvloop

        uvloop.run(serve(settings))
    else:
        asyncio.run(serve(settings))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = load_settings(args)

    async def run() -> int:
        created = await ensure_database(settings.database_url, timeout=settings.db_timeout)
        store = await Store.connect(settings.database_url, size=1, timeout=settings.db_timeout)
        try:
            applied = await store.migrate(force=args.force)
            version = await store.schema_version()
        finally:
            await store.close()
        if created:
            print("database created")
        for migration in applied:
            print(f"applied {migration.file}")
        print(f"schema at version {version}" + ("" if applied else " (up to date)"))
        return 0

    return asyncio.run(run())


def cmd_reset(args: argparse.Namespace) -> int:
    settings = load_settings(args)

    async def action(store: Store, client: Any) -> int:
        result = await reset_product(store, client, settings.redis_prefix, args.product, args.stock,
                                     per_user_limit=args.per_user_limit)
        print(f"product {result.product_id}: stock and initial stock set to {result.stock}, "
              f"{result.deleted_orders} order(s) deleted")
        if args.per_user_limit is not None:
            print(f"per-buyer limit: {args.per_user_limit or 'none'}")
        if not result.announced:
            print("warning: Redis unreachable; replicas clear their sold-out flags within "
                  f"{settings.soldout_recheck_ms:.0f} ms by rechecking PostgreSQL", file=sys.stderr)
        return 0

    return asyncio.run(_with_store(settings, action))


PRODUCT_OPTIONS = ("name", "stock", "starts_at", "ends_at", "per_user_limit", "max_per_order", "waiting_room",
                   "admit_per_second", "pass_seconds", "hold_seconds", "price", "currency")


def _product_line(product: dict[str, Any]) -> str:
    window = ", ".join(part for part in (
        f"starts {product['starts_at']}" if product["starts_at"] else "",
        f"ends {product['ends_at']}" if product["ends_at"] else "") if part) or "no window"
    limit = product["per_user_limit"] or "none"
    room = (f", waiting room: {product['admit_per_second']}/s, passes {product['pass_seconds']} s"
            if product.get("waiting_room") else "")
    return (f"product {product['id']} {product['name']!r}: {product['status']}, available {product['available']}, "
            f"held {product['held']}, sold {product['sold']} / initial {product['initial_stock']}, {window}, "
            f"per buyer {limit}, per order {product['max_per_order']}, holds {product['hold_seconds']} s, "
            f"price {product['price']} {product['currency'].upper()}{room}")


def _print_product(product: dict[str, Any], as_json: bool) -> None:
    print(json.dumps(product, indent=2) if as_json else _product_line(product))


def _warn_unannounced(settings: Settings, announced: bool) -> None:
    if not announced:
        print("warning: Redis unreachable; replicas see the change within "
              f"{settings.schedule_refresh_ms:.0f} ms by re-reading PostgreSQL", file=sys.stderr)


def cmd_product(args: argparse.Namespace) -> int:
    settings = load_settings(args)

    async def action(store: Store, client: Any) -> int:
        prefix, max_quantity = settings.redis_prefix, settings.max_quantity
        now = datetime.fromtimestamp(await store.server_time(), UTC)  # sale times are PostgreSQL's
        if args.action == "list":
            rows = [{**r.product.as_json(max_quantity, now), "sold": r.sold, "orders": r.orders}
                    for r in await store.status()]
            if args.json:
                print(json.dumps({"products": rows}, indent=2))
            for row in [] if args.json else rows:
                print(_product_line(row) + f", sold {row['sold']} in {row['orders']} order(s)")
            return 0
        if args.action == "delete":
            result = await catalog.delete_product(store, client, prefix, args.id, with_orders=args.with_orders)
            print(f"product {args.id} deleted with {result.deleted_orders} order(s)")
            _warn_unannounced(settings, result.announced)
            return 0
        fields = {name: getattr(args, name) for name in PRODUCT_OPTIONS}
        changes = catalog.changes_from_text(fields, creating=args.action == "create", max_quantity=max_quantity,
                                            now=now)
        if args.action == "create":
            result = await catalog.create_product(store, client, prefix, changes)
        else:
            result = await catalog.update_product(store, client, prefix, args.id, changes)
        assert result.product is not None
        _print_product(result.product.as_json(max_quantity, now), args.json)
        _warn_unannounced(settings, result.announced)
        return 0

    return asyncio.run(_with_store(settings, action))


def cmd_checkouts(args: argparse.Namespace) -> int:
    settings = load_settings(args)

    async def action(store: Store, client: Any) -> int:
        if args.action == "release":
            hold, moved = await holds.release(store, args.id)
            print(json.dumps(hold.as_json(), indent=2) if args.json else
                  f"checkout {hold.id}: {hold.status}" + (f", {hold.quantity} unit(s) of product {hold.product_id} "
                                                          "back on sale" if moved else " (nothing to give back)"))
            return 0
        found = await holds.list_held(store, args.product, args.limit)
        if args.json:
            print(json.dumps({"checkouts": [h.as_json() for h in found]}, indent=2))
            return 0
        for hold in found:
            print(f"{hold.id}  product {hold.product_id}  buyer {hold.user_id}  {hold.quantity} unit(s)  "
                  f"expires {hold.expires_at.isoformat()}  ({hold.status})")
        print(f"{len(found)} hold(s)")
        return 0

    return asyncio.run(_with_store(settings, action))


def cmd_unban(args: argparse.Namespace) -> int:
    settings = load_settings(args)

    async def run() -> int:
        client = redis_client(settings)
        limiter, throttle = _limiter(settings, client), _login_throttle(settings, client)
        try:
            if args.all:
                removed = await limiter.clear_all() + await throttle.lift_all()
            else:
                removed = await limiter.unban(user_id=args.user, ip=args.ip)
                if args.ip is not None:
                    removed += await throttle.lift(args.ip)  # its admin-login lockout too
        finally:
            await client.aclose()
        print(f"removed {removed} key(s)")
        return 0

    return asyncio.run(run())


def cmd_status(args: argparse.Namespace) -> int:
    settings = load_settings(args)

    async def action(store: Store, client: Any) -> int:
        report = await status_report(store, _limiter(settings, client), _login_throttle(settings, client))
        if args.json:
            print(json.dumps(report, indent=2))
            return 0
        for p in report["products"]:
            print(f"product {p['id']} {p['name']!r}: available {p['available']}, held {p['held']}, "
                  f"sold {p['sold']} / initial {p['initial_stock']}")
        print(f"orders: {report['orders']}")
        bans = report["bans"]
        if bans is None:
            print("bans: unknown (Redis unreachable)")
        else:
            print(f"bans: {len(bans)}")
            for ban in bans:
                print(f"  {ban['kind']} {ban['value']}: {ban['seconds_left']} s left")
        return 0

    return asyncio.run(_with_store(settings, action))


def cmd_settings(args: argparse.Namespace) -> int:
    for env, default, doc in documentation():
        print(f"{env:<24} {default!s:<52} {doc}")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from hypercheckout.cluster import Cluster

    load_settings(argparse.Namespace())  # a bad HC_* value stops here, before anything starts
    cluster = Cluster(data_dir=Path(args.data_dir or ".hypercheckout"), port=args.port, replicas=args.replicas,
                      stock=args.stock, tls=args.tls, pg_standby=args.pg_standby,
                      redis_cluster=args.redis_cluster, buyer_auth=args.buyer_auth, payments=args.payments)
    return cluster.run()


def cmd_buyer_token(args: argparse.Namespace) -> int:
    from hypercheckout.buyers.issuer import LocalIssuer

    issuer = LocalIssuer(Path(args.data_dir or ".hypercheckout") / "issuer")
    if not issuer.private_path.exists():
        print(f"hypercheckout: no local issuer in {issuer.directory} (start the cluster with `up --buyer-auth jwt`)",
              file=sys.stderr)
        return 1
    print(issuer.mint(str(args.user), ttl=args.ttl))
    return 0


def cmd_failover(args: argparse.Namespace) -> int:
    from hypercheckout.cluster import ClusterError, fail_over

    try:
        fail_over(Path(args.data_dir or ".hypercheckout"), sys.stdout)
    except ClusterError as exc:
        print(f"hypercheckout failover: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_nginx_config(args: argparse.Namespace) -> int:
    from hypercheckout.cluster import TlsFiles, render_nginx_config

    if (args.tls_certificate is None) != (args.tls_key is None):
        raise SettingsError("--tls-certificate and --tls-key go together")
    tls = TlsFiles(Path(args.tls_certificate), Path(args.tls_key), strict_transport_security=True) \
        if args.tls_certificate else None
    settings = load_settings(args)
    replicas = args.replicas or len(args.upstream)
    print(render_nginx_config(listen=args.listen, upstreams=args.upstream, runtime_dir=args.runtime_dir,
                              log_dir=args.log_dir, user=args.user, tls=tls,
                              purchase_concurrency=settings.front_door_in_flight * replicas,
                              join_concurrency=settings.max_joins_in_flight * replicas,
                              overload_answers=settings.overload_answers))
    return 0


def _product_id(text: str) -> int:
    try:
        return parse_whole_number(text, "product id", 1, MAX_ID)
    except CheckoutError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _address(text: str) -> str:
    try:
        return parse_address(text)
    except CheckoutError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hypercheckout", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--data-dir", help="use the cluster started by `hypercheckout up` in this directory")
        p.set_defaults(func=func)
        return p

    p = command("serve", cmd_serve, "run one replica of the HTTP service")
    p.add_argument("--port", type=int)
    p.add_argument("--host")
    p.add_argument("--replica-id")
    p.add_argument("--strategy", choices=("pessimistic", "atomic", "batched"))
    p = command("migrate", cmd_migrate, "create the database if missing and apply the schema migrations it has not "
                                        "had (idempotent, safe to run concurrently); refused while a waiting room is "
                                        "open, unless forced")
    p.add_argument("--force", action="store_true",
                   help="upgrade even while a waiting room is open: its buyers in line may lose their place")
    p = command("reset", cmd_reset, "set a product's stock, delete its orders, clear sold-out flags everywhere")
    p.add_argument("--product", type=int, default=1)
    p.add_argument("--stock", type=int, help="new stock (default: the product's initial stock)")
    p.add_argument("--per-user-limit", type=int, metavar="N",
                   help="most units one buyer may own of the product (0: no limit; default: unchanged)")
    p = command("product", cmd_product, "list, create, update or delete products (sales)")
    actions = p.add_subparsers(dest="action", required=True)
    when = ("ISO 8601 with an offset (2026-12-01T10:00:00+01:00, …Z), +SECONDS from now, now, or none")
    for name in ("create", "update"):
        a = actions.add_parser(name, help=f"{name} a product and print it (as GET /products/{{id}} shows it)")
        if name == "update":
            a.add_argument("id", type=_product_id)
        a.add_argument("--name", required=name == "create")
        a.add_argument("--stock", required=name == "create",
                       help="units on sale" + ("" if name == "create" else " from now on (orders kept: the initial "
                                                                            "stock becomes stock + units sold)"))
        a.add_argument("--starts-at", metavar="WHEN", help=f"start of the sale: {when} (default: on sale now)")
        a.add_argument("--ends-at", metavar="WHEN", help=f"end of the sale: {when} (default: no end)")
        a.add_argument("--per-user-limit", metavar="N", help="most units one buyer may own (0 or none: no limit)")
        a.add_argument("--max-per-order", metavar="N", help="most units one order may ask for (none: HC_MAX_QUANTITY)")
        room = a.add_mutually_exclusive_group()
        room.add_argument("--waiting-room", dest="waiting_room", action="store_const", const="on",
                          help="buyers join a queue and buy with the pass they get when admitted")
        room.add_argument("--no-waiting-room", dest="waiting_room", action="store_const", const="off",
                          help="buyers buy directly (default)")
        a.add_argument("--admit-per-second", metavar="N",
                       help=f"waiting room: buyers admitted a second, across all replicas (default "
                            f"{DEFAULT_ADMIT_PER_SECOND}; changed during a sale, counts on from the admissions so far)")
        a.add_argument("--pass-seconds", metavar="N",
                       help=f"waiting room: seconds an admitted buyer's pass is valid (default {DEFAULT_PASS_SECONDS})")
        a.add_argument("--hold-seconds", metavar="N",
                       help=f"seconds a checkout holds its units before they go back (default {DEFAULT_HOLD_SECONDS})")
        a.add_argument("--price", metavar="MINOR_UNITS",
                       help="a unit's price in the currency's minor units, e.g. 1999 for 19.99 USD (default 0: free)")
        a.add_argument("--currency", metavar="ISO4217", help="the price's currency, e.g. usd, eur (default usd)")
        a.add_argument("--json", action="store_true")
    a = actions.add_parser("list", help="every product with its status, sold units and orders")
    a.add_argument("--json", action="store_true")
    a = actions.add_parser("delete", help="delete a product (refused while it has orders, unless --with-orders)")
    a.add_argument("id", type=_product_id)
    a.add_argument("--with-orders", action="store_true", help="delete its orders too")
    for a in actions.choices.values():
        # Also after the action (`product create --data-dir D …`); SUPPRESS keeps one given before it.
        a.add_argument("--data-dir", default=argparse.SUPPRESS, help="use the cluster `hypercheckout up` started "
                                                                     "in this directory")
    p = command("checkouts", cmd_checkouts, "list running holds, or release one")
    actions = p.add_subparsers(dest="action", required=True)
    a = actions.add_parser("list", help="running holds, the soonest to expire first")
    a.add_argument("--product", type=_product_id, help="one product's only")
    a.add_argument("--limit", type=int, default=100)
    a.add_argument("--json", action="store_true")
    a = actions.add_parser("release", help="give a hold's units back at once (as its buyer's release does)")
    a.add_argument("id", help="the checkout id (co_…)")
    a.add_argument("--json", action="store_true")
    for a in actions.choices.values():
        a.add_argument("--data-dir", default=argparse.SUPPRESS, help="use the cluster `hypercheckout up` started "
                                                                     "in this directory")
    p = command("unban", cmd_unban, "lift bans and rate-limit state")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--all", action="store_true", help="every ban, strike, bucket and admin-login lockout")
    group.add_argument("--user", type=int, help="one buyer")
    group.add_argument("--ip", type=_address, help="one client address (its purchase bans and login lockout)")
    p = command("status", cmd_status, "stock, sales, orders and bans")
    p.add_argument("--json", action="store_true")
    command("settings", cmd_settings, "list every HC_* variable with its default")
    p = command("up", cmd_up, "start PostgreSQL, Redis, N replicas and nginx in a data dir (default .hypercheckout)")
    p.add_argument("--port", type=int, default=8080, help="nginx's port")
    p.add_argument("--tls", action="store_true",
                   help="serve https only, with a self-signed certificate for localhost made on first start "
                        "(DATA/tls/); admin cookies become Secure and __Host- prefixed")
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--stock", type=int, help="set product 1's stock (and delete its orders) at start")
    p.add_argument("--pg-standby", action="store_true",
                   help="a second PostgreSQL as a synchronous streaming-replication standby (every commit is on "
                        "both before it is acknowledged); replicas follow a promotion by themselves")
    p.add_argument("--redis-cluster", action="store_true",
                   help="a Redis Cluster of three masters with a replica each (DATA/redis-cluster/) instead of one "
                        "Redis server; replicas follow a master's failover by themselves")
    p.add_argument("--buyer-auth", choices=("none", "jwt"), default="none",
                   help="jwt: buyers sign in with tokens of a local issuer made in DATA/issuer (mint one with "
                        "`hypercheckout buyer-token --user N`); none: the user_id the body carries")
    p.add_argument("--payments", choices=("simulator", "off"), default="simulator",
                   help="simulator (default): products with a price are paid through a local payment simulator "
                        "(test payments only); off: every checkout is confirmed by its buyer")
    p = command("payments-simulator", cmd_payments_simulator,
                "a local stand-in for Stripe's PaymentIntents API, its webhooks and its faults (test payments only)")
    add_simulator_arguments(p)
    p = command("payments", lambda args: cmd_payments(args, load_settings(args)),
                "settle the payments in doubt now, or show money and units per product")
    add_payments_arguments(p)
    p = command("buyer-token", cmd_buyer_token, "mint a buyer's token with the local issuer of `up --buyer-auth jwt`")
    p.add_argument("--user", required=True, help="the buyer (the token's subject)")
    p.add_argument("--ttl", type=float, default=3600, help="seconds the token is valid (default 3600)")
    command("failover", cmd_failover, "kill the PostgreSQL primary of a cluster started with `up --pg-standby` "
                                      "(SIGKILL) and promote its standby (pg_ctl promote)")
    p = command("nginx-config", cmd_nginx_config, "print nginx.conf for a set of replicas (docker-compose uses it)")
    p.add_argument("--listen", default="8080")
    p.add_argument("--upstream", action="append", required=True, help="host:port of a replica (repeatable)")
    p.add_argument("--runtime-dir", default="/tmp/nginx")
    p.add_argument("--log-dir", default="/var/log/nginx")
    p.add_argument("--user", help="account nginx's workers run as when started by root")
    p.add_argument("--replicas", type=int, help="replicas behind the upstreams (default: one per --upstream; "
                                                "compose's single `app` name stands for all of them)")
    p.add_argument("--tls-certificate", metavar="PEM", help="serve https with this certificate (chain)")
    p.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        failure = explain(exc)
        if failure is None:
            raise
        print(f"hypercheckout: {failure.message}", file=sys.stderr)
        return failure.exit_code
