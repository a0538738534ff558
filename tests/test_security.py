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

import pytest

from hypercheckout.app import Services
from hypercheckout.localservices import free_port, port_open, tail, wait_until
from hypercheckout.settings import Settings
from tests.helpers import buy, post_raw, settings_env


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
    token, cookie_secret, db_password = "tok-sekrit-1234", "cookie-sekrit-5678", "pg-sekrit-9012"
    parts = urlsplit(settings.database_url)
    with_password = urlunsplit(parts._replace(netloc=f"postgres:{db_password}@{parts.hostname}:{parts.port}"))
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
    for secret in (token, cookie_secret, db_password):
        assert secret not in text, f"{secret!r} is in the log"
