"""`hypercheckout up` pays through its payment simulator by default: a priced product's checkout, held through nginx,
is paid on the simulator (as its page does), confirmed by the webhook the simulator delivers through nginx, and
captured once; `hypercheckout payments status` and the simulator agree on the money."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.clusters import RunningCluster, cluster_workdir, start_cluster, stop_cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[RunningCluster]:
    with cluster_workdir() as workdir:
        running = start_cluster(workdir / "paid", replicas=2)
        try:
            yield running
        finally:
            stop_cluster(running)


def call(url: str, body: object | None = None) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"},
                                     method="GET" if data is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_checkout_is_paid_on_the_simulator_and_confirmed_by_its_webhook(cluster: RunningCluster) -> None:
    env = dict(line.split("=", 1) for line in (cluster.data_dir / "cluster.env").read_text().split("\n")
               if "=" in line)
    simulator = env["HC_STRIPE_API_BASE"]
    assert env["HC_PAYMENTS"] == "simulator" and env["HC_STRIPE_WEBHOOK_SECRET"].startswith("whsec_")
    made = json.loads(cluster.cli("product", "create", "--name", "Paid drop", "--stock", "4", "--price", "2500",
                                  "--currency", "eur", "--json").stdout)
    status, held = call(f"{cluster.url}/checkouts", {"user_id": 31, "product_id": made["id"], "quantity": 2})
    assert status == 201 and held["payment"]["amount"] == 5000, held
    assert held["payment"]["pay_url"].startswith(f"{simulator}/pay/")
    with urllib.request.urlopen(held["payment"]["pay_url"], timeout=10) as page:  # the hosted page, no card field
        text = page.read().decode()
    assert "Payment simulator" in text and "pm_card_visa" in text and "card number" not in text.lower()
    status, paid = call(f"{simulator}/_simulator/intents/{held['payment']['intent_id']}/pay",
                        {"payment_method": "pm_card_visa"})
    assert status == 200 and paid["status"] == "requires_capture", paid
    deadline = time.monotonic() + 60
    while True:
        status, now = call(f"{cluster.url}/checkouts/{held['checkout_id']}")
        if now["payment"]["status"] == "captured" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert now["status"] == "confirmed" and now["payment"]["status"] == "captured", now
    _, state = call(f"{simulator}/_simulator/intents")
    intent = next(i for i in state["intents"] if i["id"] == held["payment"]["intent_id"])
    assert (intent["status"], intent["amount_received"], intent["captures"]) == ("succeeded", 5000, 1)
    money = json.loads(cluster.cli("payments", "status", "--json").stdout)["payments"]
    assert [(m["product_id"], m["payment_status"], m["amount"], m["units"]) for m in money] == [
        (made["id"], "captured", 5000, 2)]
    assert "nothing in doubt" in cluster.cli("payments", "reconcile").stdout
