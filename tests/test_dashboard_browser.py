"""The dashboard as an operator uses it: headless Chromium against a real `hypercheckout up` (three replicas behind
nginx) while purchases are fired at it — log in, watch stock and per-replica counts move, reset, unban.

A screenshot taken mid-load is saved under ``HC_TEST_ARTIFACTS`` (default: test-artifacts/ in the checkout).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from hypercheckout.processes import wait_until
from tests.clusters import RunningCluster, cluster_workdir, purchase, start_cluster, stop_cluster
from tests.helpers import buy

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# No network beyond loopback here: Chromium's own background traffic (updates, safe browsing, …) is switched off.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
TOKEN = "browser-test-token"
SPAMMER = 424242
ARTIFACTS = Path(os.environ.get("HC_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"))

playwright_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
if not os.access(CHROMIUM, os.X_OK):
    if os.environ.get("CI"):  # `make test` installs it: in CI its absence is a broken install step, not a skip
        raise RuntimeError(f"{CHROMIUM} is missing in CI")
    pytest.skip("Debian's chromium is not installed (make test installs it)", allow_module_level=True)
expect = playwright_api.expect


class SteadyLoad(threading.Thread):
    """Buyers, each buying one unit at a time with its own user id, until stopped; keeps every answer."""

    def __init__(self, url: str, buyers: int = 8) -> None:
        super().__init__(name="steady-load", daemon=True)
        self.url = url
        self.buyers = buyers
        self.answers: list[tuple[int, int | None, str | None]] = []  # (status, order id, error code)
        self._stop_requested = threading.Event()

    def run(self) -> None:
        asyncio.run(self._load())

    async def _load(self) -> None:
        client = SimpleAsyncHTTPClient(force_instance=True, max_clients=self.buyers)

        async def buyer(index: int) -> None:
            n = 0
            while not self._stop_requested.is_set():
                n += 1
                answer = await buy(client, self.url, user=index * 1_000_000 + n)
                self.answers.append((answer.status, answer.body.get("order_id"),
                                     (answer.body.get("error") or {}).get("code")))
                await asyncio.sleep(0.005)  # a steady stream the page can be watched under, not a flood

        try:
            await asyncio.gather(*(buyer(i) for i in range(1, self.buyers + 1)))
        finally:
            client.close()

    def finish(self) -> Counter[int | str]:
        """Answers by status; a 503 ``overloaded`` (admission control shedding load on a machine that is busy with
        more than this test: nothing sold, Retry-After set) is counted apart from any other 503."""
        self._stop_requested.set()
        self.join(30)
        assert not self.is_alive(), "the load did not stop"
        return Counter("overloaded" if (status, code) == (503, "overloaded") else status
                       for status, _, code in self.answers)


@pytest.fixture(scope="module")
def cluster() -> Iterator[RunningCluster]:
    with cluster_workdir() as workdir:
        # Buyers are limited (so that one can get banned); every buyer here comes from 127.0.0.1, so the address
        # limit is off.
        running = start_cluster(workdir / "browser", HC_ADMIN_TOKEN=TOKEN, HC_RATE_LIMIT="5/s", HC_RATE_BURST="5",
                                HC_BAN_AFTER="5", HC_BAN_SECONDS="300")
        try:
            yield running
        finally:
            stop_cluster(running)


@pytest.fixture
def page(cluster: RunningCluster) -> Iterator[object]:
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1360, "height": 1100})
            page = context.new_page()
            page.set_default_timeout(15_000)
            # The admin pages' Content-Security-Policy allows no inline script or style: anything the page needs
            # and the policy blocks shows up here (Chromium reports each refusal on the console).
            refused: list[str] = []
            page.on("console", lambda message: refused.append(message.text)
                    if "Content Security Policy" in message.text else None)
            errors: list[str] = []  # an uncaught exception in the page's own code
            page.on("pageerror", lambda error: errors.append(str(error)))
            yield page
            assert refused == [], refused
            assert errors == [], errors
        finally:
            browser.close()


def log_in(page, url: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{url}/admin")
    expect(page).to_have_url(re.compile(r"/admin/login"))
    page.fill("#token", "not-the-token")
    page.click("button[type=submit]")
    expect(page.get_by_role("alert")).to_have_text("Wrong token.")
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{url}/admin")
    expect(page.locator("#connection")).to_have_text("live")


def shown_number(page, selector: str) -> int:  # type: ignore[no-untyped-def]
    return int(page.locator(selector).inner_text().replace(",", ""))


class Pushes:
    """Counts the snapshots the page receives over its WebSocket."""

    def __init__(self, page) -> None:  # type: ignore[no-untyped-def]
        self.count = 0
        page.on("websocket", lambda ws: ws.on("framereceived", self._frame))

    def _frame(self, _payload: object) -> None:
        self.count += 1

    def wait_for(self, more: int, page, at_least_seconds: float) -> None:  # type: ignore[no-untyped-def]
        """Let ``more`` pushes arrive and ``at_least_seconds`` pass (playwright dispatches events while waiting)."""
        target, deadline = self.count + more, time.monotonic() + at_least_seconds
        give_up = deadline + 15
        while self.count < target or time.monotonic() < deadline:
            assert time.monotonic() < give_up, f"only {self.count} pushes, wanted {target}"
            page.wait_for_timeout(100)


def test_a_reset_sends_the_value_typed_however_many_pushes_arrive_before_the_click(
        cluster: RunningCluster, page) -> None:  # type: ignore[no-untyped-def]
    """The live refresh must never overwrite what an operator typed: a reset deletes the product's orders, and it
    must do so with the number on the operator's screen (regression: a push re-rendered the input)."""
    cluster.cli("reset", "--stock", "5000")
    pushes = Pushes(page)
    log_in(page, cluster.url)
    stock = page.locator("#product-1 [data-field=stock]")
    expect(stock).to_have_text("5,000")
    dialogs: list[str] = []
    load = SteadyLoad(cluster.url)
    load.start()
    try:
        page.wait_for_function("() => Number(document.querySelector('#product-1 [data-field=stock]')"
                               ".textContent.replace(/,/g, '')) < 4990")
        page.fill("#reset-stock-1", "321")
        page.locator("#products-title").click()  # the field loses focus: typed, not yet sent
        moving = shown_number(page, "#product-1 [data-field=stock]")
        pushes.wait_for(4, page, at_least_seconds=2.0)
        assert shown_number(page, "#product-1 [data-field=stock]") < moving, "the figures stopped updating"
        assert page.input_value("#reset-stock-1") == "321"
        page.once("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.accept()))
        page.click("#reset-1")
        expect(page.locator("#action-result")).to_have_text(
            re.compile(r"^Product 1 reset to 321 units; [\d,]+ orders deleted\.$"))
    finally:
        statuses = load.finish()
    assert set(statuses) <= {200, "overloaded"} and statuses[200] > 0, statuses
    assert "to 321 units?" in dialogs[0], dialogs
    status = cluster.status()["products"][0]
    # The load kept buying after the reset: what it bought since comes out of the 321 units.
    assert status["initial_stock"] == 321 and status["stock"] + status["sold"] == 321, status
    expect(stock).to_have_text(f"{status['stock']:,}")
    # Once sent and accepted, the field follows the product again.
    assert page.input_value("#reset-stock-1") == "321"


def test_an_operator_watches_a_sale_resets_it_and_unbans_a_spammer(cluster: RunningCluster, page) -> None:  # type: ignore[no-untyped-def]
    cluster.cli("reset", "--stock", "5000")
    log_in(page, cluster.url)
    stock = page.locator("#product-1 [data-field=stock]")
    expect(stock).to_have_text("5,000")

    load = SteadyLoad(cluster.url)
    load.start()
    try:
        # Stock drops while we watch, and the three replicas' bars all move: nginx spreads the load.
        page.wait_for_function("() => Number(document.querySelector('#product-1 [data-field=stock]')"
                               ".textContent.replace(/,/g, '')) < 4900")
        page.wait_for_function("""() => {
            const counts = [...document.querySelectorAll('#replicas .bar[data-replica] .count')]
                .map((c) => Number(c.dataset.count));
            return counts.length === 3 && counts.every((n) => n >= 20);
        }""")
        expect(page.locator("#replicas .bar[data-replica]")).to_have_count(3)
        # The chart is fed per second from every replica's counts: a complete second with sales shows on it.
        page.wait_for_function("() => /200: [1-9]/.test(document.querySelector('#rate-now').textContent)")
        first = shown_number(page, "#product-1 [data-field=stock]")
        page.wait_for_function(f"() => Number(document.querySelector('#product-1 [data-field=stock]')"
                               f".textContent.replace(/,/g, '')) < {first}")  # still moving: it is live
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard-mid-load.png"), full_page=True)
        page.set_viewport_size({"width": 390, "height": 844})  # a phone: one column, nothing cut off
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        page.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)
        page.set_viewport_size({"width": 1360, "height": 1100})
    finally:
        statuses = load.finish()

    assert set(statuses) <= {200, "overloaded"} and statuses[200] > 0, statuses
    sold = statuses[200]
    status = cluster.status()["products"][0]
    assert (status["stock"], status["sold"]) == (5000 - sold, sold)
    # Once the load stops, the page settles on exactly what PostgreSQL says.
    expect(stock).to_have_text(f"{5000 - sold:,}")
    order_ids = {order_id for status, order_id, _ in load.answers if status == 200}
    recent = [int(cell) for cell in page.locator("#orders tr td:first-child").all_inner_texts()]
    assert len(recent) == 20 and set(recent) <= order_ids

    # Reset: the confirmation names what will be deleted, and the page shows the new stock within a second or so.
    dialogs: list[str] = []
    page.once("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.accept()))
    page.fill("#reset-stock-1", "777")
    page.click("#reset-1")
    expect(stock).to_have_text("777", timeout=3_000)
    assert f"({sold:,} units sold)" in dialogs[0], dialogs
    assert cluster.status()["products"][0] == {**status, "stock": 777, "available": 777, "held": 0,
                                                    "initial_stock": 777, "sold": 0}

    # A spammer gets banned; the ban shows up on the dashboard and its button lifts it.
    answers = [purchase(cluster.url, SPAMMER)[0] for _ in range(20)]
    assert answers[-1] == 429
    ban_row = page.locator(f"#bans tr[data-ban='user:{SPAMMER}']")
    expect(ban_row).to_be_visible()
    ban_row.get_by_role("button", name="Unban").click()
    expect(ban_row).to_have_count(0, timeout=3_000)
    expect(page.locator("#action-result")).to_have_text(f"Unbanned user {SPAMMER}.")
    # Other replicas may remember the ban for HC_LOCAL_DENY_MS (250 ms) more: one purchase goes through by then.
    seen: list[tuple[int, dict]] = []  # type: ignore[type-arg]
    wait_until(lambda: seen.append(purchase(cluster.url, SPAMMER)) or seen[-1][0] != 429, timeout=1.0,
               what="the unbanned buyer to be served", interval=0.02)
    assert seen[-1][0] == 200, json.dumps(seen[-1][1])

    # The replica feeding the page dies: the page reconnects by itself, through nginx, to another one.
    feeding = page.locator("#served-by").inner_text()
    cluster.replica_process(feeding).send_signal(signal.SIGKILL)
    expect(page.locator("#served-by")).not_to_have_text(feeding, timeout=10_000)
    expect(page.locator("#connection")).to_have_text("live")
    # The spammer's purchases (its burst, then the one after the unban), as the new replica reads PostgreSQL.
    left = cluster.status()["products"][0]["stock"]
    assert left == 777 - answers.count(200) - 1
    expect(stock).to_have_text(f"{left:,}")


def test_an_operator_stages_a_drop_and_watches_it_count_down_to_the_start(  # type: ignore[no-untyped-def]
        cluster: RunningCluster, page) -> None:
    log_in(page, cluster.url)
    page.click("#new-product summary")
    form = page.locator("#create-product")
    result = page.locator("#action-result")
    # A bad field: the server's reason on the page, nothing created.
    form.locator("[name=name]").fill("Sneaker drop")
    form.locator("[name=stock]").fill("ten")
    page.click("#create-submit")
    expect(result).to_have_text(re.compile(r"^Create failed: stock must be a whole number .* Nothing was created\.$"))
    assert "Sneaker drop" not in cluster.cli("product", "list").stdout

    form.locator("[name=stock]").fill("30")
    form.locator("[name=starts_at]").fill("+6")
    form.locator("[name=per_user_limit]").fill("2")
    page.click("#create-submit")
    expect(result).to_have_text(re.compile(r'^Product \d+ "Sneaker drop" created: scheduled\.$'))
    pid = int(re.search(r"Product (\d+)", result.inner_text()).group(1))  # type: ignore[union-attr]
    card = page.locator(f"#product-{pid}")
    badge, countdown = card.locator("[data-field=badge]"), card.locator("[data-field=countdown]")
    expect(badge).to_have_text("SCHEDULED")
    expect(countdown).to_have_text(re.compile(r"^starts in 00:00:0[1-6]$"))
    first = countdown.inner_text()
    expect(countdown).not_to_have_text(first)  # it counts down between pushes
    assert countdown.inner_text() < first
    status, body = purchase(cluster.url, 777001, product=pid)
    assert (status, body["error"]["code"]) == (409, "sale_not_started"), body
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    card.screenshot(path=str(ARTIFACTS / "dashboard-drop-countdown.png"))

    # At the start the badge turns by the clock, and the sale is open on every replica at once.
    expect(badge).to_have_text("LIVE", timeout=10_000)
    expect(countdown).to_have_text("")
    sold = [purchase(cluster.url, 777002 + i, qty=2, product=pid)[0] for i in range(3)]
    assert sold == [200, 200, 200], sold
    expect(card.locator("[data-field=stock]")).to_have_text("24")
    expect(card.locator("[data-field=summary]")).to_contain_text("6 sold of 30 (20%) · 3 orders · at most 2 per buyer")

    # The window is edited on the card: an end an hour away starts its own countdown.
    card.locator("details summary").click()
    page.fill(f"#edit-ends_at-{pid}", "+3600")
    page.fill(f"#edit-max_per_order-{pid}", "0")  # not a valid maximum: refused, nothing saved
    page.click(f"#save-{pid}")
    expect(result).to_have_text(re.compile(r"^Save failed: max_per_order must be a whole number from 1 to 10"))
    page.fill(f"#edit-max_per_order-{pid}", "1")
    page.click(f"#save-{pid}")
    expect(result).to_have_text(f"Product {pid} saved: live.")
    expect(countdown).to_have_text(re.compile(r"^ends in 00:59:[0-5]\d$"))
    status, body = purchase(cluster.url, 777010, qty=2, product=pid)
    assert (status, body["error"]["code"]) == (400, "invalid_request"), body  # at most 1 per order now

    # Deleting it names its orders in the confirmation, and takes them with it.
    dialogs: list[str] = []
    page.once("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.accept()))
    page.click(f"#delete-{pid}")
    expect(result).to_have_text(f"Product {pid} deleted with 3 orders.")
    assert "and its 3 orders (6 units sold)" in dialogs[0], dialogs
    expect(card).to_have_count(0)
    assert purchase(cluster.url, 777011, product=pid)[0] == 404


def test_twenty_products_fit_one_page(cluster: RunningCluster, page) -> None:  # type: ignore[no-untyped-def]
    created = []
    for i in range(20):
        request = urllib.request.Request(
            f"{cluster.url}/admin/api/products", method="POST", headers={"Authorization": f"Bearer {TOKEN}"},
            data=json.dumps({"name": f"Drop {i + 1}", "stock": 100 * (i + 1), "starts_at": f"+{60 * (i + 1)}"})
            .encode())
        with urllib.request.urlopen(request, timeout=10) as response:
            created.append(json.loads(response.read())["id"])
    try:
        log_in(page, cluster.url)
        expect(page.locator("#products .card")).to_have_count(len(created) + 1)
        expect(page.locator(f"#product-{created[-1]} [data-field=countdown]")).to_have_text(
            re.compile(r"^starts in 00:(19|20):\d\d$"))
        # Cards sit side by side: twenty of them take a few screens on a laptop, not twenty-one.
        height = page.evaluate("document.querySelector('#products').getBoundingClientRect().height")
        assert height < 3 * 1100, height
        assert page.evaluate("document.documentElement.scrollWidth") <= 1360
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard-products.png"), full_page=True)
    finally:
        for pid in created:
            cluster.cli("product", "delete", str(pid))


def test_a_buyer_waits_in_line_on_the_shop_page_and_buys_when_admitted(  # type: ignore[no-untyped-def]
        cluster: RunningCluster, page) -> None:
    """The buyer's page end to end: the countdown to the start, joining, the place in line falling as the room
    admits one buyer a second, the pass, the purchase and its outcome."""
    made = json.loads(cluster.cli("product", "create", "--name", "Queued sneaker", "--stock", "5", "--starts-at",
                                  "+5", "--waiting-room", "--admit-per-second", "1", "--pass-seconds", "60",
                                  "--json").stdout)
    pid = made["id"]
    assert made["waiting_room"] is True and made["admit_per_second"] == 1
    ahead = (888001, 888002, 888004, 888005, 888006)  # five buyers ahead in line
    for early in ahead:
        body = json.dumps({"user_id": early}).encode()
        request = urllib.request.Request(f"{cluster.url}/products/{pid}/queue", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 202
    with urllib.request.urlopen(f"{cluster.url}/shop/{pid}", timeout=10) as response:
        assert "public" in response.headers["Cache-Control"]  # the same page for every buyer: cacheable
    page.set_viewport_size({"width": 720, "height": 480})
    page.goto(f"{cluster.url}/shop/{pid}")
    expect(page.locator("#name")).to_have_text("Queued sneaker")
    expect(page.locator("#signin")).to_be_hidden()  # no demo sign-in unless the local issuer is in use
    countdown = page.locator("#countdown")
    expect(countdown).to_have_text(re.compile(r"^Sale starts in 00:0[1-5]$"))
    page.fill("#user", "888003")
    page.click("#join")
    expect(page.locator("#queue-status")).to_have_text("You are in line")
    position = page.locator("#position")
    expect(position).to_have_text(f"#{len(ahead) + 1}")
    # Every place the page shows, in order: polls (one a second) may skip a place on a busy machine, so what is
    # asserted is that the place falls, never a particular place at a particular poll.
    page.evaluate("""() => {
        const shown = document.getElementById("position");
        window.placesShown = [shown.textContent];
        new MutationObserver(() => window.placesShown.push(shown.textContent))
            .observe(shown, {childList: true, characterData: true, subtree: true});
    }""")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "shop-in-line.png"), full_page=True)
    # One a second from the start: the place falls, then it is this buyer's turn.
    expect(countdown).to_have_text("On sale now", timeout=10_000)
    expect(page.locator("#queue-status")).to_have_text("It is your turn", timeout=15_000)
    shown = [text for text in page.evaluate("window.placesShown") if text]  # each poll rewrites it, changed or not
    places = [int(text[1:]) for i, text in enumerate(shown) if i == 0 or text != shown[i - 1]]
    assert places[0] == len(ahead) + 1 and len(places) >= 2, places  # it fell at least once while waiting
    assert all(later < earlier for earlier, later in itertools.pairwise(places)), places
    expect(page.locator("#pass-left")).to_have_text(re.compile(r"^Your turn: your pass is valid for 00:[0-5]\d$"))
    page.screenshot(path=str(ARTIFACTS / "shop-admitted.png"), full_page=True)
    page.click("#buy")
    outcome = page.locator("#outcome")
    expect(outcome).to_have_text(re.compile(r"^Order #\d+ placed: 1 unit\(s\)\. Thank you!$"))
    expect(page.locator("#facts")).to_have_text("4 of 5 left · sold through a waiting room")
    page.screenshot(path=str(ARTIFACTS / "shop-bought.png"), full_page=True)
    product = next(p for p in cluster.status()["products"] if p["id"] == pid)
    assert (product["stock"], product["sold"]) == (4, 1)
    # Nobody buys around the queue.
    status, body = purchase(cluster.url, 888009, product=pid)
    assert (status, body["error"]["code"]) == (403, "queue_pass_required"), body


def test_an_operator_sees_a_hold_run_down_and_releases_it_by_hand(  # type: ignore[no-untyped-def]
        cluster: RunningCluster, page) -> None:
    created = json.loads(cluster.cli("product", "create", "--name", "Held drop", "--stock", "5", "--hold-seconds",
                                     "300", "--json").stdout)
    pid = created["id"]
    request = urllib.request.Request(f"{cluster.url}/checkouts", method="POST",
                                     data=json.dumps({"user_id": 888001, "product_id": pid, "quantity": 2}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201
        checkout_id = json.load(response)["checkout_id"]
    log_in(page, cluster.url)
    card = page.locator(f"#product-{pid}")
    expect(card.locator("[data-field=stock]")).to_have_text("3")
    expect(card.locator("[data-field=held]")).to_contain_text("2 held by checkouts")
    row = page.locator(f"#holds tr[data-hold='{checkout_id}']")
    expect(row).to_contain_text("888001")
    expect(row.locator("td").nth(4)).to_have_text(re.compile(r"^in 00:0[45]:\d\d$"))  # it runs down
    row.get_by_role("button", name="Release").click()
    expect(page.locator("#action-result")).to_have_text(
        f"Checkout {checkout_id}: released; 2 unit(s) of product {pid} back on sale.")
    expect(row).to_have_count(0)
    expect(card.locator("[data-field=stock]")).to_have_text("5")
    expect(card.locator("[data-field=held]")).to_contain_text("nothing held")
    assert "available 5, held 0, sold 0" in cluster.cli("product", "list").stdout


@pytest.fixture(scope="module")
def verified_cluster() -> Iterator[RunningCluster]:
    with cluster_workdir() as workdir:
        running = start_cluster(workdir / "verified", replicas=2, buyer_auth="jwt")
        try:
            yield running
        finally:
            stop_cluster(running)


def request(url: str, body: object | None = None, token: str | None = None) -> tuple[int, dict]:  # type: ignore[type-arg]
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=10) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_buyer_signs_in_on_the_shop_page_and_buys_as_that_buyer(  # type: ignore[no-untyped-def]
        verified_cluster: RunningCluster, cluster: RunningCluster, page) -> None:
    """`up --buyer-auth jwt`: the page signs a buyer in through the local issuer's demo sign-in (marked as such),
    then joins, buys and lists the buyer's orders with the token; the order is that buyer's, as the issuer's own
    token for the name (`buyer-token`) shows. Without the local issuer there is no demo sign-in at all."""
    url = verified_cluster.url
    made = json.loads(verified_cluster.cli("product", "create", "--name", "Signed-in drop", "--stock", "3",
                                           "--waiting-room", "--admit-per-second", "5", "--pass-seconds", "60",
                                           "--json").stdout)
    pid = made["id"]
    # No token, no purchase; a number in the body is nobody.
    status, body = request(f"{url}/purchase", {"user_id": 7, "product_id": pid, "quantity": 1})
    assert (status, body["error"]["code"]) == (401, "invalid_token"), body
    page.set_viewport_size({"width": 720, "height": 560})
    page.goto(f"{url}/shop/{pid}")
    expect(page.locator("#name")).to_have_text("Signed-in drop")
    expect(page.locator("#signin .demo")).to_contain_text("Demo sign-in")
    expect(page.locator("#user")).to_be_hidden()
    expect(page.locator("#join")).to_be_hidden()  # signed in first
    page.fill("#buyer-name", "not a name!")
    page.click("#sign-in")  # the browser's own check of the pattern keeps it from being sent
    expect(page.locator("#signed-in")).to_be_hidden()
    page.fill("#buyer-name", "alice")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "shop-demo-sign-in.png"), full_page=True)
    page.click("#sign-in")
    expect(page.locator("#signed-in-as")).to_have_text("Signed in as alice (demo).")
    page.click("#join")
    expect(page.locator("#queue-status")).to_have_text("It is your turn", timeout=15_000)
    page.fill("#quantity", "2")
    page.click("#buy")
    expect(page.locator("#outcome")).to_have_text(re.compile(r"^Order #\d+ placed: 2 unit\(s\)\. Thank you!$"))
    order = int(re.search(r"#(\d+)", page.locator("#outcome").inner_text()).group(1))  # type: ignore[union-attr]
    expect(page.locator("#order-list li")).to_have_text([f"Order #{order}: 2 unit(s)"])
    page.screenshot(path=str(ARTIFACTS / "shop-signed-in-bought.png"), full_page=True)
    # The issuer's own token for alice sees the order; the page sent no number, the token named the buyer.
    token = verified_cluster.cli("buyer-token", "--user", "alice").stdout.strip()
    status, mine = request(f"{url}/orders", token=token)
    assert status == 200 and [o["order_id"] for o in mine["orders"]] == [order], mine
    # Another buyer signed in on the same page has no orders and no place: nothing of alice's carries over.
    page.click("#sign-out")
    expect(page.locator("#signin")).to_be_visible()
    page.fill("#buyer-name", "bob")
    page.click("#sign-in")
    expect(page.locator("#signed-in-as")).to_have_text("Signed in as bob (demo).")
    expect(page.locator("#orders")).to_be_hidden()
    product = next(p for p in verified_cluster.status()["products"] if p["id"] == pid)
    assert (product["stock"], product["sold"]) == (1, 2)
    # The demo sign-in exists only where the local issuer is in use.
    status, body = request(f"{cluster.url}/demo/sign-in", {"name": "alice"})
    assert (status, body["error"]["code"]) == (404, "not_found"), body


