"""Wiring: build the services once at start, hand them to the handlers, and take them down in order."""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
import tornado.httpserver
import tornado.web

from hypercheckout.admin import routes as admin_routes
from hypercheckout.admin.live import LiveHub
from hypercheckout.admin.snapshot import Snapshotter
from hypercheckout.api import checkouts, health, openapi, orders, products, purchase, queue, shop, signin, webhooks
from hypercheckout.api.base import NotFoundHandler
from hypercheckout.buyers.auth import BuyerAuth
from hypercheckout.buyers.issuer import LocalIssuer
from hypercheckout.checkout.admission import Admission
from hypercheckout.checkout.holds import HoldSweeper
from hypercheckout.checkout.idempotency import KeyJanitor
from hypercheckout.checkout.queue import WaitingRooms
from hypercheckout.checkout.schedule import SaleSchedule
from hypercheckout.checkout.service import Checkout
from hypercheckout.checkout.soldout import SoldOutFlags, announce_product_changed
from hypercheckout.checkout.strategy import Strategy, make_strategy
from hypercheckout.failures import PortInUse
from hypercheckout.gcpauses import GcPauses, freeze_started_heap
from hypercheckout.limiter import RateLimiter
from hypercheckout.login_throttle import LoginThrottle
from hypercheckout.metrics import Metrics
from hypercheckout.payments.provider import PaymentProvider
from hypercheckout.payments.settle import Payments, Reconciler
from hypercheckout.redisclient import RedisClient, connect
from hypercheckout.resources import resource_dir
from hypercheckout.settings import STRIPE_API, Settings, SettingsError
from hypercheckout.stats import HitCounter
from hypercheckout.store import Store, ensure_database

log = logging.getLogger(__name__)

# Tornado's own cap, a safety net far above HC_MAX_BODY_BYTES: bodies between the two get a JSON 400 from the
# handler; above this Tornado drops the connection before buffering the body.
SERVER_MAX_BODY = 64 * 1024

# Above nginx's 4 x 8k header buffers; Tornado's own default is 64 KiB.
SERVER_MAX_HEADERS = 32 * 1024

# Tornado's default accept backlog (128) overflows when a burst makes nginx open thousands of upstream
# connections at once: dropped SYNs become connect timeouts, and nginx takes healthy replicas out of rotation.
# The kernel caps this at net.core.somaxconn.
LISTEN_BACKLOG = 2048

# Tornado allocates a zeroed buffer of this size for every read of a socket, including the read that finds it
# empty: twice per request. At its default of 64 KiB, zeroing them was a ninth of the instructions of a sold-out
# refusal and a seventh of a no-op's (callgrind, load-tests/instructions.py). A proxied request fits in 4 KiB;
# a larger one takes more reads.
READ_CHUNK_BYTES = 4096


