"""The batch allocator: arrival order, no partial fills, never below zero."""

import itertools

from hypercheckout.checkout.allocation import allocate


def test_a_request_that_does_not_fit_does_not_block_a_smaller_one_behind_it() -> None:
    result = allocate(2, [3, 1])
    assert result.granted == (False, True)
    assert result.remaining_before == (2, 2)
    assert result.stock_after == 1


def test_arrival_order_decides_who_gets_the_last_units() -> None:
    assert allocate(3, [2, 2, 1]).granted == (True, False, True)


def test_every_small_case_respects_the_rules() -> None:
    for stock in range(0, 7):
        for n in range(0, 5):
            for quantities in itertools.product(range(1, 4), repeat=n):
                result = allocate(stock, quantities)
                left = stock
                for q, ok, seen in zip(quantities, result.granted, result.remaining_before, strict=True):
                    assert seen == left
                    assert ok == (q <= left)  # granted exactly when it fits, whole
                    left -= q if ok else 0
                assert result.stock_after == left >= 0
                assert result.total_granted == sum(q for q, ok in zip(quantities, result.granted, strict=True) if ok)


def test_a_single_use_pass_is_granted_once_and_not_at_all_once_used() -> None:
    # Buyer 1's first request does not fit (3 > 2): its pass is still unspent, so its second one is granted.
    result = allocate(2, [3, 1, 1, 1], users=[1, 1, 2, 1], single_use=True, used={2})
    assert result.granted == (False, True, False, False)
    assert result.refusals == ("out_of_stock", None, "queue_pass_used", "queue_pass_used")
    assert result.stock_after == 1
