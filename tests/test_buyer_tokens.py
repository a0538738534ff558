"""Buyers' bearer tokens (issue 25, RFC 8725): every way a token can lie is refused, keys rotate at the issuer, and
keys that cannot be had close the door instead of opening it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from hypercheckout.buyers.tokens import Buyer, KeysUnavailable, TokenRefused, TokenVerifier, jwks_file

ISSUER, AUDIENCE = "https://login.shop.example", "hypercheckout"
ALGORITHM_OF = {rsa.RSAPrivateKey: "RS256", ec.EllipticCurvePrivateKey: "ES256",
                ed25519.Ed25519PrivateKey: "EdDSA"}


def new_key(kind: str = "RS256") -> Any:
    if kind == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def algorithm_of(key: Any) -> str:
    return next(name for kind, name in ALGORITHM_OF.items() if isinstance(key, kind))


def public_jwk(key: Any, kid: str) -> dict[str, Any]:
    public = key.public_key()
    name = algorithm_of(key)
    if name == "RS256":
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(public, as_dict=True)
    elif name == "ES256":
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = jwt.algorithms.OKPAlgorithm.to_jwk(public, as_dict=True)
    return {**jwk, "kid": kid, "use": "sig", "alg": name}


def token(key: Any, kid: str, *, sub: str = "buyer-42", lifetime: float = 300, **claims: Any) -> str:
    now = time.time()
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": int(now), "exp": int(now + lifetime), **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm=algorithm_of(key),
                      headers={"kid": kid})


class Issuer:
    """An issuer's JWKS, as a file the verifier reads (and whose reads can be made to fail)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.keys: dict[str, Any] = {}
        self.down = False

    def publish(self, **keys: Any) -> None:
        self.keys = keys
        self.path.write_text(json.dumps({"keys": [public_jwk(key, kid) for kid, key in keys.items()]}))

    def fetch(self) -> Callable[[], Awaitable[bytes]]:
        read = jwks_file(self.path)

        async def fetch() -> bytes:
            if self.down:
                raise OSError("connection refused")
            return await read()

        return fetch


@pytest.fixture
def issuer(tmp_path: Path) -> Issuer:
    found = Issuer(tmp_path / "jwks.json")
    found.publish(k1=new_key())
    return found


def verifier(issuer: Issuer, **kw: Any) -> TokenVerifier:
    return TokenVerifier(issuer.fetch(), issuer=ISSUER, audience=AUDIENCE, min_refetch=0.0, **kw)


def verify(v: TokenVerifier, text: str) -> Buyer:
    return asyncio.run(v.verify(text))


def refused(v: TokenVerifier, text: str) -> str:
    with pytest.raises(TokenRefused) as caught:
        verify(v, text)
    return str(caught.value)


@pytest.mark.parametrize("kind", ["RS256", "ES256", "EdDSA"])
def test_a_token_signed_by_the_issuers_key_names_its_buyer(tmp_path: Path, kind: str) -> None:
    issuer = Issuer(tmp_path / "jwks.json")
    issuer.publish(k1=new_key(kind))
    buyer = verify(verifier(issuer), token(issuer.keys["k1"], "k1", sub="alice"))
    assert (buyer.issuer, buyer.subject) == (ISSUER, "alice") and buyer.expires > time.time()


def test_a_forged_signature_is_refused(issuer: Issuer) -> None:
    forged = token(new_key(), "k1")  # the issuer's kid, another key
    assert "Signature verification failed" in refused(verifier(issuer), forged)


def test_alg_none_is_refused(issuer: Issuer) -> None:
    unsigned = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": int(time.time()) + 60}, None,
                          algorithm="none", headers={"kid": "k1"})
    assert "'none' is not accepted" in refused(verifier(issuer), unsigned)


def test_an_hmac_signed_with_the_public_key_is_refused(issuer: Issuer) -> None:
    """Algorithm confusion: the issuer's public key, which anyone has, used as an HS256 secret."""
    pem = issuer.keys["k1"].public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "typ": "JWT", "kid": "k1"}
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "exp": int(time.time()) + 60}
    signing = jwt.api_jws.base64url_encode(json.dumps(header).encode()) + b"." + \
        jwt.api_jws.base64url_encode(json.dumps(claims).encode())
    mac = jwt.algorithms.HMACAlgorithm(jwt.algorithms.HMACAlgorithm.SHA256).sign(signing, pem)
    confused = (signing + b"." + jwt.api_jws.base64url_encode(mac)).decode()
    assert "'HS256' is not accepted" in refused(verifier(issuer), confused)


