"""The admin side: login, XSRF, the page, actions, and the live WebSocket — through real HTTP."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from http.cookies import SimpleCookie
from urllib.parse import urlencode

import pytest
import tornado.websocket
from tornado.httpclient import HTTPClientError, HTTPRequest

from hypercheckout.app import Services
from hypercheckout.limiter_keys import limit_key
from hypercheckout.processes import free_port
from tests.helpers import ON_BOTH_REDIS, orders_of, run_cli, settings_env, sql, stock_of

TOKEN = "test-admin-token"  # the settings fixture's


class Browser:
    """Keeps cookies like a browser, so XSRF and the session work as they do for a person."""

    def __init__(self, http_client, base_url: str, xsrf_cookie: str = "_xsrf") -> None:  # type: ignore[no-untyped-def]
        self.client = http_client
        self.base_url = base_url
        self.xsrf_cookie = xsrf_cookie
        self.cookies: dict[str, str] = {}

    def _remember(self, response) -> None:  # type: ignore[no-untyped-def]
        for header in response.headers.get_list("Set-Cookie"):
            for name, morsel in SimpleCookie(header).items():
                self.cookies[name] = morsel.value

    @property
    def cookie_header(self) -> str:
        return "; ".join(f"{k}={v}" for k, v in self.cookies.items())

    async def get(self, path: str):  # type: ignore[no-untyped-def]
        response = await self.client.fetch(self.base_url + path, headers={"Cookie": self.cookie_header},
                                           follow_redirects=False, raise_error=False)
        self._remember(response)
        return response

    async def post(self, path: str, fields: dict[str, str], *, xsrf: bool = True,  # type: ignore[no-untyped-def]
                   headers: dict[str, str] | None = None):
        if xsrf:
            if self.xsrf_cookie not in self.cookies:
                await self.get("/admin/login")
            fields = {**fields, "_xsrf": self.cookies[self.xsrf_cookie]}
        response = await self.client.fetch(self.base_url + path, method="POST", body=urlencode(fields),
                                           headers={"Cookie": self.cookie_header, **(headers or {})},
                                           follow_redirects=False, raise_error=False)
        self._remember(response)
        return response

    async def log_in(self) -> None:
        response = await self.post("/admin/login", {"token": TOKEN})
        assert response.code == 303, response.body


@pytest.fixture
def browser(http_client, base_url) -> Browser:  # type: ignore[no-untyped-def]
    return Browser(http_client, base_url)


@pytest.mark.gen_test
async def test_the_dashboard_requires_a_login(browser: Browser) -> None:
    response = await browser.get("/admin")
    assert response.code == 302
    assert response.headers["Location"].startswith("/admin/login")


@pytest.mark.gen_test
async def test_a_post_without_xsrf_token_is_refused(browser: Browser) -> None:
    response = await browser.post("/admin/login", {"token": TOKEN}, xsrf=False)
    assert response.code == 403
    assert "hc_admin" not in browser.cookies


@pytest.mark.gen_test
async def test_the_right_token_opens_a_strict_httponly_session(browser: Browser) -> None:
    response = await browser.post("/admin/login", {"token": TOKEN})
    assert response.code == 303 and response.headers["Location"] == "/admin"
    session = next(h for h in response.headers.get_list("Set-Cookie") if h.startswith("hc_admin="))
    assert "HttpOnly" in session and "SameSite=Strict" in session
    expires = parsedate_to_datetime(session.split("expires=")[1].split(";")[0])
    assert timedelta(hours=11) < expires - datetime.now(UTC) <= timedelta(hours=12)
    page = await browser.get("/admin")
    assert page.code == 200
    assert b"Flash-sale product" in page.body  # the first snapshot is in the page itself
    out = await browser.post("/admin/logout", {})
    assert out.code == 303
    assert (await browser.get("/admin")).code == 302


def from_address(address: str) -> dict[str, str]:
    """As nginx (a trusted proxy on loopback) names the client."""
    return {"X-Real-IP": address}


@pytest.mark.gen_test
@pytest.mark.settings(login_failures_per_address=2)  # and every purchase limit off (the fixture's default)
async def test_failed_logins_lock_the_address_out_without_any_purchase_limit(browser: Browser,
                                                                             services: Services) -> None:
    assert not services.settings.limiter_enabled
    first = await browser.post("/admin/login", {"token": "guess-1"})
    second = await browser.post("/admin/login", {"token": "guess-2"})
    assert (first.code, second.code) == (401, 401)
    assert b"Wrong token" in first.body
    third = await browser.post("/admin/login", {"token": TOKEN})  # even the right one: the address is locked out
    assert third.code == 429 and 3500 <= int(third.headers["Retry-After"]) <= 3600
    assert b"from this address" in third.body
    assert "hc_admin" not in browser.cookies
    assert services.failed_logins == 2
    # Another address is not affected.
    other = await browser.post("/admin/login", {"token": TOKEN}, headers=from_address("10.1.1.1"))
    assert other.code == 303


@pytest.mark.gen_test
@pytest.mark.settings(login_failures_per_address=100, login_failures_total=3)
async def test_at_most_the_total_of_failed_logins_an_hour_from_all_addresses(browser: Browser) -> None:
    for n in range(3):
        wrong = await browser.post("/admin/login", {"token": "guess"}, headers=from_address(f"10.2.0.{n}"))
        assert wrong.code == 401
    closed = await browser.post("/admin/login", {"token": TOKEN}, headers=from_address("10.2.0.99"))
    assert closed.code == 429 and b"from all addresses" in closed.body


@pytest.mark.gen_test
@pytest.mark.settings(redis_url=f"redis://127.0.0.1:{free_port()}/0")
async def test_logins_fail_closed_when_redis_is_unreachable(browser: Browser, services: Services) -> None:
    answer = await browser.post("/admin/login", {"token": TOKEN})
    assert answer.code == 503 and b"Redis is unreachable" in answer.body
    assert "hc_admin" not in browser.cookies


@ON_BOTH_REDIS
@pytest.mark.gen_test
@pytest.mark.settings(login_failures_per_address=1)
async def test_a_login_lockout_is_listed_and_lifted_one_address_at_a_time(browser: Browser,
                                                                          services: Services) -> None:
    for address in ("10.3.0.1", "10.3.0.2"):
        assert (await browser.post("/admin/login", {"token": "x"}, headers=from_address(address))).code == 401
        assert (await browser.post("/admin/login", {"token": TOKEN}, headers=from_address(address))).code == 429
    await browser.log_in()  # from 127.0.0.1, not locked out
    services.snapshots._cached = None  # type: ignore[attr-defined]  # read afresh, not the 0.25 s cache
    snapshot = await services.snapshots.get()
    listed = {(b["kind"], b["value"]) for b in snapshot["bans"]}
    assert listed == {("login", "10.3.0.1"), ("login", "10.3.0.2")}
    # The dashboard's Unban button on one row lifts that one lockout only.
    lifted = await browser.post("/admin/unban", {"kind": "login", "value": "10.3.0.1"})
    assert lifted.code == 200 and json.loads(lifted.body)["removed"] == 1
    again = Browser(browser.client, browser.base_url)
    assert (await again.post("/admin/login", {"token": TOKEN}, headers=from_address("10.3.0.1"))).code == 303
    assert (await again.post("/admin/login", {"token": TOKEN}, headers=from_address("10.3.0.2"))).code == 429
    # And the CLI lifts the other, as `unban --ip` does for purchase bans.
    done = run_cli("unban", "--ip", "10.3.0.2", env=settings_env(services.settings))
    assert done.returncode == 0, done.stderr
    assert (await again.post("/admin/login", {"token": TOKEN}, headers=from_address("10.3.0.2"))).code == 303


@pytest.mark.gen_test
async def test_an_open_redirect_after_login_is_not_possible(browser: Browser) -> None:
    response = await browser.post("/admin/login?next=//evil.example/", {"token": TOKEN})
    assert response.headers["Location"] == "/admin"


@pytest.mark.gen_test
async def test_reset_from_the_dashboard_changes_the_data(browser: Browser, database_url: str) -> None:
    sql(database_url, "INSERT INTO orders (user_id, product_id, quantity, replica) VALUES (1, 1, 2, 'x')")
    assert (await browser.post("/admin/reset", {"product_id": "1", "stock": "77"})).code == 403  # not logged in
    await browser.log_in()
    response = await browser.post("/admin/reset", {"product_id": "1", "stock": "77"})
    assert response.code == 200, response.body
    assert json.loads(response.body)["stock"] == 77
    assert (stock_of(database_url), orders_of(database_url)) == (77, {})
    bad = await browser.post("/admin/reset", {"product_id": "1", "stock": "-3"})
    assert bad.code == 400 and json.loads(bad.body)["error"]["code"] == "invalid_request"
    missing = await browser.post("/admin/reset", {"product_id": "99", "stock": "3"})
    assert missing.code == 404


@pytest.mark.gen_test
async def test_odd_numbers_from_the_dashboard_are_400s_and_change_nothing(browser: Browser, database_url: str) -> None:
    await browser.log_in()
    for fields in ({"product_id": "1", "stock": "\u00b2"}, {"product_id": "\u00b2", "stock": "5"},
                   {"product_id": "1", "stock": "3000000000"}, {"product_id": "99999999999999999999", "stock": "5"},
                   {"product_id": "1", "stock": "\uff15"}):  # superscript two, an int overflow, a full-width five
        answer = await browser.post("/admin/reset", fields)
        assert answer.code == 400, (fields, answer.body)
        assert json.loads(answer.body)["error"]["code"] == "invalid_request"
    for fields in ({"kind": "user", "value": "\u00b2"}, {"kind": "ip", "value": "not-an-address"},
                   {"kind": "user", "value": ""}):
        answer = await browser.post("/admin/unban", fields)
        assert answer.code == 400, (fields, answer.body)
    assert stock_of(database_url) == 10_000


@pytest.mark.gen_test
async def test_a_next_with_a_line_break_cannot_break_the_login_redirect(browser: Browser) -> None:
    response = await browser.post("/admin/login?next=/admin%0d%0aSet-Cookie:%20x=1", {"token": TOKEN})
    assert response.code == 303 and response.headers["Location"] == "/admin"
    kept = await browser.post("/admin/login?next=/admin/", {"token": TOKEN})
    assert kept.headers["Location"] == "/admin/"


@ON_BOTH_REDIS
@pytest.mark.gen_test
async def test_unban_and_clear_all_from_the_dashboard(browser: Browser, services: Services) -> None:
    client = services.redis
    prefix = services.settings.redis_prefix
    user_ban, ip_ban = limit_key(prefix, "ban", "user:5"), limit_key(prefix, "ban", "ip:10.9.9.9")
    await client.set(user_ban, 1, px=60_000)
    await client.set(ip_ban, 1, px=60_000)
    await browser.log_in()
    assert (await browser.post("/admin/unban", {"kind": "user", "value": "5"})).code == 200
    assert await client.exists(user_ban) == 0
    assert await client.exists(ip_ban) == 1
    assert (await browser.post("/admin/clear-limits", {})).code == 200
    assert await client.exists(ip_ban) == 0


@pytest.mark.gen_test
async def test_admin_pages_carry_a_strict_content_security_policy_and_the_other_headers(browser: Browser) -> None:
    page = await browser.get("/admin/login")
    policy = {d.split()[0]: d.split()[1:] for d in page.headers["Content-Security-Policy"].split("; ")}
    assert policy["default-src"] == ["'self'"] and policy["script-src"] == ["'self'"]  # no inline script
    assert policy["object-src"] == ["'none'"] and policy["base-uri"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert (page.headers["X-Content-Type-Options"], page.headers["Referrer-Policy"]) == ("nosniff", "no-referrer")
    assert b"<script>" not in page.body and b" style=" not in page.body and b" on" + b"click=" not in page.body
    static = await browser.get("/static/dashboard.js")
    assert static.code == 200 and static.headers["X-Content-Type-Options"] == "nosniff"
    api = await browser.get("/products")
    assert api.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.gen_test
@pytest.mark.settings(public_urls=("https://shop.example",))
async def test_over_https_the_admin_cookies_are_host_prefixed_and_secure(http_client, base_url) -> None:
    browser = Browser(http_client, base_url, xsrf_cookie="__Host-xsrf")
    login = await browser.get("/admin/login")
    xsrf = next(h for h in login.headers.get_list("Set-Cookie") if h.startswith("__Host-xsrf="))
    assert "Secure" in xsrf and "Path=/" in xsrf and "Domain" not in xsrf
    response = await browser.post("/admin/login", {"token": TOKEN})
    assert response.code == 303, response.body
    session = next(h for h in response.headers.get_list("Set-Cookie") if h.startswith("__Host-hc_admin="))
    for attribute in ("Secure", "HttpOnly", "SameSite=Strict", "Path=/;"):
        assert attribute in session + ";", session
    assert (await browser.get("/admin")).code == 200  # the session works under its new name


@pytest.mark.gen_test
@pytest.mark.settings(public_urls=("https://shop.example",))
async def test_the_live_feed_accepts_only_the_configured_public_origins(http_client, base_url) -> None:
    browser = Browser(http_client, base_url, xsrf_cookie="__Host-xsrf")
    await browser.log_in()
    host = base_url.split("//")[1]
    for origin in (f"http://{host}", "https://evil.example", "https://shop.example.evil.example"):
        with pytest.raises(HTTPClientError) as refused:
            await tornado.websocket.websocket_connect(ws_request(base_url, browser.cookie_header, origin))
        assert refused.value.code == 403, origin
    socket = await tornado.websocket.websocket_connect(
        ws_request(base_url, browser.cookie_header, "https://shop.example"))
    assert json.loads(await socket.read_message())["products"]
    socket.close()


def ws_request(base_url: str, cookie: str = "", origin: str | None = None) -> HTTPRequest:
    headers = {"Cookie": cookie}
    if origin:
        headers["Origin"] = origin
    return HTTPRequest(base_url.replace("http", "ws") + "/admin/live", headers=headers)


@pytest.mark.gen_test
async def test_the_live_feed_refuses_strangers_and_other_origins(browser: Browser, base_url: str) -> None:
    with pytest.raises(HTTPClientError) as anonymous:
        await tornado.websocket.websocket_connect(ws_request(base_url))
    assert anonymous.value.code == 403
    await browser.log_in()
    with pytest.raises(HTTPClientError) as foreign:
        await tornado.websocket.websocket_connect(ws_request(base_url, browser.cookie_header, "http://evil.example"))
    assert foreign.value.code == 403


@pytest.mark.gen_test
async def test_the_live_feed_pushes_snapshots_twice_a_second(browser: Browser, base_url: str,
                                                             services: Services) -> None:
    await browser.log_in()
    host = base_url.split("//")[1]
    socket = await tornado.websocket.websocket_connect(ws_request(base_url, browser.cookie_header, f"http://{host}"))
    second = await tornado.websocket.websocket_connect(ws_request(base_url, browser.cookie_header, f"http://{host}"))
    first = json.loads(await socket.read_message())
    assert first["products"][0]["stock"] == 10_000 and first["redis"] == "ok" and first["postgres"] == "ok"
    for _ in range(3):
        assert json.loads(await socket.read_message())["time"] >= first["time"]
        await second.read_message()
    # Two dashboards, four ticks: the queries ran once per tick, not once per dashboard.
    assert services.snapshots.computations <= 6
    socket.close()
    second.close()


@pytest.mark.gen_test
async def test_the_dashboard_says_when_redis_is_unreachable(services: Services) -> None:
    import redis.asyncio as aioredis

    from hypercheckout.admin.snapshot import Snapshotter
    from hypercheckout.login_throttle import LoginThrottle
    from hypercheckout.processes import free_port

    dead = aioredis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2)
    try:
        throttle = LoginThrottle(dead, prefix=services.settings.redis_prefix, per_address=10, total=100)
        snapshot = await Snapshotter(services.settings, services.store, dead, services.limiter, throttle).get()
    finally:
        await dead.aclose()
    assert (snapshot["postgres"], snapshot["redis"]) == ("ok", "unreachable")
    assert snapshot["products"][0]["stock"] == 10_000  # PostgreSQL's side still shows


@pytest.mark.gen_test
async def test_the_dashboards_product_forms_create_update_delete_and_refuse_bad_fields(
        browser: Browser, services: Services) -> None:
    url = services.settings.database_url
    assert (await browser.post("/admin/products", {"name": "x", "stock": "1"})).code == 403  # not logged in
    await browser.log_in()
    before = sql(url, "SELECT * FROM products ORDER BY id")
    for fields in ({"name": "x", "stock": "ten"}, {"name": "", "stock": "1"}, {"stock": "1"},
                   {"name": "x", "stock": "1", "starts_at": "soon"}, {"name": "x", "stock": "1", "colour": "red"},
                   {"name": "x", "stock": "1", "starts_at": "+60", "ends_at": "+30"},
                   {"name": "x", "stock": "1", "max_per_order": "11"}):
        refused = await browser.post("/admin/products", fields)
        assert refused.code == 400, (fields, refused.body)
        assert json.loads(refused.body)["error"]["code"] == "invalid_request"
    assert sql(url, "SELECT * FROM products ORDER BY id") == before
    # Empty optional fields of the creation form mean "not set".
    created = await browser.post("/admin/products", {"name": "Drop", "stock": "12", "starts_at": "+600",
                                                     "ends_at": "", "per_user_limit": "", "max_per_order": ""})
    product = json.loads(created.body)["product"]
    assert (product["status"], product["per_user_limit"], product["ends_at"]) == ("scheduled", None, None)
    for _ in range(100):  # this replica re-reads the schedule at once (the others on the announcement)
        if services.schedule.rules(product["id"]) is not None:
            break
        await asyncio.sleep(0.01)
    assert services.schedule.rules(product["id"]) is not None
    updated = await browser.post(f"/admin/products/{product['id']}", {"starts_at": "", "per_user_limit": "3"})
    assert json.loads(updated.body)["product"]["status"] == "live"
    assert json.loads(updated.body)["product"]["per_user_limit"] == 3
    bad = await browser.post(f"/admin/products/{product['id']}", {"ends_at": "2000-01-01T00:00:00Z",
                                                                   "starts_at": "2001-01-01T00:00:00Z"})
    assert bad.code == 400
    # The card's waiting-room fields: opened, the rate changed live, empty numbers leave them as they are.
    queued = await browser.post(f"/admin/products/{product['id']}", {"waiting_room": "on", "admit_per_second": "40",
                                                                      "pass_seconds": ""})
    body = json.loads(queued.body)["product"]
    assert (body["waiting_room"], body["admit_per_second"], body["pass_seconds"]) == (True, 40, 120)
    faster = await browser.post(f"/admin/products/{product['id']}", {"admit_per_second": "80"})
    assert json.loads(faster.body)["product"]["admit_per_second"] == 80
    assert (await browser.post(f"/admin/products/{product['id']}", {"waiting_room": "maybe"})).code == 400
    closed = await browser.post(f"/admin/products/{product['id']}", {"waiting_room": "off", "admit_per_second": ""})
    assert json.loads(closed.body)["product"]["waiting_room"] is False
    sql(url, "INSERT INTO orders (user_id, product_id, quantity, replica) VALUES (1, %s, 1, 'x')", (product["id"],))
    kept = await browser.post(f"/admin/products/{product['id']}/delete", {})
    assert (kept.code, json.loads(kept.body)["error"]["code"]) == (409, "has_orders")
    deleted = await browser.post(f"/admin/products/{product['id']}/delete", {"with_orders": "true"})
    assert json.loads(deleted.body)["deleted_orders"] == 1
    assert sql(url, "SELECT count(*) FROM products WHERE id = %s", (product["id"],)) == [(0,)]
