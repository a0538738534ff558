"""GET /metrics: Prometheus text with requests by route and status, purchase latency, batch sizes, stock, rate-limit
decisions, Redis fail-opens and the database pool — figures that follow what really happened."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hypercheckout.app import Services
from tests.helpers import buy, get, set_stock


async def scrape(http_client, base_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:  # type: ignore[no-untyped-def]
    response = await http_client.fetch(f"{base_url}/metrics")
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(response.body.decode()):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


@pytest.mark.gen_test
async def test_any_method_a_client_invents_adds_no_series(http_client, base_url) -> None:
    for n in range(50):
        answer = await http_client.fetch(f"{base_url}/purchase", method=f"INVENTED{n}", raise_error=False,
                                         allow_nonstandard_methods=True)
        assert answer.code in (400, 405)
    await http_client.fetch(f"{base_url}/healthz")
    m = await scrape(http_client, base_url)
    methods = {dict(labels)["method"] for name, labels in m if name == "hypercheckout_requests_total"}
    assert methods == {"other", "GET"}


@pytest.mark.gen_test
@pytest.mark.settings(rate_limit=1.0, rate_burst=2)
async def test_the_figures_follow_what_happened(http_client, base_url, database_url: str,
                                               services: Services) -> None:
    set_stock(database_url, 3)
    statuses = [(await buy(http_client, base_url, user=1, qty=1)).status for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert (await buy(http_client, base_url, user=2, qty=2)).status == 409  # 1 left
    assert (await get(http_client, f"{base_url}/products/1")).status == 200
    m = await scrape(http_client, base_url)
    purchase = lambda status: (("method", "POST"), ("route", "/purchase"), ("status", status))  # noqa: E731
    assert m["hypercheckout_requests_total", purchase("200")] == 2
    assert m["hypercheckout_requests_total", purchase("429")] == 1
    assert m["hypercheckout_requests_total", purchase("409")] == 1
    # Routes are patterns, not paths.
    assert m["hypercheckout_requests_total", (("method", "GET"), ("route", "/products/{id}"), ("status", "200"))] == 1
    assert m["hypercheckout_purchase_seconds_count", (("status", "200"),)] == 2
    assert m["hypercheckout_purchase_seconds_bucket", (("le", "+Inf"), ("status", "200"))] == 2
    assert m["hypercheckout_stock", (("product", "1"),)] == 1
    assert m["hypercheckout_initial_stock", (("product", "1"),)] == 3
    assert m["hypercheckout_rate_limit_decisions_total", (("decision", "allowed"), ("source", "redis"))] == 3
    assert m["hypercheckout_rate_limit_decisions_total", (("decision", "limited"), ("source", "redis"))] == 1
    assert m["hypercheckout_redis_fail_open_total", ()] == 0
    # Four attempts went to Redis one after another, each in a call of its own.
    assert m["hypercheckout_rate_limit_call_size_count", ()] == 4
    assert m["hypercheckout_rate_limit_call_size_sum", ()] == 4
    # The batched strategy settled the three purchases that reached it, in batches of one.
    assert m["hypercheckout_batch_size_count", ()] == 3 and m["hypercheckout_batch_size_sum", ()] == 3
    assert m["hypercheckout_db_pool_connections", (("state", "max"),)] == services.settings.db_pool_size
    assert m["hypercheckout_db_pool_connections", (("state", "open"),)] >= 1
