"""Rate limits and bans in Redis: one Lua script, one round trip per purchase attempt.

Keyed by buyer (``user_id``) and by client address, each with its own rate. If Redis is unreachable the limiter
fails open — PostgreSQL still guarantees nothing is oversold — and, to keep a dead Redis from adding its timeout
to every purchase, skips Redis entirely for a second after a failure. Such events are counted and logged once per
interval, not per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass
from importlib import resources

import redis.asyncio as aioredis
import redis.exceptions

log = logging.getLogger(__name__)

REDIS_ERRORS = (redis.exceptions.RedisError, OSError, asyncio.TimeoutError)
FAILURE_BACKOFF = 1.0  # seconds without trying Redis after it failed
LOG_INTERVAL = 10.0  # seconds between two fail-open log lines
LOCAL_DENY_ENTRIES = 50_000  # identities remembered at most; expired ones are dropped first

ALLOWED, LIMITED, BANNED = 0, 1, 2


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    banned: bool = False
    retry_after: float = 0.0  # seconds
    identity: str = ""  # "user" or "ip": which limit refused
    failed_open: bool = False


ALLOW = Decision(allowed=True)
FAILED_OPEN = Decision(allowed=True, failed_open=True)


@dataclass(frozen=True, slots=True)
class Ban:
    kind: str  # "user" or "ip"
    value: str
    seconds_left: float

    def as_json(self) -> dict[str, object]:
        return {"kind": self.kind, "value": self.value, "seconds_left": round(self.seconds_left, 1)}


@dataclass(slots=True)
class _Denial:
    until: float  # monotonic time until which this replica refuses without asking Redis
    retry_at: float  # monotonic time the client may retry (a ban's end, beyond ``until``)
    banned: bool
    strikes: int  # the identity's strikes in Redis when it was refused
    pending: int = 0  # refusals answered here since, to be counted in Redis with the next call


class LocalDenials:
    """Refusals Redis has decided, remembered by one replica so that a client hammering past its rate or while
    banned costs no Redis round trip. Refusals answered here are sent along as strikes with the identity's next
    call, and the attempt that would reach the ban threshold is always decided by Redis, so bans come as they
    would without this cache."""

    def __init__(self, ban_after: int, max_seconds: float) -> None:
        self._ban_after = ban_after
        self._max_seconds = max_seconds  # longest this replica refuses on Redis's earlier word (0: never)
        self._entries: dict[str, _Denial] = {}

    def refuse(self, identity: str, kind: str, now: float) -> Decision | None:
        denial = self._entries.get(identity)
        if denial is None or denial.until <= now:
            return None
        if not denial.banned and self._ban_after and denial.strikes + denial.pending + 1 >= self._ban_after:
            return None  # this refusal bans: Redis decides it
        if not denial.banned:
            denial.pending += 1  # a banned identity collects no more strikes in Redis either
        return Decision(allowed=False, banned=denial.banned, retry_after=denial.retry_at - now, identity=kind)

    def take_pending(self, identity: str) -> int:
        denial = self._entries.get(identity)
        if denial is None or not denial.pending:
            return 0
        pending, denial.pending = denial.pending, 0
        return pending

    def remember(self, identity: str, decision: Decision, strikes: int, now: float) -> None:
        if self._max_seconds <= 0:
            return
        if len(self._entries) >= LOCAL_DENY_ENTRIES:
            self._entries = {k: d for k, d in self._entries.items() if d.until > now}
            if len(self._entries) >= LOCAL_DENY_ENTRIES:
                self._entries.clear()
        self._entries[identity] = _Denial(
            until=now + min(decision.retry_after, self._max_seconds), retry_at=now + decision.retry_after,
            banned=decision.banned, strikes=strikes,
        )

    def forget(self, *identities: str) -> None:
        for identity in identities:
            self._entries.pop(identity, None)

    def clear(self) -> None:
        self._entries.clear()


def load_script(name: str) -> str:
    return resources.files("hypercheckout").joinpath("lua", name).read_text(encoding="utf-8")


class RateLimiter:
    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str,
        user_rate: float | None,
        user_burst: int,
        ip_rate: float | None,
        ip_burst: int,
        ban_after: int,
        ban_window: float,
        ban_seconds: float,
        local_deny_seconds: float = 0.25,
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self._script = client.register_script(load_script("ratelimit.lua"))
        self._args = (
            int(1_000_000 / user_rate) if user_rate else 0,
            user_burst,
            int(1_000_000 / ip_rate) if ip_rate else 0,
            ip_burst,
            ban_after if ban_seconds > 0 else 0,
            max(1, int(ban_window * 1000)),
            max(1, int(ban_seconds * 1000)),
        )
        # Indexes of who is banned / being limited, kept by the script, so listing them never scans the keyspace.
        self._banned_index = f"{prefix}index:banned"
        self._limited_index = f"{prefix}index:limited"
        self.enabled = bool(user_rate or ip_rate)
        # (decision, where it was made) -> count, for /metrics: allowed/limited/banned by redis or local memory
        self.decisions: Counter[tuple[str, str]] = Counter()
        self._denials = LocalDenials(self._args[4], local_deny_seconds)
        self.fail_open_events = 0
        self._skip_until = 0.0
        self._last_log = 0.0

    def _key(self, kind: str, identity: str, value: str) -> str:
        return f"{self._prefix}{kind}:{identity}:{value}"

    async def check(self, user_id: int | str, client_ip: str) -> Decision:
        """Decide one attempt of a buyer (or another identity, e.g. an admin login) from an address.
        Never raises: Redis trouble is a fail-open decision."""
        if not self.enabled:
            return ALLOW
        now = time.monotonic()
        user, ip = str(user_id), client_ip
        user_identity, ip_identity = f"user:{user}", f"ip:{ip}"
        refusal = self._denials.refuse(user_identity, "user", now) or self._denials.refuse(ip_identity, "ip", now)
        if refusal is not None:
            self.decisions["banned" if refusal.banned else "limited", "local"] += 1
            return refusal
        if now < self._skip_until:
            return self._fail_open(None)
        keys = [
            self._key("ban", "user", user), self._key("ban", "ip", ip),
            self._key("tat", "user", user), self._key("tat", "ip", ip),
            self._key("strikes", "user", user), self._key("strikes", "ip", ip),
            self._banned_index, self._limited_index,
        ]
        extra = (self._denials.take_pending(user_identity), self._denials.take_pending(ip_identity))
        try:
            verdict, retry_ms, which, strikes = await self._script(keys=keys, args=(*self._args, user, ip, *extra))
        except REDIS_ERRORS as exc:
            self._skip_until = time.monotonic() + FAILURE_BACKOFF
            return self._fail_open(exc)
        if verdict == ALLOWED:
            self.decisions["allowed", "redis"] += 1
            self._denials.forget(user_identity, ip_identity)
            return ALLOW
        decision = Decision(
            allowed=False, banned=verdict == BANNED, retry_after=int(retry_ms) / 1000,
            identity="user" if which == 1 else "ip",
        )
        self._denials.remember(user_identity if which == 1 else ip_identity, decision, int(strikes), now)
        self.decisions["banned" if decision.banned else "limited", "redis"] += 1
        return decision

    def _fail_open(self, exc: BaseException | None) -> Decision:
        self.fail_open_events += 1
        self.decisions["allowed", "fail_open"] += 1
        now = time.monotonic()
        if now - self._last_log >= LOG_INTERVAL:
            self._last_log = now
            log.warning(
                "rate limiter failing open: Redis unreachable (%s); %d purchase(s) let through unlimited so far",
                exc or "backing off", self.fail_open_events,
            )
        return FAILED_OPEN

    # --- bans: listable and clearable from the CLI and the dashboard ----------------------------------------------

    async def bans(self) -> list[Ban]:
        """Active bans, from the index the script keeps (a ban key deleted or expired since drops out)."""
        members = [m.decode() for m in await self._redis.zrange(self._banned_index, 0, -1)]
        if not members:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for member in members:
            pipe.pttl(f"{self._prefix}ban:{member}")
        ttls = await pipe.execute()
        found, gone = [], []
        for member, ttl in zip(members, ttls, strict=True):
            if ttl is None or ttl <= 0:
                gone.append(member)
                continue
            kind, _, value = member.partition(":")
            found.append(Ban(kind=kind, value=value, seconds_left=ttl / 1000))
        if gone:
            await self._redis.zrem(self._banned_index, *gone)
        return sorted(found, key=lambda b: (b.kind, b.value))

    async def top_limited(self, limit: int = 10) -> list[dict[str, object]]:
        """Identities with the most recent rejections (strikes toward a ban), most first."""
        ranked = await self._redis.zrevrange(self._limited_index, 0, limit * 2 - 1, withscores=True)
        if not ranked:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for member, _ in ranked:
            pipe.exists(f"{self._prefix}strikes:{member.decode()}")
        alive = await pipe.execute()
        found, gone = [], []
        for (member, score), exists in zip(ranked, alive, strict=True):
            name = member.decode()
            if not exists:  # its strike window ended: nothing counts toward a ban any more
                gone.append(name)
                continue
            kind, _, value = name.partition(":")
            found.append({"kind": kind, "value": value, "rejections": int(score)})
        if gone:
            await self._redis.zrem(self._limited_index, *gone)
        return found[:limit]

    async def unban(self, *, user_id: int | None = None, ip: str | None = None) -> int:
        """Lift the ban of one buyer or address and forget its strikes and bucket; returns keys removed."""
        keys, members = [], []
        for identity, value in (("user", None if user_id is None else str(user_id)), ("ip", ip)):
            if value is not None:
                keys += [self._key(kind, identity, value) for kind in ("ban", "strikes", "tat")]
                members.append(f"{identity}:{value}")
        if not keys:
            return 0
        self._denials.forget(*members)  # this replica at once; the others within their local_deny_seconds
        pipe = self._redis.pipeline(transaction=False)
        pipe.delete(*keys)
        pipe.zrem(self._banned_index, *members)
        pipe.zrem(self._limited_index, *members)
        removed, _, _ = await pipe.execute()
        return int(removed)

    async def clear_all(self) -> int:
        """Lift every ban and reset every bucket and strike counter ("clear all rate limits")."""
        removed = 0
        self._denials.clear()
        await self._redis.delete(self._banned_index, self._limited_index)
        for kind in ("ban", "strikes", "tat"):
            batch: list[str | bytes] = []
            async for key in self._redis.scan_iter(match=f"{self._prefix}{kind}:*", count=500):
                batch.append(key)
                if len(batch) >= 500:
                    removed += await self._redis.delete(*batch)
                    batch = []
            if batch:
                removed += await self._redis.delete(*batch)
        return int(removed)
