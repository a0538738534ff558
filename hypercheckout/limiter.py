"""Rate limits and bans in Redis: one Lua script, one round trip per tick of the event loop.

Keyed by buyer (``user_id``) and by client address, each with its own rate. If Redis is unreachable the limiter
fails open — PostgreSQL still guarantees nothing is oversold — and, to keep a dead Redis from adding its timeout
to every purchase, skips Redis entirely for a second after a failure. Such events are counted and logged once per
interval, not per request.

Every attempt that reaches ``check`` in one tick of the loop goes to Redis in one script call, which decides them
in their order as one call each would (chunks of ATTEMPTS_PER_CALL, one after another): in a drop, hundreds of
attempts arrive per tick, and one round trip for all of them saves each its own write, read and reply parsing.
On one server the calls go one at a time, on a connection held for them (heldscript.py): the attempts that
arrive while a call is in flight go together in the next, in their order, and a call that failed fails the
attempts waiting behind it at once (they would each wait for a Redis that just failed).

Keys are spread over ``SHARDS`` hash tags by identity (limiter_keys.py): an identity's keys share one Redis Cluster
slot. On one Redis server both identities of an attempt go in the same call. On a Redis Cluster a call may touch one
slot only, so there is one call per shard per tick, concurrently; an attempt whose two identities live in two slots
is a part in each, and the limiter combines the answers in the script's own order of precedence; an identity whose
part took room from its bucket while the other refused gets the room back (ratelimit_refund.lua). The decision to
allow or refuse is the same as in one call. One difference remains, when both identities are refused at once: each
gets its strike (one call stops at the first refusal).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from hypercheckout.denials import ALLOW, FAILED_OPEN, Decision, LocalDenials
from hypercheckout.heldscript import HeldConnectionScript
from hypercheckout.limiter_keys import SHARDS, index_keys, limit_key, script_keys, shard_of
from hypercheckout.redisclient import CALL_FAILED, RedisClient, is_cluster
from hypercheckout.resources import resource_text

log = logging.getLogger(__name__)

FAILURE_BACKOFF = 1.0  # seconds without trying Redis after it failed
LOG_INTERVAL = 10.0  # seconds between two fail-open log lines

ALLOWED, LIMITED, BANNED = 0, 1, 2
# At most this many attempts in one script call: Redis runs nothing else while a script runs, so a herd's tick is
# cut into calls of about a millisecond each.
ATTEMPTS_PER_CALL = 200


@dataclass(frozen=True, slots=True)
class Ban:
    kind: str  # "user" or "ip"
    value: str
    seconds_left: float

    def as_json(self) -> dict[str, object]:
        return {"kind": self.kind, "value": self.value, "seconds_left": round(self.seconds_left, 1)}


def load_script(name: str) -> str:
    return resource_text("lua", name)


@dataclass(frozen=True, slots=True)
class _Limit:
    interval: int  # µs between attempts at the sustained rate; 0: no limit
    burst: int


@dataclass(frozen=True, slots=True)
class _Answer:
    """One attempt's part of a decision, as a script call gave it."""
    verdict: int
    retry_ms: int
    strikes: int
    which: int = 0  # the refused identity's position in its part (1, 2)


def _answer(result: Sequence[int], position: int) -> _Answer:
    verdict, retry_ms, which, strikes = result[position * 4:position * 4 + 4]
    return _Answer(int(verdict), int(retry_ms), int(strikes), int(which))


@dataclass(slots=True)
class _Attempt:
    members: dict[str, str]  # "user"/"ip" -> "user:7"/"ip:10.0.0.1"
    extra: dict[str, int]  # refusals answered locally since, per identity, to count as strikes
    answers: asyncio.Future[dict[str, _Answer]]


@dataclass(frozen=True, slots=True)
class _Call:
    """An attempt's identities that go in one script call (both, unless two slots of a cluster hold them)."""
    attempt: _Attempt
    identities: list[tuple[str, str]]


