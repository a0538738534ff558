"""What the campaign's clients sent and were answered: purchases (``Operation``) and waiting-room calls
(``QueueCall``), every answer with the time it came."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# A refusal that settles the request's own fate: nothing was sold for it, and nothing will be.
DEFINITE = {200, 400, 403, 404, 409, 422, 429}  # 503 is definite only with "outcome": "nothing_sold"
# Answers that are about the request that got them, never about an earlier try with the same key: a retry
# refused by admission control, the limiter, its pass or a ban says nothing of whether the first try sold.
ABOUT_THE_RETRY = {403, 429}
NOT_SOLD = 0  # a resolution's "status" when PostgreSQL holds no order for the key


def code_of(body: dict[str, Any]) -> str | None:
    error = body.get("error")
    return error.get("code") if isinstance(error, dict) else None


@dataclass
class Answer:
    status: int | None  # None: no answer (timeout, connection error)
    body: dict[str, Any]
    at: float  # epoch seconds when it came (or the request gave up)

    @property
    def code(self) -> str | None:
        return code_of(self.body)


@dataclass
class Operation:
    key: str  # its Idempotency-Key when ``keyed``; otherwise only the history's name for it
    user: int
    product: int
    quantity: int
    started: float
    ended: float = 0.0
    status: int | None = None  # None: no answer (timeout, connection error)
    body: dict[str, Any] = field(default_factory=dict)
    resolved: int | None = None  # for an info operation: the status its key finally got (NOT_SOLD: from PostgreSQL)
    resolved_body: dict[str, Any] = field(default_factory=dict)
    queue_pass: str | None = None  # the Queue-Pass sent (a product with a waiting room)
    room: bool = False  # its product sells through a waiting room
    keyed: bool = True  # sent with an Idempotency-Key
    retries: list[Answer] = field(default_factory=list)  # every answer its key's retries got, in order
    resolved_by: str = ""  # "retry" (a retry's answer reflects the first try) or "database" (the key's row)

    @property
    def kind(self) -> str:
        """Jepsen's classes: ok (200), fail (a definite refusal: nothing was sold), info (outcome unknown)."""
        if self.status == 200:
            return "ok"
        if self.status == 409 and code_of(self.body) == "request_in_progress":
            return "info"  # another try with this key is being processed: this one's outcome is that one's
        if self.status in DEFINITE:
            return "fail"
        if self.status == 503 and self.body.get("error", {}).get("outcome") == "nothing_sold":
            return "fail"
        return "info"

    @property
    def final(self) -> tuple[int | None, dict[str, Any]]:
        """What is known of this key in the end: the first answer, or for an info operation its resolution."""
        return (self.status, self.body) if self.kind != "info" else (self.resolved, self.resolved_body)

    def answers(self) -> list[Answer]:
        """The first answer and every retry's."""
        return [Answer(self.status, self.body, self.ended), *self.retries]


@dataclass
class QueueCall:
    """A join of a waiting room (``join``) or a poll of a ticket (``poll``)."""

    kind: str
    product: int
    user: int
    status: int | None
    body: dict[str, Any]
    at: float


@dataclass
class History:
    operations: list[Operation] = field(default_factory=list)
    calls: list[QueueCall] = field(default_factory=list)


def settles_the_key(status: int | None, body: dict[str, Any]) -> bool:
    """Whether a retry's answer says what became of the key's first try. 200 is its order (replayed, or placed by
    this retry when the first try sold nothing); a refusal decided under the product's row lock (out of stock, at
    the limit) holds for the first try too, since stock only falls and holdings only rise; a request the service
    cannot take (400, 404, 422) was the same request the first time."""
    if status == 200 or status in (400, 404, 422):
        return True
    return status == 409 and code_of(body) in ("out_of_stock", "limit_reached")
