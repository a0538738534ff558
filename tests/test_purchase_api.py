"""POST /purchase and the read endpoints, through real HTTP, against real PostgreSQL and Redis."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from tornado.httputil import HTTPHeaders

from hypercheckout.app import READ_CHUNK_BYTES, Services
from hypercheckout.processes import free_port
from tests.helpers import buy, get, orders_of, post_raw, set_stock, sql, stock_of
from tests.test_validation import BAD_BODIES


@pytest.mark.gen_test
async def test_a_purchase_is_answered_like_the_original(http_client, base_url, database_url) -> None:
    answer = await buy(http_client, base_url, user=42, qty=3)
    assert answer.status == 200
    body = answer.body
    assert body["message"] == "Order placed successfully"
    assert (body["user_id"], body["product_id"], body["quantity"], body["replica"]) == (42, 1, 3, "test-1")
    assert answer.headers["X-Replica"] == "test-1"
    datetime.fromisoformat(body["created_at"])
    assert orders_of(database_url) == {body["order_id"]: (42, 3)}
    assert stock_of(database_url) == 10_000 - 3


@pytest.mark.gen_test
async def test_answers_are_compact_json_as_json_dumps_writes_them(http_client, base_url) -> None:
    """The handlers' reused encoders write what json.dumps with the same arguments does: the order, a refusal."""
    for body, status in (({"user_id": 7, "product_id": 1, "quantity": 1}, 200),
                         ({"user_id": 7, "product_id": 1, "quantity": 0}, 400)):
        response = await http_client.fetch(f"{base_url}/purchase", method="POST", body=json.dumps(body),
                                           headers={"Content-Type": "application/json"}, raise_error=False)
        assert response.code == status, response.body
        assert response.body == json.dumps(json.loads(response.body), separators=(",", ":")).encode()


@pytest.mark.gen_test
async def test_a_json_content_type_works_as_well_as_curls_form_type(http_client, base_url) -> None:
    answer = await buy(http_client, base_url, headers={"Content-Type": "application/json"})
    assert answer.status == 200


@pytest.mark.gen_test
@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
async def test_bad_input_is_a_json_400_and_writes_nothing(http_client, base_url, database_url, body) -> None:
    answer = await post_raw(http_client, f"{base_url}/purchase", body)
    assert answer.status == 400
    assert answer.body["error"]["code"] == "invalid_request"
    assert orders_of(database_url) == {}
    assert stock_of(database_url) == 10_000


@pytest.mark.gen_test
async def test_a_body_above_the_limit_is_refused_with_json(http_client, base_url, database_url) -> None:
    body = json.dumps({"user_id": 1, "product_id": 1, "quantity": 1, "pad": "x" * 30_000})
    answer = await post_raw(http_client, f"{base_url}/purchase", body)
    assert answer.status == 400
    assert "larger than" in answer.body["error"]["message"]
    assert orders_of(database_url) == {}


@pytest.mark.gen_test
@pytest.mark.settings(max_body_bytes=4 * READ_CHUNK_BYTES)
async def test_a_request_longer_than_one_read_is_read_whole(http_server, http_client, base_url,
                                                            database_url) -> None:
    """A replica reads its sockets READ_CHUNK_BYTES at a time (the tests are served as a replica serves): a body and
    a header block each spanning several reads are put together before the purchase is parsed."""
    assert http_server.read_chunk_size == READ_CHUNK_BYTES
    body = json.dumps({"user_id": 7, "product_id": 1, "quantity": 2}) + " " * (3 * READ_CHUNK_BYTES)
    answer = await post_raw(http_client, f"{base_url}/purchase", body,
                            headers={"X-Padding": "p" * (2 * READ_CHUNK_BYTES)})
    assert answer.status == 200, answer.body
    assert orders_of(database_url) == {answer.body["order_id"]: (7, 2)}


@pytest.mark.gen_test
async def test_a_header_sent_twice_counts_as_its_values_joined(http_client, base_url, database_url) -> None:
    """Idempotency-Key twice is the key "first,second", as Tornado joins repeated headers: a retry sending that one
    value gets the same order back."""
    twice = HTTPHeaders({"Content-Type": "application/json"})
    twice.add("Idempotency-Key", "first")
    twice.add("Idempotency-Key", "second")
    body = json.dumps({"user_id": 5, "product_id": 1, "quantity": 1})
    response = await http_client.fetch(f"{base_url}/purchase", method="POST", body=body, headers=twice,
                                       raise_error=False)
    assert response.code == 200, response.body
    first = json.loads(response.body)
    retry = await post_raw(http_client, f"{base_url}/purchase", body, headers={"Idempotency-Key": "first,second"})
    assert retry.status == 200 and retry.headers.get("Idempotent-Replayed") == "true"
    assert retry.body["order_id"] == first["order_id"] and len(orders_of(database_url)) == 1


@pytest.mark.gen_test
async def test_an_unknown_product_is_a_404_not_a_500(http_client, base_url, database_url) -> None:
    answer = await buy(http_client, base_url, product=999)
    assert answer.status == 404
    assert answer.body["error"]["code"] == "unknown_product"
    assert sql(database_url, "SELECT count(*) FROM orders") == [(0,)]


