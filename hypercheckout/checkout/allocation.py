"""How one batch of waiting purchases shares the stock: a pure function, so it can be tested exhaustively."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

OUT_OF_STOCK = "out_of_stock"
LIMIT_REACHED = "limit_reached"
PASS_USED = "queue_pass_used"


@dataclass(frozen=True, slots=True)
class Allocation:
    granted: tuple[bool, ...]  # one per request, in arrival order
    remaining_before: tuple[int, ...]  # stock each request saw when its turn came
    stock_after: int
    refusals: tuple[str | None, ...] = ()  # why each refused request was refused (None where granted)

    @property
    def total_granted(self) -> int:
        return self.stock_before - self.stock_after

    @property
    def stock_before(self) -> int:
        return self.remaining_before[0] if self.remaining_before else self.stock_after


def allocate(stock: int, quantities: Sequence[int], *, users: Sequence[int] = (),
             bought: Mapping[int, int] | None = None, per_user_limit: int | None = None,
             single_use: bool = False, used: Collection[int] = ()) -> Allocation:
    """Grant requests in arrival order while stock lasts; a request that does not fit is refused whole.

    A refused request does not block later, smaller ones: with 2 left, [3, 1] grants only the 1. No partial fills,
    never below zero. With ``per_user_limit``, a request is also refused when its buyer (``users``, one per
    request) would own more than the limit, counting ``bought`` (units owned before this batch) and what earlier
    requests of the batch were granted. With ``single_use`` (a waiting room's passes: one per buyer), a buyer is
    granted one request at most, none if it is among ``used``; its later requests are refused ``PASS_USED``.
    """
    granted: list[bool] = []
    seen: list[int] = []
    refusals: list[str | None] = []
    owned = dict(bought or {})
    spent = set(used)
    left = stock
    for i, quantity in enumerate(quantities):
        seen.append(left)
        if single_use and users[i] in spent:
            granted.append(False)
            refusals.append(PASS_USED)
            continue
        if per_user_limit is not None and owned.get(users[i], 0) + quantity > per_user_limit:
            granted.append(False)
            refusals.append(LIMIT_REACHED)
            continue
        fits = quantity <= left
        granted.append(fits)
        refusals.append(None if fits else OUT_OF_STOCK)
        if fits:
            left -= quantity
            if single_use:
                spent.add(users[i])
            if per_user_limit is not None:
                owned[users[i]] = owned.get(users[i], 0) + quantity
    return Allocation(granted=tuple(granted), remaining_before=tuple(seen), stock_after=left,
                      refusals=tuple(refusals))
