"""Real PostgreSQL and Redis for every test: private servers started once per session on free loopback ports
(or the ones named by HC_TEST_DATABASE_URL / HC_TEST_REDIS_URL; a Redis Cluster for the tests that want one,
or HC_TEST_REDIS_CLUSTER_URL), a fresh database per test cloned from a migrated
template, and a Redis key prefix of its own per test — no test sees another's state."""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest

from hypercheckout.app import Services, make_app, start_services, stop_services
from hypercheckout.app import http_server as replica_server
from hypercheckout.localservices import PrivatePostgres, PrivateRedis, PrivateRedisCluster
from hypercheckout.settings import Settings
from hypercheckout.store import Store

TEMPLATE_DB = f"hc_template_{os.getpid()}"


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def admin_execute(server_url: str, sql: str) -> None:
    conn = psycopg2.connect(server_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    if os.environ.get("HC_TEST_DATABASE_URL"):
        yield os.environ["HC_TEST_DATABASE_URL"]
        return
    # Under /tmp, not pytest's 0700 tmp dir: as root, PostgreSQL runs as another user who must reach its files.
    with tempfile.TemporaryDirectory(prefix="hc-test-pg-") as tmp:
        os.chmod(tmp, 0o755)
        server = PrivatePostgres(Path(tmp) / "data", durable=False, max_connections=300)
        try:
            yield server.start()
        finally:
            server.stop()


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    if os.environ.get("HC_TEST_REDIS_URL"):
        yield os.environ["HC_TEST_REDIS_URL"]
        return
    with tempfile.TemporaryDirectory(prefix="hc-test-redis-") as tmp:
        server = PrivateRedis(Path(tmp))
        try:
            yield server.start()
        finally:
            server.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[PrivateRedisCluster | None]:
    """A private Redis Cluster (three masters, three replicas), or None when HC_TEST_REDIS_CLUSTER_URL names one."""
    if os.environ.get("HC_TEST_REDIS_CLUSTER_URL"):
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="hc-test-redis-cluster-") as tmp:
        cluster = PrivateRedisCluster(Path(tmp) / "cluster")
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()


@pytest.fixture(scope="session")
def redis_cluster_url(redis_cluster: PrivateRedisCluster | None) -> str:
    return redis_cluster.url if redis_cluster else os.environ["HC_TEST_REDIS_CLUSTER_URL"]


@pytest.fixture
def redis_url(request: pytest.FixtureRequest, redis_server_url: str) -> str:
    """One Redis server, or the Redis Cluster for a test marked ``@ON_BOTH_REDIS`` (tests/helpers.py); the
    cluster starts only if a test asks for it."""
    if getattr(request, "param", "one server") == "cluster":
        return str(request.getfixturevalue("redis_cluster_url"))
    return redis_server_url


@pytest.fixture(scope="session")
def template_db(pg_server_url: str) -> Iterator[str]:
    """A database with the schema and seed, copied for each test (CREATE DATABASE … TEMPLATE is fast)."""
    admin_execute(pg_server_url, f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}"')
    admin_execute(pg_server_url, f'CREATE DATABASE "{TEMPLATE_DB}"')

    async def migrate() -> None:
        store = await Store.connect(with_database(pg_server_url, TEMPLATE_DB), size=1, timeout=10)
        try:
            await store.migrate()
        finally:
            await store.close()

    # A private loop that is never made current: asyncio.run() would clear the current loop on exit, and a test
    # whose first fixture needing the template comes after pytest-tornado's io_loop would then never run.
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(migrate())
    finally:
        loop.close()
    yield TEMPLATE_DB
    admin_execute(pg_server_url, f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)')


@pytest.fixture
def database_url(pg_server_url: str, template_db: str) -> Iterator[str]:
    name = f"hc_test_{uuid.uuid4().hex[:12]}"
    admin_execute(pg_server_url, f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield with_database(pg_server_url, name)
    admin_execute(pg_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_prefix() -> str:
    return f"hct-{uuid.uuid4().hex[:10]}:"


@pytest.fixture
def settings(request: pytest.FixtureRequest, database_url: str, redis_url: str, redis_prefix: str) -> Settings:
    """Test defaults: the limiter off (tests that want it turn it on); everything else, admission control
    included, as in production.

    ``@pytest.mark.settings(name=value, …)`` on a test changes individual settings.
    """
    marker = request.node.get_closest_marker("settings")
    values = {
        "database_url": database_url,
        "redis_url": redis_url,
        "redis_prefix": redis_prefix,
        "replica_id": "test-1",
        "rate_limit": None,
        "ip_rate_limit": None,
        "admin_token": "test-admin-token",
        "cookie_secret": "test-cookie-secret",
    }
    return Settings.from_env({}, **{**values, **(marker.kwargs if marker else {})})


@pytest.fixture
def services(io_loop, settings: Settings) -> Iterator[Services]:  # type: ignore[no-untyped-def]
    """The production services, started on pytest-tornado's loop. Override ``settings`` to change them."""
    started = io_loop.run_sync(lambda: start_services(settings))
    yield started
    io_loop.run_sync(lambda: stop_services(started))


@pytest.fixture
def app(services: Services):  # type: ignore[no-untyped-def]
    return make_app(services)


@pytest.fixture
def http_server(request, io_loop, _unused_port, app):  # type: ignore[no-untyped-def]
    """pytest-tornado's server, built as a replica builds its own: the tests meet its limits and its read size."""
    server = replica_server(app)
    server.add_socket(_unused_port[0])
    yield server
    server.stop()
    io_loop.run_sync(server.close_all_connections, timeout=request.config.option.async_test_timeout)
