"""Bearer JWTs checked against the issuer's keys (a JWKS, from a URL or a file), with PyJWT.

Algorithms come from configuration only, never from the token: a token whose header names another one (``none``,
an HMAC chosen to turn a public key into a shared secret) is refused before any key is looked at. ``iss``, ``aud``,
``exp`` and ``sub`` are required; ``exp`` and ``nbf`` are checked with a small leeway. A token whose ``kid`` is
unknown makes the keys be fetched again (at most every ``min_refetch`` seconds), which is how a key the issuer
rotated in is picked up; keys are also fetched again every ``refetch_after`` seconds, and a key the issuer removed
stops verifying anything, cached tokens included. When the keys cannot be had, tokens of keys already known keep
working; one that needs a key not known is ``KeysUnavailable`` (a 503: never an open door).

A verified token is remembered until it expires (bounded): its signature is checked once, not on every request.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

ALLOWED_ALGORITHMS = ("RS256", "ES256", "EdDSA")  # asymmetric only: a buyer's token is never an HMAC
DEFAULT_LEEWAY = 30.0  # seconds of clock skew forgiven on exp and nbf
CACHE_SIZE = 100_000  # verified tokens remembered at most (about 50 MB for 500-byte tokens)


@dataclass(frozen=True, slots=True)
class Buyer:
    """Who a verified token says the buyer is: the pair (issuer, subject)."""

    issuer: str
    subject: str
    expires: float  # the token's exp, epoch seconds


class TokenRefused(Exception):
    """The token is missing, malformed, forged, expired, not yet valid, or for another issuer or audience."""


class KeysUnavailable(Exception):
    """The issuer's keys could not be had to verify this token."""


Fetch = Callable[[], Awaitable[bytes]]


def jwks_file(path: Path) -> Fetch:
    async def fetch() -> bytes:
        return await asyncio.to_thread(path.read_bytes)

    return fetch


def jwks_url(url: str, *, timeout: float = 2.0) -> Fetch:
    async def fetch() -> bytes:
        from tornado.httpclient import AsyncHTTPClient  # only a replica that verifies against a URL needs it

        response = await AsyncHTTPClient().fetch(url, connect_timeout=timeout, request_timeout=timeout)
        return response.body

    return fetch


class TokenVerifier:
    def __init__(self, fetch: Fetch, *, issuer: str, audience: str, algorithms: Sequence[str] = ALLOWED_ALGORITHMS,
                 leeway: float = DEFAULT_LEEWAY, refetch_after: float = 300.0, min_refetch: float = 10.0,
                 cache_size: int = CACHE_SIZE, clock: Callable[[], float] = time.time) -> None:
        unsafe = set(algorithms) - set(ALLOWED_ALGORITHMS)
        if unsafe or not algorithms:
            raise ValueError(f"algorithms must be among {', '.join(ALLOWED_ALGORITHMS)}; not {sorted(unsafe)}")
        self._fetch = fetch
        self._issuer = issuer
        self._audience = audience
        self._algorithms = tuple(algorithms)
        self._leeway = leeway
        self._refetch_after = refetch_after
        self._min_refetch = min_refetch
        self._cache_size = cache_size
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")  # the last successful fetch
        self._tried_at = float("-inf")  # the last attempt
        self._failed = False  # the last attempt failed
        self._fetching: asyncio.Task[None] | None = None
        self._verified: OrderedDict[str, tuple[Buyer, str]] = OrderedDict()  # token -> (buyer, kid)
        self.fetches = 0

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._keys)

    async def refresh(self) -> None:
        """Fetch the keys now (one fetch at a time; concurrent callers share it)."""
        await asyncio.shield(self._start_fetch())

    def _start_fetch(self) -> asyncio.Task[None]:
        if self._fetching is None or self._fetching.done():
            self._fetching = asyncio.ensure_future(self._load())
        return self._fetching

    async def _load(self) -> None:
        self._tried_at = self._clock()
        self.fetches += 1
        try:
            document = json.loads(await self._fetch())
            found = jwt.PyJWKSet.from_dict(document)
        except Exception:  # unreachable, unreadable or not a JWKS: keep the keys known so far
            self._failed = True
            return
        keys = {key.key_id: key for key in found.keys if key.key_id}
        self._keys, self._fetched_at, self._failed = keys, self._clock(), False
        for token, (_, kid) in list(self._verified.items()):
            if kid not in keys:  # the issuer removed its key: what it signed is no longer believed
                del self._verified[token]

    async def verify(self, token: str) -> Buyer:
        now = self._clock()
        if now - self._fetched_at > self._refetch_after and now - self._tried_at > self._min_refetch:
            if self._keys:
                self._start_fetch()  # in the background: known keys keep answering meanwhile
            else:
                await self.refresh()
        remembered = self._verified.get(token)
        if remembered is not None and remembered[0].expires + self._leeway > now:
            self._verified.move_to_end(token)
            return remembered[0]
        buyer, kid = await self._check(token, now)
        self._verified[token] = (buyer, kid)
        if len(self._verified) > self._cache_size:
            self._verified.popitem(last=False)
        return buyer

    async def _check(self, token: str, now: float) -> tuple[Buyer, str]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenRefused("malformed token") from exc
        algorithm, kid = header.get("alg"), header.get("kid")
        if algorithm not in self._algorithms:
            raise TokenRefused(f"algorithm {algorithm!r} is not accepted")
        if not isinstance(kid, str) or not kid:
            raise TokenRefused("the token names no key (kid)")
        key = self._keys.get(kid)
        if key is None:
            if now - self._tried_at > self._min_refetch or not self._keys:
                await self.refresh()
            key = self._keys.get(kid)
            if key is None:
                if self._failed:
                    raise KeysUnavailable("the issuer's keys cannot be fetched")
                raise TokenRefused("unknown key")
        if key.algorithm_name != algorithm:
            raise TokenRefused(f"key {kid} is not for {algorithm}")
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key.key, algorithms=[algorithm], audience=self._audience, issuer=self._issuer,
                leeway=self._leeway, options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise TokenRefused(str(exc)) from exc
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise TokenRefused("the token's subject is empty")
        return Buyer(issuer=self._issuer, subject=subject, expires=float(claims["exp"])), kid
