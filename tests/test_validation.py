"""Every class of bad input is refused before any I/O, with a 400 that says what is wrong."""

import json

import pytest

from hypercheckout.checkout.errors import CheckoutError
from hypercheckout.checkout.models import PurchaseRequest
from hypercheckout.checkout.validation import parse_purchase


def parse(body: bytes | str) -> PurchaseRequest:
    raw = body.encode() if isinstance(body, str) else body
    return parse_purchase(raw, max_quantity=10, max_body_bytes=1024)


def test_a_valid_body_parses() -> None:
    assert parse('{"user_id": 7, "product_id": 1, "quantity": 3}') == PurchaseRequest(7, 1, 3)


BAD_BODIES = {
    "empty": b"",
    "whitespace": b"  \n",
    "not json": b"user_id=1&product_id=1&quantity=1",
    "truncated json": b'{"user_id": 1, "product_id": 1',
    "json array": b"[1, 1, 1]",
    "json string": b'"buy"',
    "bad utf-8": b'{"user_id": 1, "product_id": 1, "quantity": 1, "x": "\xff"}',
    "bool quantity": b'{"user_id": 1, "product_id": 1, "quantity": true}',
    "bool user": b'{"user_id": true, "product_id": 1, "quantity": 1}',
    "float quantity": b'{"user_id": 1, "product_id": 1, "quantity": 1.0}',
    "exponent quantity": b'{"user_id": 1, "product_id": 1, "quantity": 1e0}',
    "string quantity": b'{"user_id": 1, "product_id": 1, "quantity": "1"}',
    "null quantity": b'{"user_id": 1, "product_id": 1, "quantity": null}',
    "NaN quantity": b'{"user_id": 1, "product_id": 1, "quantity": NaN}',
    "zero quantity": b'{"user_id": 1, "product_id": 1, "quantity": 0}',
    "negative quantity": b'{"user_id": 1, "product_id": 1, "quantity": -5}',
    "quantity over the maximum": b'{"user_id": 1, "product_id": 1, "quantity": 11}',
    "zero user": b'{"user_id": 0, "product_id": 1, "quantity": 1}',
    "user beyond bigint": b'{"user_id": 9223372036854775808, "product_id": 1, "quantity": 1}',
    "negative product": b'{"user_id": 1, "product_id": -1, "quantity": 1}',
    "huge number": b'{"user_id": 1, "product_id": 1, "quantity": ' + b"9" * 5000 + b"}",
    "missing quantity": b'{"user_id": 1, "product_id": 1}',
    "unknown field": b'{"user_id": 1, "product_id": 1, "quantity": 1, "price": 0}',
    "duplicate field": b'{"user_id": 1, "product_id": 1, "quantity": 1, "quantity": -5}',
    "too large": json.dumps({"user_id": 1, "product_id": 1, "quantity": 1, "pad": "x" * 2000}).encode(),
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_bad_input_is_a_400_invalid_request(body: bytes) -> None:
    with pytest.raises(CheckoutError) as caught:
        parse(body)
    assert caught.value.status == 400
    assert caught.value.code == "invalid_request"
    assert caught.value.message


def test_deep_nesting_within_the_size_limit_is_refused_not_crashed() -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(CheckoutError) as caught:
        parse_purchase(body, max_quantity=10, max_body_bytes=len(body))
    assert caught.value.status == 400


def test_the_message_names_the_field() -> None:
    with pytest.raises(CheckoutError, match="quantity"):
        parse('{"user_id": 1, "product_id": 1, "quantity": 0}')
    with pytest.raises(CheckoutError, match="price"):
        parse('{"user_id": 1, "product_id": 1, "quantity": 1, "price": 0}')
