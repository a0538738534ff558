"""Who is asking: the verified buyer behind a request's ``Authorization: Bearer`` token, as the number its orders,
holds and places are kept under. One per replica, with HC_BUYER_AUTH=jwt."""

from __future__ import annotations

from collections import OrderedDict

from hypercheckout.buyers.tokens import Buyer, KeysUnavailable, TokenRefused, TokenVerifier, jwks_file, jwks_url
from hypercheckout.checkout.errors import invalid_token, unavailable
from hypercheckout.settings import Settings
from hypercheckout.store import Store
from hypercheckout.store.buyers import buyer_id

NUMBERS_KEPT = 100_000  # (issuer, subject) -> number, remembered at most
BEARER = "bearer "


class BuyerAuth:
    def __init__(self, verifier: TokenVerifier, store: Store) -> None:
        self.verifier = verifier
        self._store = store
        self._numbers: OrderedDict[tuple[str, str], int] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: Settings, store: Store) -> BuyerAuth:
        from pathlib import Path

        fetch = jwks_url(settings.jwks_url) if settings.jwks_url else jwks_file(Path(settings.jwks_file))
        return cls(TokenVerifier(fetch, issuer=settings.jwt_issuer, audience=settings.jwt_audience,
                                 algorithms=settings.jwt_algorithms, leeway=settings.jwt_leeway_s), store)

    async def buyer(self, authorization: str | None) -> int:
        """The number of the buyer the request's token names, or a 401 (no or bad token), or a 503 (the issuer's
        keys cannot be had, or PostgreSQL is down: nothing is done for an unknown buyer)."""
        header = authorization or ""
        if header[:len(BEARER)].lower() != BEARER or not header[len(BEARER):].strip():
            raise invalid_token("no bearer token")
        try:
            verified = await self.verifier.verify(header[len(BEARER):].strip())
        except TokenRefused as exc:
            raise invalid_token(str(exc)) from None
        except KeysUnavailable:
            raise unavailable("the issuer's keys") from None
        return await self.number(verified)

    async def number(self, buyer: Buyer) -> int:
        key = (buyer.issuer, buyer.subject)
        found = self._numbers.get(key)
        if found is not None:
            self._numbers.move_to_end(key)
            return found
        for _ in range(2):
            async with self._store.cursor() as cur:
                found = await buyer_id(cur, buyer.issuer, buyer.subject)
            if found is not None:
                break
        if found is None:
            raise unavailable()
        self._numbers[key] = found
        if len(self._numbers) > NUMBERS_KEPT:
            self._numbers.popitem(last=False)
        return found