@pytest.mark.parametrize(("claims", "says"), [
    ({"lifetime": -120}, "expired"),  # past the leeway
    ({"nbf": int(time.time()) + 600}, "not yet valid"),
    ({"iss": "https://evil.example"}, "Invalid issuer"),
    ({"aud": "another-service"}, "Audience doesn't match"),
    ({"sub": None}, 'missing the "sub" claim'),
])
def test_expired_early_foreign_or_subjectless_tokens_are_refused(issuer: Issuer, claims: dict[str, Any],
                                                                 says: str) -> None:
    assert says in refused(verifier(issuer), token(issuer.keys["k1"], "k1", **claims))


def test_a_little_clock_skew_is_forgiven(issuer: Issuer) -> None:
    assert verify(verifier(issuer), token(issuer.keys["k1"], "k1", lifetime=-5, nbf=int(time.time()) + 5))


def test_a_key_rotated_in_is_picked_up_and_one_removed_is_refused_even_if_remembered(issuer: Issuer) -> None:
    v = verifier(issuer)
    old = token(issuer.keys["k1"], "k1")
    assert verify(v, old).subject == "buyer-42"
    issuer.publish(k1=issuer.keys["k1"], k2=new_key("ES256"))
    assert verify(v, token(issuer.keys["k2"], "k2")).subject == "buyer-42"  # an unknown kid: fetched again
    assert verify(v, old).subject == "buyer-42"  # both keys published
    issuer.publish(k2=issuer.keys["k2"])
    asyncio.run(v.refresh())  # the periodic re-fetch, or the next unknown kid
    assert v.key_ids == {"k2"}
    assert "unknown key" in refused(v, old)


def test_the_keys_are_fetched_again_after_a_while_and_at_most_so_often(issuer: Issuer) -> None:
    clock = [1000.0]
    v = TokenVerifier(issuer.fetch(), issuer=ISSUER, audience=AUDIENCE, refetch_after=300, min_refetch=10,
                      clock=lambda: clock[0])
    good = token(issuer.keys["k1"], "k1")
    verify(v, good)
    assert v.fetches == 1
    for n in range(20):  # tokens with made-up kids: one fetch per 10 s at most, not one per token
        with pytest.raises(TokenRefused):
            verify(v, token(new_key(), f"made-up-{n}"))
        clock[0] += 0.1
    assert v.fetches == 1
    clock[0] += 400

    async def later() -> None:
        await v.verify(good)  # answered with the keys known, the fetch going on in the background
        await asyncio.sleep(0.05)

    asyncio.run(later())
    assert v.fetches == 2


def test_keys_that_cannot_be_had_keep_known_keys_working_and_an_unknown_kid_is_unavailable(issuer: Issuer) -> None:
    v = verifier(issuer)
    known = token(issuer.keys["k1"], "k1")
    verify(v, known)
    issuer.down = True
    assert verify(v, token(issuer.keys["k1"], "k1", sub="other")).subject == "other"  # cached keys still verify
    with pytest.raises(KeysUnavailable):
        verify(v, token(new_key(), "k-new"))


def test_no_keys_at_all_is_unavailable_not_open(tmp_path: Path) -> None:
    issuer = Issuer(tmp_path / "missing.json")  # never published
    v = TokenVerifier(issuer.fetch(), issuer=ISSUER, audience=AUDIENCE)
    with pytest.raises(KeysUnavailable):
        verify(v, token(new_key(), "k1"))


def test_malformed_tokens_and_unsafe_configurations_are_refused(issuer: Issuer) -> None:
    v = verifier(issuer)
    for text in ("", "abc", "a.b.c", "x" * 5000):
        refused(v, text)
    with pytest.raises(ValueError, match="algorithms must be among"):
        TokenVerifier(issuer.fetch(), issuer=ISSUER, audience=AUDIENCE, algorithms=["HS256"])
    with pytest.raises(ValueError, match="algorithms must be among"):
        TokenVerifier(issuer.fetch(), issuer=ISSUER, audience=AUDIENCE, algorithms=["none"])