def test_a_buyer_holds_pays_on_the_simulator_and_sees_the_order(  # type: ignore[no-untyped-def]
        cluster: RunningCluster, page) -> None:
    """A priced product through `up`'s payment simulator: held with a countdown, paid on the simulator's page with a
    declined test card (nothing charged, try another), then an accepted one, and the order shown; the money taken
    is the price of the units sold."""
    made = json.loads(cluster.cli("product", "create", "--name", "Paid sneaker", "--stock", "3", "--price", "2500",
                                  "--currency", "eur", "--json").stdout)
    pid = made["id"]
    page.set_viewport_size({"width": 720, "height": 560})
    page.goto(f"{cluster.url}/shop/{pid}")
    expect(page.locator("#facts")).to_have_text("€25.00 · 3 of 3 left")
    page.fill("#user", "777001")
    page.click("#join")
    expect(page.locator("#buy")).to_have_text("Hold and pay")
    page.click("#buy")
    expect(page.locator("#held-for-you")).to_have_text("1 unit(s) held for you · €25.00")
    expect(page.locator("#hold-left")).to_have_text(re.compile(r"^held for you for (10:00|0\d:\d\d) while you pay$"))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "shop-held.png"), full_page=True)
    page.click("#pay")
    expect(page.locator("#amount")).to_have_text("2500 EUR (minor units)")  # the simulator's page
    assert "card number" not in page.content().lower()
    page.screenshot(path=str(ARTIFACTS / "pay-simulator.png"), full_page=True)
    page.click("#pm_card_chargeDeclined")
    expect(page.locator("#outcome")).to_have_text("Your card was declined: nothing was charged. Try another card.")
    expect(page.locator("#held-for-you")).to_have_text("1 unit(s) held for you · €25.00")
    page.screenshot(path=str(ARTIFACTS / "shop-declined.png"), full_page=True)
    page.click("#pay")
    page.click("#pm_card_visa")
    expect(page.locator("#outcome")).to_have_text(re.compile(r"^Paid\. Order #\d+: 1 unit\(s\)\. Thank you!$"))
    expect(page.locator("#pay-box")).to_be_hidden()
    expect(page.locator("#facts")).to_have_text("€25.00 · 2 of 3 left")
    page.screenshot(path=str(ARTIFACTS / "shop-paid.png"), full_page=True)
    product = next(p for p in cluster.status()["products"] if p["id"] == pid)
    assert (product["stock"], product["sold"]) == (2, 1)
    money = json.loads(cluster.cli("payments", "status", "--json").stdout)["payments"]
    assert [(m["payment_status"], m["amount"], m["units"]) for m in money if m["product_id"] == pid] == [
        ("captured", 2500, 1)]