@dataclass
class Services:
    """Everything a handler may use, created once per process."""

    settings: Settings
    store: Store
    redis: RedisClient
    limiter: RateLimiter
    strategy: Strategy
    sold_out: SoldOutFlags
    schedule: SaleSchedule
    checkout: Checkout
    hits: HitCounter
    janitor: KeyJanitor
    metrics: Metrics
    snapshots: Snapshotter
    live: LiveHub
    login_throttle: LoginThrottle
    admission: Admission  # purchases'
    join_admission: Admission  # waiting-room joins': a bound of their own
    rooms: WaitingRooms
    sweeper: HoldSweeper
    buyer_auth: BuyerAuth | None = None  # HC_BUYER_AUTH=jwt: buyers are who their bearer tokens say
    demo_issuer: LocalIssuer | None = None  # HC_DEMO_SIGNIN: the buyer page's demo sign-in mints with it
    payments: Payments | None = None  # HC_PAYMENTS on: checkouts of priced products are paid
    reconciler: Reconciler | None = None
    gc_pauses: GcPauses = field(default_factory=GcPauses)  # the collector's pauses of this process, for /metrics
    stopping: bool = False
    failed_logins: int = 0
    in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    last_request_at: float = 0.0  # event-loop time the latest request started

    def now(self) -> datetime:
        """The time by PostgreSQL's clock, as this replica reads it: for comparing with the instants it set."""
        return datetime.fromtimestamp(self.schedule.clock(), UTC)

    def request_started(self) -> None:
        self.in_flight += 1
        self.idle.clear()
        self.last_request_at = asyncio.get_running_loop().time()

    def request_finished(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()


REDIS_CONNECTIONS = 64


def redis_client(settings: Settings, max_connections: int = REDIS_CONNECTIONS) -> RedisClient:
    """The replica's Redis client: one server or a cluster, as HC_REDIS_URL says (see redisclient.py)."""
    return connect(settings.redis_url, timeout=settings.redis_timeout, max_connections=max_connections)


async def start_services(settings: Settings, *, migrate: bool = True) -> Services:
    """Connect to PostgreSQL (creating the database and schema when missing) and Redis; start background tasks."""
    if migrate:
        await ensure_database(settings.database_url, timeout=settings.db_timeout)
    store = await Store.connect(settings.database_url, size=settings.db_pool_size, timeout=settings.db_timeout)
    if migrate:
        await store.migrate()
    client = redis_client(settings)
    limiter = RateLimiter(
        client,
        prefix=settings.redis_prefix,
        user_rate=settings.rate_limit,
        user_burst=settings.rate_burst,
        ip_rate=settings.ip_rate_limit,
        ip_burst=settings.ip_rate_burst,
        ban_after=settings.ban_after,
        ban_window=settings.ban_window,
        ban_seconds=settings.ban_seconds,
        local_deny_seconds=settings.local_deny_ms / 1000,
    )
    strategy = make_strategy(
        settings.strategy, store, replica=settings.replica_id,
        batch_window_ms=settings.batch_window_ms, batch_busy_window_ms=settings.batch_busy_window_ms,
        batch_max=settings.batch_max,
        batch_queue_max=settings.batch_queue_max,
    )
    sold_out = SoldOutFlags(
        store, client, prefix=settings.redis_prefix, recheck_seconds=settings.soldout_recheck_ms / 1000,
    )
    schedule = SaleSchedule(store, refresh_seconds=settings.schedule_refresh_ms / 1000)
    await schedule.load()  # before the first request: a replica never sells on an empty copy of the windows
    sold_out.listeners.append(schedule.changed)
    rooms = WaitingRooms(store, schedule, sold_out, secret=settings.cookie_secret,
                         join_connections=max(1, min(settings.join_connections, settings.db_pool_size - 1)))
    hits = HitCounter(
        client, prefix=settings.redis_prefix, replica=settings.replica_id,
        flush_seconds=settings.stats_flush_ms / 1000,
    )
    login_throttle = LoginThrottle(client, prefix=settings.redis_prefix,
                                   per_address=settings.login_failures_per_address,
                                   total=settings.login_failures_total)
    snapshots = Snapshotter(settings, store, client, limiter, login_throttle, rooms=rooms, clock=schedule.clock)
    janitor = KeyJanitor(store, ttl=settings.idempotency_ttl_hours * 3600,
                         interval=max(1.0, settings.idempotency_sweep_s))

    async def units_returned(product_id: int, holds: int) -> None:
        # Every replica drops a stale sold-out flag of the product and re-reads it at once.
        sold_out.clear(product_id)
        await announce_product_changed(client, settings.redis_prefix, product_id)

    sweeper = HoldSweeper(store, interval=settings.hold_sweep_ms / 1000, on_returned=units_returned)
    buyer_auth = BuyerAuth.from_settings(settings, store) if settings.buyer_auth == "jwt" else None
    if buyer_auth is not None:
        await buyer_auth.verifier.refresh()  # keys in hand before the first buyer (a failure: fetched on demand)
    demo_issuer = LocalIssuer(Path(settings.demo_signin)) if settings.demo_signin else None
    if demo_issuer is not None and not demo_issuer.private_path.is_file():
        raise SettingsError(f"HC_DEMO_SIGNIN: no local issuer's key in {demo_issuer.directory} (made by `up "
                            "--buyer-auth jwt`)")
    checkout = Checkout(strategy, sold_out, store, schedule, rooms)
    payments, reconciler = make_payments(settings, store, checkout)
    sold_out.start()
    schedule.start()
    hits.start()
    janitor.start()
    sweeper.start()
    services = Services(
        settings=settings, store=store, redis=client, limiter=limiter, strategy=strategy, sold_out=sold_out,
        schedule=schedule, checkout=checkout, rooms=rooms, payments=payments, reconciler=reconciler,
        hits=hits, janitor=janitor, sweeper=sweeper, buyer_auth=buyer_auth,
        demo_issuer=demo_issuer,
        metrics=Metrics(settings.replica_id), snapshots=snapshots, live=LiveHub(snapshots),
        login_throttle=login_throttle,
        admission=Admission(max_in_flight=settings.max_in_flight, target=settings.admission_target_ms / 1000,
                            interval=settings.admission_interval_ms / 1000),
        join_admission=Admission(max_in_flight=settings.max_joins_in_flight,
                                 target=settings.admission_target_ms / 1000,
                                 interval=settings.admission_interval_ms / 1000),
    )
    services.gc_pauses.install()
    services.metrics.watch(services)
    if reconciler is not None:
        reconciler.start()
    return services


def payment_provider(settings: Settings) -> PaymentProvider:
    base = settings.stripe_api_base or STRIPE_API
    page = (settings.payment_page_url or base) if settings.payments == "simulator" else None
    return PaymentProvider(settings.stripe_api_key, api_base=base, webhook_secret=settings.stripe_webhook_secret,
                           timeout=settings.payment_timeout_s, page_url=page)


def make_payments(settings: Settings, store: Store, checkout: Checkout) -> tuple[Payments | None, Reconciler | None]:
    """With HC_PAYMENTS on: the replica's payments, wired to its checkout service (a payment confirms through it, so
    that its sold-out flags and counts follow), and its reconciler (not started)."""
    if settings.payments == "off":
        return None, None
    replica = settings.replica_id
    payments = Payments(payment_provider(settings), store, replica=replica, grace=settings.payment_grace_s,
                        confirm=lambda checkout_id: checkout.confirm(checkout_id, replica, by_payment=True),
                        crash_before_capture=settings.failpoint_crash_before_capture)
    checkout.payments = payments
    return payments, Reconciler(payments, interval=settings.payment_reconcile_s)


STOP_STEP_TIMEOUT = 10.0  # seconds one shutdown step may take before the replica gives up on it and says so


async def _bounded(what: str, step: Awaitable[None]) -> None:
    """One shutdown step, given at most STOP_STEP_TIMEOUT: a replica that hangs while stopping keeps a port and a
    slot in nginx, and says nothing about why."""
    try:
        await asyncio.wait_for(step, STOP_STEP_TIMEOUT)
    except TimeoutError:
        log.warning("stopping: %s took more than %.0f s; going on without it", what, STOP_STEP_TIMEOUT)


async def stop_services(services: Services) -> None:
    """Finish accepted purchases first (open batches settle), then stop background tasks and close connections."""
    services.stopping = True
    services.gc_pauses.uninstall()
    await _bounded("the dashboard feed", services.live.close())
    await _bounded("settling accepted purchases", services.strategy.close())
    await _bounded("the sold-out listener", services.sold_out.close())
    await _bounded("the sale schedule", services.schedule.close())
    await _bounded("the last hit counts", services.hits.close())
    await _bounded("the key janitor", services.janitor.close())
    await _bounded("the hold sweeper", services.sweeper.close())
    if services.reconciler is not None:
        await _bounded("the payment reconciler", services.reconciler.close())
    if services.payments is not None:
        await _bounded("the payment provider's connections", services.payments.provider.close())
    await _bounded("Redis", services.redis.aclose())
    await _bounded("PostgreSQL connections in use", services.store.close())


def _log_request(handler: tornado.web.RequestHandler) -> None:
    status = handler.get_status()
    services: Services = handler.application.settings["services"]
    services.metrics.observe(getattr(handler, "route", "other"), handler.request.method or "",
                             status, handler.request.request_time())
    # The path, never the query string: a token pasted into a URL must not end up in the log.
    if status >= 500:
        log.error("%d %s %s", status, handler.request.method, handler.request.path)
    elif services.settings.access_log:
        log.info(
            "%d %s %s %.1fms", status, handler.request.method, handler.request.path,
            1000 * handler.request.request_time(),
        )


class StaticHandler(tornado.web.StaticFileHandler):
    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")


def routes() -> list[tuple[str, type[tornado.web.RequestHandler]]]:
    """Every route of the application, as (pattern, handler); static files come on top, under /static/."""
    return [*purchase.default_handlers, *checkouts.default_handlers, *products.default_handlers,
            *queue.default_handlers, *orders.default_handlers, *health.default_handlers,
            *openapi.default_handlers, *shop.default_handlers, *signin.default_handlers,
            *webhooks.default_handlers,
            *admin_routes.default_handlers]


def make_app(services: Services) -> tornado.web.Application:
    return tornado.web.Application(
        routes(),
        services=services,
        default_handler_class=NotFoundHandler,
        log_function=_log_request,
        cookie_secret=services.settings.cookie_secret,
        xsrf_cookies=True,  # every admin form and POST; the cookie-less JSON API opts out in JsonHandler
        **xsrf_cookie_settings(services.settings),
        login_url="/admin/login",
        static_path=str(resource_dir("static")),
        static_handler_class=StaticHandler,
        jinja=jinja2.Environment(loader=jinja2.FileSystemLoader(resource_dir("templates")), autoescape=True),
        compress_response=False,
        # Dashboards' sockets: a peer that answers no ping within 10 s is closed (Tornado's own ping/pong).
        websocket_ping_interval=10,
        websocket_ping_timeout=10,
    )


def xsrf_cookie_settings(settings: Settings) -> dict[str, Any]:
    """The XSRF cookie follows the session cookie's rules: ``__Host-`` and Secure when the site is https."""
    if settings.secure_cookies:
        return {"xsrf_cookie_name": "__Host-xsrf",
                "xsrf_cookie_kwargs": {"httponly": False, "samesite": "Strict", "path": "/", "secure": True}}
    return {"xsrf_cookie_kwargs": {"httponly": False, "samesite": "Strict", "path": "/"}}


DRAIN_QUIET = 0.2  # seconds without a new request before the idle connections are closed


async def drain(services: Services, grace: float) -> None:
    """Wait until nothing is in flight and no request has started for DRAIN_QUIET seconds (at most ``grace``).

    Each answer meanwhile closes its connection, so nginx's idle connections to this replica are used up and
    closed one by one; the quiet period leaves few for the last close, which can race a request nginx is just
    sending (HTTP keep-alive's own race: nginx then answers 503 with the outcome unknown).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while loop.time() < deadline:
        if services.in_flight == 0 and loop.time() - services.last_request_at >= DRAIN_QUIET:
            return
        try:
            await asyncio.wait_for(services.idle.wait(), deadline - loop.time())
        except TimeoutError:
            break
        await asyncio.sleep(max(0.0, services.last_request_at + DRAIN_QUIET - loop.time()))
    if services.in_flight:
        log.warning("%d request(s) still running after %.0f s; stopping anyway", services.in_flight, grace)


def http_server(app: tornado.web.Application) -> tornado.httpserver.HTTPServer:
    """The HTTP server of a replica (the in-process tests serve their app with it too)."""
    return tornado.httpserver.HTTPServer(
        app, xheaders=False, max_body_size=SERVER_MAX_BODY, max_header_size=SERVER_MAX_HEADERS,
        idle_connection_timeout=75, chunk_size=READ_CHUNK_BYTES,
    )


async def serve(settings: Settings) -> None:
    """Run one replica until SIGTERM/SIGINT, then drain: stop accepting, finish in-flight requests, close."""
    services = await start_services(settings)
    server = http_server(make_app(services))
    if settings.gc_freeze:
        log.info("%d objects of the started replica kept out of garbage collections", freeze_started_heap())
    try:
        server.listen(settings.port, address=settings.host, backlog=LISTEN_BACKLOG)
    except OSError as exc:
        await stop_services(services)
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(settings.host, settings.port) from exc
        raise
    log.info(
        "replica %s serving on http://%s:%d (strategy %s, rate limit %s)", settings.replica_id, settings.host,
        settings.port, settings.strategy, f"{settings.rate_limit}/s" if settings.rate_limit else "off",
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("replica %s stopping: finishing in-flight requests", settings.replica_id)
    # From here every answer says "Connection: close", so nginx stops reusing this replica's connections and sends
    # new purchases to the others; requests already received are answered before anything closes.
    services.stopping = True
    server.stop()  # no new connections
    await drain(services, settings.shutdown_grace)
    # Idle keep-alive connections are closed before the services, so that no request can arrive at a replica
    # that can no longer sell.
    await _bounded("closing client connections", server.close_all_connections())
    await stop_services(services)
    log.info("replica %s stopped", settings.replica_id)
