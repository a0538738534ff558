"""A rate-limit decision, and the refusals Redis decided that a replica remembers for a moment."""

from __future__ import annotations

from dataclasses import dataclass

LOCAL_DENY_ENTRIES = 50_000  # identities remembered at most; expired ones are dropped first


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    banned: bool = False
    retry_after: float = 0.0  # seconds
    identity: str = ""  # "user" or "ip": which limit refused
    failed_open: bool = False


ALLOW = Decision(allowed=True)
FAILED_OPEN = Decision(allowed=True, failed_open=True)



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
