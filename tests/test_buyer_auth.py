"""HC_BUYER_AUTH=jwt against a real replica and database (issue 25): the buyer is who its bearer token says, every
protection is keyed by that buyer, and a request without a good token is refused with nothing done."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from hypercheckout.buyers.issuer import LocalIssuer
from hypercheckout.settings import Settings
from tests.helpers import Answer, assert_invariant, get, orders_of, post_raw, run_cli, set_stock, sql


@pytest.fixture
def issuer(tmp_path: Path) -> LocalIssuer:
    return LocalIssuer(tmp_path / "issuer").ensure()


@pytest.fixture
def settings(settings: Settings, issuer: LocalIssuer) -> Settings:
    env = issuer.settings_env()
    # As `up --buyer-auth jwt` runs it: the local issuer's demo sign-in on.
    return settings.replace(buyer_auth="jwt", jwt_issuer=env["HC_JWT_ISSUER"], jwks_file=env["HC_JWKS_FILE"],
                            demo_signin=str(issuer.directory))


def bearer(issuer: LocalIssuer, subject: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.mint(subject)}", **headers}


async def buy(client: Any, base_url: str, headers: dict[str, str] | None, **body: Any) -> Answer:
    return await post_raw(client, f"{base_url}/purchase", json.dumps({"product_id": 1, "quantity": 1, **body}),
                          headers)


def test_the_local_issuer_keeps_its_private_key_to_its_owner(issuer: LocalIssuer) -> None:
    assert issuer.private_path.stat().st_mode & 0o777 == 0o600
    document = json.loads(issuer.jwks_path.read_text())
    assert [key["kid"] for key in document["keys"]] == ["local-1"] and "d" not in document["keys"][0]
    same = LocalIssuer(issuer.directory).ensure()  # kept across restarts: tokens stay valid
    assert same.private_path.read_bytes() == issuer.private_path.read_bytes()


@pytest.mark.gen_test
async def test_a_buyer_is_who_its_token_says_and_keeps_its_number(http_client, base_url, database_url: str,
                                                                    issuer: LocalIssuer) -> None:
    set_stock(database_url, 10)
    first = await buy(http_client, base_url, bearer(issuer, "alice"))
    again = await buy(http_client, base_url, bearer(issuer, "alice"))
    other = await buy(http_client, base_url, bearer(issuer, "bob"))
    assert (first.status, again.status, other.status) == (200, 200, 200), (first.body, other.body)
    assert first.body["user_id"] == again.body["user_id"] != other.body["user_id"]
    assert sql(database_url, "SELECT subject, id FROM buyers ORDER BY id") == [
        ("alice", first.body["user_id"]), ("bob", other.body["user_id"])]
    # A body naming the token's own buyer is fine; naming another is refused, nothing sold.
    named = await buy(http_client, base_url, bearer(issuer, "alice"), user_id=first.body["user_id"])
    assert named.status == 200, named.body
    mismatch = await buy(http_client, base_url, bearer(issuer, "alice"), user_id=other.body["user_id"])
    assert mismatch.status == 403 and mismatch.body["error"]["code"] == "buyer_mismatch", mismatch.body
    assert len(orders_of(database_url)) == 4 and assert_invariant(database_url, 10) == 6


@pytest.mark.gen_test
async def test_no_token_a_forged_one_or_another_issuers_is_a_401_with_nothing_sold(
    http_client, base_url, database_url: str, issuer: LocalIssuer, tmp_path: Path,
) -> None:
    set_stock(database_url, 10)
    stranger = LocalIssuer(tmp_path / "stranger").ensure()  # another key under the same kid: a forgery
    expired = jwt.encode({"iss": "hypercheckout-local-issuer", "aud": "hypercheckout", "sub": "alice", "exp": 1},
                         serialization.load_pem_private_key(issuer.private_path.read_bytes(), password=None),
                         algorithm="EdDSA", headers={"kid": "local-1"})
    for headers in (None, {"Authorization": "Basic YWxpY2U6eA=="}, {"Authorization": "Bearer "},
                    {"Authorization": "Bearer not.a.token"}, bearer(stranger, "alice"),
                    {"Authorization": f"Bearer {expired}"}):
        for path, body in (("/purchase", {"user_id": 5, "product_id": 1, "quantity": 1}),
                           ("/checkouts", {"product_id": 1, "quantity": 1}),
                           ("/products/1/queue", {})):
            answer = await post_raw(http_client, f"{base_url}{path}", json.dumps(body), headers)
            assert answer.status == 401, (path, headers, answer.body)
            assert answer.body["error"]["code"] == "invalid_token"
            assert answer.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert orders_of(database_url) == {} and sql(database_url, "SELECT count(*) FROM checkouts") == [(0,)]
    assert sql(database_url, "SELECT count(*) FROM buyers") == [(0,)]


@pytest.mark.gen_test
async def test_limits_are_the_buyers_whatever_number_the_body_tried(http_client, base_url, database_url: str,
                                                                     issuer: LocalIssuer) -> None:
    set_stock(database_url, 10)
    sql(database_url, "UPDATE products SET per_user_limit = 1 WHERE id = 1")
    assert (await buy(http_client, base_url, bearer(issuer, "carol"))).status == 200
    again = await buy(http_client, base_url, bearer(issuer, "carol"))
    assert again.status == 409 and again.body["error"]["code"] == "limit_reached", again.body
    held = await post_raw(http_client, f"{base_url}/checkouts", json.dumps({"product_id": 1, "quantity": 1}),
                          bearer(issuer, "carol"))
    assert held.status == 409 and held.body["error"]["code"] == "limit_reached", held.body


@pytest.mark.gen_test
async def test_a_checkout_answers_its_buyer_only(http_client, base_url, database_url: str,
                                                 issuer: LocalIssuer) -> None:
    set_stock(database_url, 10)
    held = await post_raw(http_client, f"{base_url}/checkouts", json.dumps({"product_id": 1, "quantity": 2}),
                          bearer(issuer, "dave"))
    assert held.status == 201, held.body
    checkout = held.body["checkout_id"]
    for action in ("confirm", "release"):
        answer = await post_raw(http_client, f"{base_url}/checkouts/{checkout}/{action}", "", bearer(issuer, "eve"))
        assert answer.status == 404 and answer.body["error"]["code"] == "unknown_checkout", answer.body
    seen = await http_client.fetch(f"{base_url}/checkouts/{checkout}", headers=bearer(issuer, "eve"),
                                   raise_error=False)
    assert seen.code == 404
    anonymous = await get(http_client, f"{base_url}/checkouts/{checkout}")
    assert anonymous.status == 401
    mine = await post_raw(http_client, f"{base_url}/checkouts/{checkout}/confirm", "", bearer(issuer, "dave"))
    assert mine.status == 200 and mine.body["checkout_id"] == checkout, mine.body
    assert assert_invariant(database_url, 10) == 8


@pytest.mark.gen_test
async def test_a_place_and_its_pass_belong_to_the_buyer_who_joined(http_client, base_url, database_url: str,
                                                                   issuer: LocalIssuer, services: Any) -> None:
    from tests.test_waiting_room import room_product

    pid = room_product(database_url, 5, rate=1000)
    await services.schedule.reread()
    joined = await post_raw(http_client, f"{base_url}/products/{pid}/queue", "{}", bearer(issuer, "frank"))
    assert joined.status == 202, joined.body
    ticket = joined.body["ticket"]
    other = await http_client.fetch(f"{base_url}/queue/{ticket}", headers=bearer(issuer, "grace"), raise_error=False)
    assert other.code == 404  # another buyer's ticket is as unknown as a forged one
    standing: dict[str, Any] = {}
    for _ in range(500):
        response = await http_client.fetch(f"{base_url}/queue/{ticket}", headers=bearer(issuer, "frank"))
        standing = json.loads(response.body)
        if standing["status"] == "admitted":
            break
    assert standing["status"] == "admitted", standing
    stolen = await buy(http_client, base_url, bearer(issuer, "grace", **{"Queue-Pass": standing["pass"]}),
                       product_id=pid)
    assert stolen.status == 403 and stolen.body["error"]["code"] == "queue_pass_invalid", stolen.body
    own = await buy(http_client, base_url, bearer(issuer, "frank", **{"Queue-Pass": standing["pass"]}),
                    product_id=pid)
    assert own.status == 200, own.body
    assert assert_invariant(database_url, 5, product=pid) == 4


def test_buyer_token_mints_with_the_local_issuer_of_a_data_dir(tmp_path: Path) -> None:
    missing = run_cli("buyer-token", "--user", "42", "--data-dir", str(tmp_path))
    assert missing.returncode == 1 and "up --buyer-auth jwt" in missing.stderr
    issuer = LocalIssuer(tmp_path / "issuer").ensure()
    done = run_cli("buyer-token", "--user", "42", "--ttl", "60", "--data-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    jwks = jwt.PyJWKSet.from_dict(json.loads(issuer.jwks_path.read_text()))
    claims = jwt.decode(done.stdout.strip(), jwks["local-1"].key, algorithms=["EdDSA"], audience="hypercheckout",
                        issuer="hypercheckout-local-issuer")
    assert claims["sub"] == "42" and 0 < claims["exp"] - claims["iat"] <= 60


@pytest.mark.gen_test
async def test_a_buyer_lists_its_own_orders_only(http_client, base_url, database_url: str,
                                                 issuer: LocalIssuer) -> None:
    set_stock(database_url, 10)
    mine = [await buy(http_client, base_url, bearer(issuer, "heidi"), quantity=q) for q in (1, 2)]
    held = await post_raw(http_client, f"{base_url}/checkouts", json.dumps({"product_id": 1, "quantity": 3}),
                          bearer(issuer, "heidi"))
    confirmed = await post_raw(http_client, f"{base_url}/checkouts/{held.body['checkout_id']}/confirm", "",
                               bearer(issuer, "heidi"))
    await buy(http_client, base_url, bearer(issuer, "ivan"))
    response = await http_client.fetch(f"{base_url}/orders", headers=bearer(issuer, "heidi"))
    listed = json.loads(response.body)
    assert listed["user_id"] == mine[0].body["user_id"]
    assert [(o["order_id"], o["quantity"], o.get("checkout_id")) for o in listed["orders"]] == [
        (confirmed.body["order_id"], 3, held.body["checkout_id"]), (mine[1].body["order_id"], 2, None),
        (mine[0].body["order_id"], 1, None)]
    anonymous = await get(http_client, f"{base_url}/orders")
    assert anonymous.status == 401 and anonymous.body["error"]["code"] == "invalid_token"


@pytest.mark.gen_test
async def test_the_demo_sign_in_gives_a_token_of_the_local_issuer_for_a_name(http_client, base_url,
                                                                             database_url: str) -> None:
    set_stock(database_url, 10)
    for body in ("", "[]", '{"name": ""}', '{"name": "a b"}', '{"name": 42}', '{"name": "' + "x" * 65 + '"}',
                 '{"name": "alice", "admin": true}'):
        refused = await post_raw(http_client, f"{base_url}/demo/sign-in", body)
        assert refused.status == 400 and refused.body["error"]["code"] == "invalid_request", (body, refused.body)
    signed = await post_raw(http_client, f"{base_url}/demo/sign-in", json.dumps({"name": "judy@example"}))
    assert signed.status == 200 and signed.body["subject"] == "judy@example" and signed.body["demo"] is True
    bought = await buy(http_client, base_url, {"Authorization": f"Bearer {signed.body['token']}"})
    assert bought.status == 200, bought.body
    assert sql(database_url, "SELECT issuer, subject FROM buyers") == [("hypercheckout-local-issuer", "judy@example")]
    assert sql(database_url, "SELECT user_id FROM orders") == [(bought.body["user_id"],)]


@pytest.mark.gen_test(timeout=60)
async def test_buyers_first_seen_together_get_one_number_each_in_one_statement_per_replica(
    services: Any, database_url: str,
) -> None:
    """A drop's thousands of new buyers: two replicas (BuyerAuth each) see the same 300 buyers at the same moment.
    Each buyer gets one number, the same on both, and each replica asks PostgreSQL once per batch, not once per
    buyer (the connection pool would run dry)."""
    from hypercheckout.buyers.auth import BuyerAuth
    from hypercheckout.buyers.tokens import Buyer
    from hypercheckout.store import buyers as store_buyers

    assert services.buyer_auth is not None
    replicas = [services.buyer_auth, BuyerAuth(services.buyer_auth.verifier, services.store)]
    statements = 0
    look_up = store_buyers.buyer_ids

    async def counted(cur: Any, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
        nonlocal statements
        statements += 1
        return await look_up(cur, pairs)

    import hypercheckout.buyers.auth as auth_module

    auth_module.buyer_ids = counted  # type: ignore[assignment]
    try:
        subjects = [f"drop-buyer-{i}" for i in range(300)]
        asked = [(replica, subject) for subject in subjects for replica in replicas]
        numbers = await asyncio.gather(*(replica.number(Buyer("hypercheckout-local-issuer", subject, 0.0))
                                         for replica, subject in asked))
    finally:
        auth_module.buyer_ids = look_up  # type: ignore[assignment]
    by_subject: dict[str, set[int]] = {}
    for (_, subject), number in zip(asked, numbers, strict=True):
        by_subject.setdefault(subject, set()).add(number)
    assert all(len(seen) == 1 for seen in by_subject.values()), by_subject
    assert len({n for seen in by_subject.values() for n in seen}) == 300
    assert sql(database_url, "SELECT count(*) FROM buyers") == [(300,)]
    assert 1 <= statements <= 2 * 2  # a batch per replica (and at most one more, for a buyer the other was making)
    again = await replicas[1].number(Buyer("hypercheckout-local-issuer", "drop-buyer-7", 0.0))
    assert again in by_subject["drop-buyer-7"]
