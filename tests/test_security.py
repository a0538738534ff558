"""What must never leak: stack traces and SQL in error bodies, and secrets in logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

import psutil
import psycopg2
import pytest
import redis

from hypercheckout.app import Services
from hypercheckout.cluster import read_env_file, write_env_file
from hypercheckout.processes import free_port, port_open, tail, wait_until
from hypercheckout.settings import Settings
from tests.helpers import buy, post_raw, settings_env, sql


async def buy_at(client, url: str):  # type: ignore[no-untyped-def]
    return await post_raw(client, url, json.dumps({"user_id": 1, "product_id": 1, "quantity": 1}))


@pytest.mark.gen_test
async def test_an_unexpected_error_is_a_generic_500_without_trace_or_sql(http_client, base_url,
                                                                         services: Services) -> None:
    async def broken(request):  # type: ignore[no-untyped-def]
        raise RuntimeError('column "secret_column" does not exist: SELECT secret_column FROM orders')

    services.checkout.purchase = broken  # type: ignore[method-assign]
    answer = await buy(http_client, base_url)
    assert answer.status == 500
    assert answer.body == {"error": {"code": "internal_error",
                                     "message": "internal error; the request may be retried"}}


@pytest.mark.gen_test
async def test_a_500_is_logged_without_the_query_string(http_client, base_url, services: Services,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    async def broken(request):  # type: ignore[no-untyped-def]
        raise RuntimeError("boom")

    services.checkout.purchase = broken  # type: ignore[method-assign]
    answer = await buy_at(http_client, f"{base_url}/purchase?token=query-sekrit-77")
    assert answer.status == 500
    assert "POST /purchase" in caplog.text and "RuntimeError: boom" in caplog.text  # logged, with its trace
    assert "query-sekrit-77" not in caplog.text


def test_secrets_never_reach_the_log(settings: Settings, tmp_path: Path) -> None:
    token, cookie_secret = "tok-sekrit-1234", "cookie-sekrit-5678"
    parts = urlsplit(settings.database_url)
    # The private server's own password; a server that trusts loopback (HC_TEST_DATABASE_URL) takes any.
    db_password = parts.password or "pg-sekrit-9012"
    with_password = urlunsplit(parts._replace(netloc=f"postgres:{db_password}@{parts.hostname}:{parts.port}"))
    redis_password = urlsplit(settings.redis_url).password
    port = free_port()
    log_path = tmp_path / "replica.log"
    env = {**os.environ, **settings_env(settings), "HC_DATABASE_URL": with_password, "HC_PORT": str(port),
           "HC_ADMIN_TOKEN": token, "HC_COOKIE_SECRET": cookie_secret, "HC_ACCESS_LOG": "true",
           "HC_LOG_LEVEL": "DEBUG", "HC_RATE_LIMIT": "off", "HC_IP_RATE_LIMIT": "off"}
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "hypercheckout", "serve"], env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: process.poll() is not None or port_open(port), timeout=30, what="the replica")
        base = f"http://127.0.0.1:{port}"
        urllib.request.urlopen(urllib.request.Request(
            f"{base}/purchase", data=json.dumps({"user_id": 1, "product_id": 1, "quantity": 1}).encode()))
        # A login attempt without the XSRF cookie, and one with the token in the query string by mistake.
        for url in (f"{base}/admin/login", f"{base}/admin/login?{urlencode({'token': token})}"):
            try:
                urllib.request.urlopen(urllib.request.Request(url, data=urlencode({"token": token}).encode()))
            except urllib.error.HTTPError:
                pass
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    text = log_path.read_text()
    assert "POST /purchase" in text, tail(log_path)  # the access log was on: there was something to leak into
    for secret in (token, cookie_secret, db_password, *([redis_password] if redis_password else [])):
        assert secret not in text, f"{secret!r} is in the log"


def test_the_private_postgresql_wants_its_password_and_stores_it_as_scram(pg_server_url: str) -> None:
    if os.environ.get("HC_TEST_DATABASE_URL"):
        pytest.skip("the server named by HC_TEST_DATABASE_URL is not one of ours")
    parts = urlsplit(pg_server_url)
    assert parts.password
    for credentials in ("postgres", "postgres:not-the-password"):
        url = urlunsplit(parts._replace(netloc=f"{credentials}@{parts.hostname}:{parts.port}"))
        with pytest.raises(psycopg2.OperationalError, match="password"):
            psycopg2.connect(url, connect_timeout=5).close()
    methods = sql(pg_server_url, "SELECT DISTINCT auth_method FROM pg_hba_file_rules")
    assert methods == [("scram-sha-256",)]
    assert sql(pg_server_url, "SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid "
                              "WHERE rolname = 'postgres'") == [(True,)]


def test_the_private_redis_wants_its_password_and_keeps_it_off_the_command_line(redis_url: str) -> None:
    if os.environ.get("HC_TEST_REDIS_URL"):
        pytest.skip("the server named by HC_TEST_REDIS_URL is not one of ours")
    parts = urlsplit(redis_url)
    assert parts.password
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(host=parts.hostname, port=parts.port, socket_timeout=5).ping()
    assert redis.Redis.from_url(redis_url, socket_timeout=5).ping()
    server = next(p for p in psutil.process_iter(["name", "cmdline"])
                  if p.info["name"] == "redis-server" and str(parts.port) in " ".join(p.info["cmdline"] or []))
    assert parts.password not in " ".join(server.info["cmdline"])


def test_cluster_env_is_private_from_the_moment_it_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file holds the admin token and the servers' passwords: its mode is set when it is created, not by a
    chmod afterwards (between the two, anyone could have opened it)."""
    monkeypatch.setattr(os, "chmod", lambda *args, **kwargs: None)
    old_umask = os.umask(0o022)
    try:
        write_env_file(tmp_path / "cluster.env", {"HC_ADMIN_TOKEN": "sekrit token"})
    finally:
        os.umask(old_umask)
    assert (tmp_path / "cluster.env").stat().st_mode & 0o777 == 0o600
    assert read_env_file(tmp_path / "cluster.env") == {"HC_ADMIN_TOKEN": "sekrit token"}
    assert [p.name for p in tmp_path.iterdir()] == ["cluster.env"]