def _chunks(calls: list[_Call], size: int) -> list[list[_Call]]:
    return [calls[i:i + size] for i in range(0, len(calls), size)]


class RateLimiter:
    def __init__(
        self,
        client: RedisClient,
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
        self._cluster = is_cluster(client)
        source = load_script("ratelimit.lua")
        self._script: Any = (client.register_script(source) if self._cluster
                             else HeldConnectionScript(client, source))  # type: ignore[arg-type]
        self._refund = client.register_script(load_script("ratelimit_refund.lua"))
        self._limits = {
            "user": _Limit(int(1_000_000 / user_rate) if user_rate else 0, user_burst),
            "ip": _Limit(int(1_000_000 / ip_rate) if ip_rate else 0, ip_burst),
        }
        ban_after = ban_after if ban_seconds > 0 else 0
        self._common = (ban_after, max(1, int(ban_window * 1000)), max(1, int(ban_seconds * 1000)))
        self.enabled = bool(user_rate or ip_rate)
        # (decision, where it was made) -> count, for /metrics: allowed/limited/banned by redis or local memory
        self.decisions: Counter[tuple[str, str]] = Counter()
        self.call_sizes: Counter[int] = Counter()  # attempts in a script call -> calls made; for /metrics
        self._denials = LocalDenials(ban_after, local_deny_seconds)
        self.fail_open_events = 0
        # When a call failed, Redis is skipped for FAILURE_BACKOFF: all of it on one server, only the shard's hash
        # tag on a cluster (the other masters keep limiting while one fails over).
        self._skip_until: dict[int, float] = {}
        self._last_log = 0.0
        # The attempts of the current tick of the loop, sent together when it ends (one round trip per tick).
        self._pending: list[_Attempt] = []
        self._flush_scheduled = False
        self._sending = False  # one server: a call is in flight, and the attempts pending go in the next
        self._flushing: set[asyncio.Task[Any]] = set()  # kept referenced until done

    def _key(self, kind: str, member: str) -> str:
        return limit_key(self._prefix, kind, member)

    def _backoff_slot(self, member: str) -> int:
        return shard_of(member) if self._cluster else 0

    def refused_locally(self, user_id: int | str, client_ip: str) -> Decision | None:
        """The refusal of a buyer or an address that Redis decided a moment ago and this replica remembers (no round
        trip), if there is one; ``check`` gives it too. Never the refusal that would ban: Redis decides that one."""
        if not self.enabled:
            return None
        now = time.monotonic()
        refusal = (self._denials.refuse(f"user:{user_id}", "user", now)
                   or self._denials.refuse(f"ip:{client_ip}", "ip", now))
        if refusal is not None:
            self.decisions["banned" if refusal.banned else "limited", "local"] += 1
        return refusal

    async def check(self, user_id: int | str, client_ip: str) -> Decision:
        """Decide one attempt of a buyer (or another identity, e.g. an admin login) from an address.
        Never raises: Redis trouble is a fail-open decision."""
        if not self.enabled:
            return ALLOW
        refusal = self.refused_locally(user_id, client_ip)
        if refusal is not None:
            return refusal
        now = time.monotonic()
        members = {"user": f"user:{user_id}", "ip": f"ip:{client_ip}"}
        backoff = {self._backoff_slot(m) for m in members.values()}
        if any(now < self._skip_until.get(slot, 0.0) for slot in backoff):
            return self._fail_open(None)
        extra = {kind: self._denials.take_pending(member) for kind, member in members.items()}
        attempt = _Attempt(members, extra, asyncio.get_running_loop().create_future())
        self._pending.append(attempt)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._start_flush)
        try:
            answers = await attempt.answers
        except CALL_FAILED as exc:
            failed_at = time.monotonic() + FAILURE_BACKOFF
            for slot in backoff:
                self._skip_until[slot] = failed_at
            return self._fail_open(exc)
        refused = [(kind, answer) for kind, answer in answers.items() if answer.verdict != ALLOWED]
        if not refused:
            self.decisions["allowed", "redis"] += 1
            self._denials.forget(*members.values())
            return ALLOW
        decisions = {
            kind: Decision(allowed=False, banned=answer.verdict == BANNED, retry_after=answer.retry_ms / 1000,
                           identity=kind)
            for kind, answer in refused
        }
        for kind, answer in refused:
            self._denials.remember(members[kind], decisions[kind], answer.strikes, now)
        # The order of precedence of one script call: a ban before a rate, the buyer before the address.
        kind, answer = max(refused, key=lambda r: (r[1].verdict, r[0] == "user"))
        self.decisions["banned" if answer.verdict == BANNED else "limited", "redis"] += 1
        return decisions[kind]

    # --- one round trip per tick -------------------------------------------------------------------------------

    def _start_flush(self) -> None:
        """Every attempt that reached ``check`` in this tick of the loop goes to Redis together: on a cluster at once,
        on one server when the call in flight, if any, is answered."""
        self._flush_scheduled = False
        if self._cluster:
            attempts, self._pending = self._pending, []
            self._spawn(self._flush(attempts))
        elif not self._sending:
            self._sending = True
            self._spawn(self._send_in_turn())

    def _spawn(self, work: Coroutine[Any, Any, object]) -> None:
        task = asyncio.create_task(work, name="rate-limit-calls")
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def _send_in_turn(self) -> None:
        """One server: a call at a time, each with every attempt pending when the one before it was answered."""
        failure: BaseException | None = None
        try:
            while self._pending:
                attempts, self._pending = self._pending, []
                if failure is None:
                    failure = await self._flush(attempts)
                else:
                    self._fail(attempts, failure)
        except BaseException as exc:
            attempts, self._pending = self._pending, []
            self._fail(attempts, exc)  # the loop shutting down: no check() may wait for good
            raise
        finally:
            self._sending = False

    @staticmethod
    def _fail(attempts: list[_Attempt], exc: BaseException) -> None:
        for attempt in attempts:
            if attempt.answers.done():
                continue
            if isinstance(exc, Exception):
                attempt.answers.set_exception(exc)
            else:
                attempt.answers.cancel()

    def _calls_of(self, attempts: list[_Attempt]) -> dict[int, list[_Call]]:
        """The script calls' parts by shard (0 on one server): an attempt whose two identities live in two slots of a
        cluster is two parts, one in each."""
        if not self._cluster:
            return {0: [_Call(attempt, list(attempt.members.items())) for attempt in attempts]}
        by_shard: dict[int, list[_Call]] = {}
        for attempt in attempts:
            shards = {kind: shard_of(member) for kind, member in attempt.members.items()}
            if len(set(shards.values())) == 1:
                groups = {shards["user"]: list(attempt.members.items())}
            else:
                groups = {shard: [(kind, attempt.members[kind])] for kind, shard in shards.items()}
            for shard, identities in groups.items():
                by_shard.setdefault(shard, []).append(_Call(attempt, identities))
        return by_shard

    async def _flush(self, attempts: list[_Attempt]) -> BaseException | None:
        """Decide and answer ``attempts``; returns the Redis failure that failed any of them, if one did."""
        try:
            outcomes = await self._decide(attempts)
        except BaseException as exc:
            self._fail(attempts, exc)  # a bug here, or the loop shutting down: no check() may wait for good
            raise
        failed: BaseException | None = None
        for attempt, outcome in zip(attempts, outcomes, strict=True):
            if isinstance(outcome, CALL_FAILED):
                failed = outcome
            if attempt.answers.done():
                continue  # its request went away
            if isinstance(outcome, BaseException):
                attempt.answers.set_exception(outcome)  # check() fails open on Redis trouble, raises a bug
            else:
                attempt.answers.set_result(outcome)
        return failed

    async def _decide(self, attempts: list[_Attempt]) -> list[dict[str, _Answer] | BaseException]:
        shards = list(self._calls_of(attempts).values())
        # One shard (one server, always) is awaited as it is: gather would wrap it in a task of its own.
        by_shard = ([await self._call_shard(shards[0])] if len(shards) == 1
                    else await asyncio.gather(*(self._call_shard(calls) for calls in shards)))
        parts: dict[int, list[tuple[_Call, _Answer | BaseException]]] = {}
        for outcomes in by_shard:
            for call, outcome in outcomes:
                parts.setdefault(id(call.attempt), []).append((call, outcome))
        outcomes: list[dict[str, _Answer] | BaseException] = []
        refunds: list[str] = []
        for attempt in attempts:
            try:
                answers, give_back = self._combine(parts[id(attempt)])
            except Exception as exc:
                outcomes.append(exc)
                continue
            outcomes.append(answers)
            refunds += [attempt.members[kind] for kind in give_back]
        # Given back before anybody is answered, so that the next attempt finds the room one call would have left.
        if refunds:
            await asyncio.gather(*(self._give_back(member) for member in refunds))
        return outcomes

    async def _give_back(self, member: str) -> None:
        try:
            await self._refund(keys=[self._key("tat", member)], args=[self._limits[member.partition(":")[0]].interval])
        except CALL_FAILED:
            pass  # the bucket refills by itself within one interval

    async def _call_shard(self, calls: list[_Call]) -> list[tuple[_Call, _Answer | BaseException]]:
        """A shard's calls, in chunks one after another: two calls at once could run in either order, and the
        decisions must be those of the attempts' own order."""
        outcomes: list[tuple[_Call, _Answer | BaseException]] = []
        failure: Exception | None = None
        for chunk in _chunks(calls, ATTEMPTS_PER_CALL):
            if failure is None:  # after a failure the shard's other chunks wait for no timeout of their own
                try:
                    result = await self._call(chunk)
                except Exception as exc:
                    failure = exc
                else:
                    outcomes += [(call, _answer(result, position)) for position, call in enumerate(chunk)]
                    continue
            outcomes += [(call, failure) for call in chunk]
        return outcomes

    async def _call(self, chunk: list[_Call]) -> list[int]:
        self.call_sizes[len(chunk)] += 1
        keys: list[str] = []
        args: list[object] = list(self._common)
        for call in chunk:
            args.append(len(call.identities))
            for kind, member in call.identities:
                limit = self._limits[kind]
                keys += script_keys(self._prefix, member)
                args += [limit.interval, limit.burst, member, call.attempt.extra[kind]]
        return await self._script(keys=keys, args=args)

    def _combine(self, parts: list[tuple[_Call, _Answer | BaseException]]) -> tuple[dict[str, _Answer], list[str]]:
        """One attempt's answers per identity from its one or two parts, and the identities whose room is to be
        given back. Two parts (two slots of a cluster): a refusal stands even if the other part failed (that
        shard's master may be failing over); with no refusal, a failed part fails the attempt open; room taken by
        an identity whose attempt the other refused is given back, as one call would never have taken it."""
        answers: dict[str, _Answer] = {}
        failure: BaseException | None = None
        for call, outcome in parts:
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, CALL_FAILED):
                    raise outcome
                failure = outcome
            elif outcome.verdict == ALLOWED:
                answers.update({kind: outcome for kind, _ in call.identities})
            else:
                answers[call.identities[outcome.which - 1][0]] = outcome
        refused = any(a.verdict != ALLOWED for a in answers.values())
        if failure is not None and not refused:
            raise failure
        if not refused or len(parts) == 1:
            return answers, []
        return answers, [kind for kind, a in answers.items() if a.verdict == ALLOWED and self._limits[kind].interval]

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

    async def _read_indexes(self, which: int, **zrange: object) -> list[tuple[int, bytes, float]]:
        """(shard, member, score) of every shard's banned (``which`` 0) or limited (1) index."""
        pipe = self._redis.pipeline(transaction=False)
        for shard in range(SHARDS):
            pipe.zrange(index_keys(self._prefix, shard)[which], **zrange)
        found = []
        for shard, rows in enumerate(await pipe.execute()):
            found += [(shard, member, score) for member, score in rows]
        return found

    async def _drop_from_index(self, which: int, shards_members: list[tuple[int, str]]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for shard, member in shards_members:
            pipe.zrem(index_keys(self._prefix, shard)[which], member)
        await pipe.execute()

    async def bans(self) -> list[Ban]:
        """Active bans, from the indexes the script keeps (a ban key deleted or expired since drops out)."""
        listed = await self._read_indexes(0, start=0, end=-1, withscores=True)
        if not listed:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for _, member, _ in listed:
            pipe.pttl(self._key("ban", member.decode()))
        ttls = await pipe.execute()
        found, gone = [], []
        for (shard, raw, _), ttl in zip(listed, ttls, strict=True):
            member = raw.decode()
            if ttl is None or ttl <= 0:
                gone.append((shard, member))
                continue
            kind, _, value = member.partition(":")
            found.append(Ban(kind=kind, value=value, seconds_left=ttl / 1000))
        if gone:
            await self._drop_from_index(0, gone)
        return sorted(found, key=lambda b: (b.kind, b.value))

    async def top_limited(self, limit: int = 10) -> list[dict[str, object]]:
        """Identities with the most recent rejections (strikes toward a ban), most first."""
        listed = await self._read_indexes(1, start=0, end=limit * 2 - 1, desc=True, withscores=True)
        ranked = sorted(listed, key=lambda row: -row[2])[:limit * 2]
        if not ranked:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for _, member, _ in ranked:
            pipe.exists(self._key("strikes", member.decode()))
        alive = await pipe.execute()
        found, gone = [], []
        for (shard, raw, score), exists in zip(ranked, alive, strict=True):
            member = raw.decode()
            if not exists:  # its strike window ended: nothing counts toward a ban any more
                gone.append((shard, member))
                continue
            kind, _, value = member.partition(":")
            found.append({"kind": kind, "value": value, "rejections": int(score)})
        if gone:
            await self._drop_from_index(1, gone)
        return found[:limit]

    async def unban(self, *, user_id: int | None = None, ip: str | None = None) -> int:
        """Lift the ban of one buyer or address and forget its strikes and bucket; returns keys removed."""
        members = [f"{kind}:{value}" for kind, value in (("user", user_id), ("ip", ip)) if value is not None]
        if not members:
            return 0
        self._denials.forget(*members)  # this replica at once; the others within their local_deny_seconds
        pipe = self._redis.pipeline(transaction=False)
        for member in members:
            pipe.delete(*(self._key(kind, member) for kind in ("ban", "strikes", "tat")))
            for index in index_keys(self._prefix, shard_of(member)):
                pipe.zrem(index, member)
        results = await pipe.execute()
        return int(sum(results[0::3]))

    async def clear_all(self) -> int:
        """Lift every ban and reset every bucket and strike counter ("clear all rate limits")."""
        removed = 0
        self._denials.clear()
        pipe = self._redis.pipeline(transaction=False)
        for shard in range(SHARDS):
            pipe.delete(*index_keys(self._prefix, shard))
        await pipe.execute()
        batch: list[bytes] = []
        # On a cluster, scan_iter walks every master and delete() splits its keys by slot.
        async for key in self._redis.scan_iter(match=f"{self._prefix}{{rl*", count=500):
            batch.append(key)
            if len(batch) >= 500:
                removed += await self._redis.delete(*batch)
                batch = []
        if batch:
            removed += await self._redis.delete(*batch)
        return int(removed)
