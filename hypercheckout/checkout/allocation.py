"""How one batch of waiting purchases shares the stock: a pure function, so it can be tested exhaustively."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Allocation:
    granted: tuple[bool, ...]  # one per request, in arrival order
    remaining_before: tuple[int, ...]  # stock each request saw when its turn came
    stock_after: int

    @property
    def total_granted(self) -> int:
        return self.stock_before - self.stock_after

    @property
    def stock_before(self) -> int:
        return self.remaining_before[0] if self.remaining_before else self.stock_after


def allocate(stock: int, quantities: Sequence[int]) -> Allocation:
    """Grant requests in arrival order while stock lasts; a request that does not fit is refused whole.

    A refused request does not block later, smaller ones: with 2 left, [3, 1] grants only the 1. No partial fills,
    never below zero.
    """
    granted: list[bool] = []
    seen: list[int] = []
    left = stock
    for quantity in quantities:
        seen.append(left)
        fits = quantity <= left
        granted.append(fits)
        if fits:
            left -= quantity
    return Allocation(granted=tuple(granted), remaining_before=tuple(seen), stock_after=left)
