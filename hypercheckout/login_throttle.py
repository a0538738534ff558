"""Admin login throttling, independent of the purchase limiter: it works with every purchase limit off.

Failed logins are counted in Redis per client address and for all addresses together, each in a fixed one-hour
window. An address past ``per_address`` failures is locked out until its window ends; past ``total`` failures
every login is refused (the admin token is one account, and this caps how many guesses an hour it can take, from
however many addresses). Unlike purchases, logins fail closed: when Redis cannot be asked, nobody logs in.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypercheckout.limiter import Ban, load_script
from hypercheckout.redisclient import CALL_FAILED, RedisClient

WINDOW_SECONDS = 3600


class ThrottleUnavailable(Exception):
    """Redis could not be asked: a login is refused rather than let through unthrottled."""


@dataclass(frozen=True, slots=True)
class Lockout:
    retry_after: float  # seconds
    everyone: bool  # the total cap, not this address's


class LoginThrottle:
    def __init__(self, client: RedisClient, *, prefix: str, per_address: int, total: int,
                 window: float = WINDOW_SECONDS) -> None:
        self._redis = client
        # One hash tag for every key: the script touches several, and a Redis Cluster needs them in one slot.
        self._base = f"{prefix}{{login}}:"
        self._per_address = per_address
        self._total = total
        self._window_ms = int(window * 1000)
        self._script = client.register_script(load_script("login_attempt.lua"))
        self._success = client.register_script(load_script("login_success.lua"))

    def _address_key(self, address: str) -> str:
        return f"{self._base}fail:{address}"

    @property
    def _total_key(self) -> str:
        return f"{self._base}fail-total"

    @property
    def _index(self) -> str:
        return f"{self._base}locked"

    async def attempt(self, address: str) -> Lockout | None:
        """Take one attempt from this address (None), counted as a failure until ``succeeded`` says otherwise, or
        say why it may not try now. One script call checks and counts, so concurrent guesses cannot overrun the
        caps. Raises ThrottleUnavailable if Redis cannot be asked."""
        try:
            answer = await self._script(keys=[self._address_key(address), self._total_key, self._index],
                                        args=[self._window_ms, self._per_address, self._total, address])
        except CALL_FAILED as exc:
            raise ThrottleUnavailable(str(exc)) from exc
        if int(answer[0]) == 1:
            return None
        return Lockout(retry_after=max(int(answer[1]), 1000) / 1000, everyone=int(answer[2]) == 1)

    async def succeeded(self, address: str) -> None:
        """The right token from this address: its attempt is not a failure (the total gets it back) and its own
        count starts again."""
        await self._success(keys=[self._total_key, self._address_key(address), self._index], args=[address])

    async def lockouts(self) -> list[Ban]:
        """Addresses locked out now, as bans of kind "login" (the dashboard lists and lifts them with the others)."""
        members = await self._redis.zrange(self._index, 0, -1)
        if not members:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for member in members:
            pipe.get(self._address_key(member.decode()))
            pipe.pttl(self._address_key(member.decode()))
        values = await pipe.execute()
        found, gone = [], []
        for i, member in enumerate(members):
            count, ttl = values[2 * i], values[2 * i + 1]
            if count is None or int(count) < self._per_address or ttl is None or ttl <= 0:
                gone.append(member)
                continue
            found.append(Ban(kind="login", value=member.decode(), seconds_left=ttl / 1000))
        if gone:
            await self._redis.zrem(self._index, *gone)
        return sorted(found, key=lambda b: b.value)

    async def lift(self, address: str) -> int:
        """Forget one address's failures (lifting its lockout); returns keys removed."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.delete(self._address_key(address))
        pipe.zrem(self._index, address)
        removed, _ = await pipe.execute()
        return int(removed)

    async def lift_all(self) -> int:
        """Forget every failure, the total included."""
        removed = 0
        batch: list[bytes] = []
        async for key in self._redis.scan_iter(match=f"{self._base}*", count=500):
            batch.append(key)
        if batch:
            removed = int(await self._redis.delete(*batch))
        return removed
