"""Who is asking: the verified buyer behind a request's ``Authorization: Bearer`` token, as the number its orders,
holds and places are kept under. One per replica, with HC_BUYER_AUTH=jwt."""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict

from hypercheckout.buyers.tokens import Buyer, KeysUnavailable, TokenRefused, TokenVerifier, jwks_file, jwks_url
from hypercheckout.checkout.errors import invalid_token, unavailable
from hypercheckout.settings import Settings
from hypercheckout.store import Store
from hypercheckout.store.buyers import buyer_ids

NUMBERS_KEPT = 100_000  # (issuer, subject) -> number, remembered at most
NUMBERS_PER_STATEMENT = 500
BEARER = "bearer "


class BuyerAuth:
    def __init__(self, verifier: TokenVerifier, store: Store) -> None:
        self.verifier = verifier
        self._store = store
        self._numbers: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._waiting: dict[tuple[str, str], asyncio.Future[int]] = {}  # first seen, being looked up
        self._flusher: asyncio.Task[None] | None = None

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
            raise unavailable("the issuer's keys", dependency="the issuer's keys (HC_JWKS_URL or HC_JWKS_FILE)") \
                from None
        return await self.number(verified)

    async def number(self, buyer: Buyer) -> int:
        """The buyer's number: remembered, or looked up (made on first use) together with every other buyer first
        seen in the same moment — one statement on one connection, not one per buyer: in a drop, thousands of new
        buyers arrive at once, and a connection each would wait out the pool."""
        key = (buyer.issuer, buyer.subject)
        found = self._numbers.get(key)
        if found is not None:
            self._numbers.move_to_end(key)
            return found
        waiting = self._waiting.get(key)
        if waiting is None:
            waiting = self._waiting[key] = asyncio.get_running_loop().create_future()
            if self._flusher is None or self._flusher.done():
                self._flusher = asyncio.create_task(self._flush(), name="buyer-numbers")
        return await asyncio.shield(waiting)  # one waiter given up on does not fail the others

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # every buyer first seen in this tick joins the batch
        while self._waiting:
            batch = dict(itertools.islice(self._waiting.items(), NUMBERS_PER_STATEMENT))
            for key in batch:
                del self._waiting[key]
            try:
                numbers = await self._look_up(list(batch))
            except Exception as exc:  # PostgreSQL unreachable: each of them gets the 503
                for waiting in batch.values():
                    if not waiting.done():
                        waiting.set_exception(exc)
                continue
            for key, waiting in batch.items():
                number = numbers.get(key)
                if number is not None:
                    self._numbers[key] = number
                if waiting.done():
                    continue
                if number is None:
                    waiting.set_exception(unavailable())
                else:
                    waiting.set_result(number)
            while len(self._numbers) > NUMBERS_KEPT:
                self._numbers.popitem(last=False)

    async def _look_up(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
        numbers: dict[tuple[str, str], int] = {}
        for _ in range(2):  # a buyer another replica was making at that instant is found the second time
            missing = [key for key in keys if key not in numbers]
            if not missing:
                break
            async with self._store.cursor() as cur:
                numbers.update(await buyer_ids(cur, missing))
        return numbers