@pytest.mark.gen_test
async def test_not_enough_stock_is_a_409_saying_what_is_left(http_client, base_url, database_url) -> None:
    set_stock(database_url, 2)
    answer = await buy(http_client, base_url, qty=3)
    assert answer.status == 409
    assert answer.body["error"]["code"] == "out_of_stock"
    assert answer.body["error"]["remaining"] == 2
    assert stock_of(database_url) == 2
    assert (await buy(http_client, base_url, qty=2)).status == 200
    assert stock_of(database_url) == 0


@pytest.mark.gen_test
@pytest.mark.settings(rate_limit=1.0, rate_burst=2)
async def test_a_buyer_over_the_rate_gets_429_with_retry_after(http_client, base_url) -> None:
    statuses = [(await buy(http_client, base_url, user=5)).status for _ in range(2)]
    assert statuses == [200, 200]
    limited = await buy(http_client, base_url, user=5)
    assert limited.status == 429
    assert limited.body["error"]["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1
    assert (await buy(http_client, base_url, user=6)).status == 200  # another buyer is not affected


@pytest.mark.gen_test
@pytest.mark.parametrize("strategy", ["pessimistic", "atomic", "batched"])
async def test_postgres_unreachable_is_a_503_and_sells_nothing_then_recovers(
    http_client, base_url, database_url, services: Services, strategy: str, pg_server_url: str,
) -> None:
    from hypercheckout.checkout.service import Checkout
    from hypercheckout.checkout.strategy import make_strategy

    services.checkout = Checkout(make_strategy(strategy, services.store, replica="test-1"), services.sold_out,
                                 services.store, services.schedule)
    name = database_url.rsplit("/", 1)[1]
    assert (await buy(http_client, base_url)).status == 200
    sql(pg_server_url, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    sql(pg_server_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
    try:
        for _ in range(3):  # the first finds its pooled connection dead, the next cannot connect at all
            answer = await buy(http_client, base_url)
            assert answer.status == 503
            assert answer.body["error"]["code"] == "unavailable"
        ready = await get(http_client, f"{base_url}/readyz")
        assert ready.status == 503 and ready.body["postgres"] == "unreachable"
    finally:
        sql(pg_server_url, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    assert (await buy(http_client, base_url)).status == 200
    assert len(orders_of(database_url)) == 2
    assert stock_of(database_url) == 10_000 - 2


@pytest.mark.gen_test
@pytest.mark.settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", rate_limit=1.0, rate_burst=1)
async def test_redis_unreachable_fails_open_and_readyz_says_so_but_stays_ready(http_client, base_url,
                                                                               services: Services) -> None:
    statuses = [(await buy(http_client, base_url, user=1)).status for _ in range(3)]
    assert statuses == [200, 200, 200]  # over the rate, but the limiter cannot know: PostgreSQL still decides
    assert services.limiter.fail_open_events == 3
    # Ready means "can sell", and it can: an orchestrator must not pull every replica during a Redis outage.
    ready = await get(http_client, f"{base_url}/readyz")
    assert ready.status == 200 and ready.body["status"] == "ready"
    assert (ready.body["postgres"], ready.body["redis"]) == ("ok", "unreachable")


@pytest.mark.gen_test
async def test_products_are_listed_and_read_one_by_one(http_client, base_url) -> None:
    listed = await get(http_client, f"{base_url}/products")
    assert listed.body == {"products": [
        {"id": 1, "name": "Flash-sale product", "stock": 10000, "available": 10000, "held": 0, "sold": 0,
         "initial_stock": 10000, "hold_seconds": 600, "price": 0, "currency": "usd", "per_user_limit": None,
         "max_per_order": 10,
         "starts_at": None, "ends_at": None, "status": "live",
         "waiting_room": False},
    ]}
    one = await get(http_client, f"{base_url}/products/1")
    assert one.body["stock"] == 10000
    missing = await get(http_client, f"{base_url}/products/999")
    assert (missing.status, missing.body["error"]["code"]) == (404, "unknown_product")


@pytest.mark.gen_test
async def test_health_and_readiness(http_client, base_url) -> None:
    assert (await get(http_client, f"{base_url}/healthz")).body["status"] == "ok"
    ready = await get(http_client, f"{base_url}/readyz")
    assert ready.status == 200
    assert (ready.body["postgres"], ready.body["redis"]) == ("ok", "ok")


@pytest.mark.gen_test
async def test_unknown_routes_and_methods_answer_in_the_error_shape(http_client, base_url) -> None:
    missing = await get(http_client, f"{base_url}/nope")
    assert (missing.status, missing.body["error"]["code"]) == (404, "not_found")
    wrong = await http_client.fetch(f"{base_url}/purchase", method="GET", raise_error=False)
    assert wrong.code == 405
    assert json.loads(wrong.body)["error"]["code"] == "method_not_allowed"
