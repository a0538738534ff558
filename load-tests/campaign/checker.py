"""The checker: a run's history against what PostgreSQL holds afterwards. Every violation in words; none when the
run kept every promise — nothing oversold, nothing lost, nothing sold that nobody was told of, limits kept, no
refusal that the stock or the buyer's holdings contradict, nobody around the waiting room, no 5xx but 503."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

from campaign.database import Order, ProductState
from campaign.history import History, Operation

CLOSED_SLACK = 2.0  # seconds: an order's created_at is its transaction's start, which may precede its lock wait


@dataclass
class Expected:
    """A product as the run created it: the checker's reference, not the row read back."""

    id: int
    stock: int
    per_user_limit: int | None
    room: bool = False


def check(history: History, expected: list[Expected], products: list[ProductState], orders: list[Order],
          closed: list[list[float]] | None = None) -> list[str]:
    """Every violation of the invariants, in words (empty: the run is clean). ``orders``: one per order, each with
    the keys answered with it (``read_database``); ``closed``: wall-clock spans in which the waiting room may have
    been closed (it then sells without a pass)."""
    planned = {e.id: e for e in expected}
    problems = _products(planned, {p.id: p for p in products}, orders)
    starts = _orders(history.operations, orders, planned, problems)
    problems += _refusals(history.operations, planned, {p.id: p.stock for p in products}, orders, starts)
    problems += _limits(planned, orders)
    problems += _room(history.operations, planned, {p.id: p.stock for p in products}, orders, closed or [])
    problems += _contract(history)
    return problems


def _products(planned: dict[int, Expected], rows: dict[int, ProductState], orders: list[Order]) -> list[str]:
    """Each product is stored as the run created it, and its stock plus what was sold is what it was given."""
    problems = []
    sold: Counter[int] = Counter()
    for order in orders:
        sold[order.product] += order.quantity
        if order.product not in planned:
            problems.append(f"foreign: order {order.id} (keys {list(order.keys)}) is for product {order.product}, "
                            "not one this run created: something sold outside the run's history")
    for product in planned.values():
        row = rows.get(product.id)
        if row is None:
            problems.append(f"missing: product {product.id} has no row ({sold[product.id]} units sold of it)")
            continue
        if (row.initial, row.per_user_limit) != (product.stock, product.per_user_limit):
            problems.append(f"setup: product {product.id} is stored with stock {row.initial} and limit "
                            f"{row.per_user_limit}; the run created it with {product.stock} and "
                            f"{product.per_user_limit}")
        if row.stock < 0 or row.stock + sold[product.id] != product.stock:
            problems.append(f"oversell: product {product.id} stock {row.stock} + sold {sold[product.id]} != "
                            f"{product.stock}")
    return problems


def _orders(ops: list[Operation], orders: list[Order], planned: dict[int, Expected], problems: list[str]) \
        -> dict[int, float]:
    """Every 200 is an order as told, of its own; every order is some purchase's. Returns when each order's
    purchase was sent, where that is known."""
    by_id = {order.id: order for order in orders}
    by_key: dict[str, Order] = {}
    for order in orders:
        for key in order.keys:
            by_key[key] = order
        if len(order.keys) > 1:
            problems.append(f"shared: order {order.id} is the order of {len(order.keys)} keys: {', '.join(order.keys)}")
    keyed = {op.key: op for op in ops if op.keyed}
    claimed: dict[int, str] = {}
    starts: dict[int, float] = {}
    for op in ops:
        status, body = op.final
        if status == 200:
            order = by_id.get(body.get("order_id"))  # type: ignore[arg-type]
            if order is None or (order.user, order.product, order.quantity) != (op.user, op.product, op.quantity) \
                    or (op.key not in order.keys if op.keyed else bool(order.keys)):
                problems.append(f"lost: {op.key} was answered order {body.get('order_id')}, which does not exist "
                                "as sold")
            elif order.id in claimed:
                problems.append(f"shared: order {order.id} was answered to {claimed[order.id]} and to {op.key}")
            else:
                claimed[order.id] = op.key
                starts[order.id] = op.started
        elif not op.keyed:
            continue  # a keyless refusal or unknown: judged by the keyless orders below
        elif status is None:
            problems.append(f"unresolved: key {op.key} still has no definite answer")
        elif op.key in by_key:
            problems.append(f"unexpected: key {op.key} was refused ({status} "
                            f"{body.get('error', {}).get('code')}) yet has order {by_key[op.key].id}")
    for key, order in by_key.items():
        if key not in keyed:
            problems.append(f"unexpected: order {order.id} for key {key}, which no client sent")
        elif order.id not in starts:
            starts[order.id] = keyed[key].started
    # A keyless purchase with no answer may have sold: each keyless order nobody was told of must be one of those
    # (same buyer, product and quantity), each at most once. Its time is not known.
    unknown = Counter((op.user, op.product, op.quantity) for op in ops if not op.keyed and op.kind == "info")
    for order in orders:
        if order.keys or order.id in claimed or order.product not in planned:
            continue
        shape = (order.user, order.product, order.quantity)
        if unknown[shape] > 0:
            unknown[shape] -= 1
        else:
            problems.append(f"unexpected: order {order.id} has no key, and no keyless purchase without an answer "
                            f"(buyer {order.user}, product {order.product}, {order.quantity} units) may have placed it")
    return starts


def _refusals(ops: list[Operation], planned: dict[int, Expected], final: dict[int, int], orders: list[Order],
              starts: dict[int, float]) -> list[str]:
    """During a run stock only falls and a buyer's holdings only rise, so a refusal must agree with the end: a
    product said to have ``remaining`` left cannot end with more, nor sell more after the answer than that; a buyer
    refused at the limit must end owning enough for the refusal to have been true."""
    problems = []
    sold_at: dict[int, list[tuple[float, int]]] = defaultdict(list)
    owned: Counter[tuple[int, int]] = Counter()
    for order in orders:
        owned[(order.product, order.user)] += order.quantity
        if order.id in starts:
            sold_at[order.product].append((starts[order.id], order.quantity))
    for op in ops:
        for answer in op.answers():
            if answer.status != 409 or op.product not in planned:
                continue
            error = answer.body.get("error", {})
            if answer.code == "out_of_stock":
                left = error.get("remaining")
                if not isinstance(left, int):
                    problems.append(f"contract: {op.key} was refused out_of_stock without saying what remains")
                    continue
                if left >= op.quantity:
                    problems.append(f"undersell: {op.key} was refused {op.quantity} units of product {op.product} "
                                    f"with {left} left")
                later = sum(units for sent, units in sold_at[op.product] if sent > answer.at)
                end = final.get(op.product)
                if end is not None and end + later > left:
                    problems.append(f"undersell: {op.key} was told product {op.product} had {left} left; "
                                    f"{later} units were sold to purchases sent after that answer, and it ends "
                                    f"with {end}")
            elif answer.code == "limit_reached":
                limit, expected = error.get("limit"), planned[op.product].per_user_limit
                holding = owned[(op.product, op.user)]
                if limit != expected:
                    problems.append(f"limit: {op.key} was refused at a limit of {limit}; product {op.product}'s "
                                    f"is {expected}")
                elif holding + op.quantity <= limit:
                    problems.append(f"limit: {op.key} (buyer {op.user}, {op.quantity} units of product "
                                    f"{op.product}) was refused at the limit of {limit}, yet the buyer ends owning "
                                    f"{holding}")
    return problems


def _limits(planned: dict[int, Expected], orders: list[Order]) -> list[str]:
    owned: Counter[tuple[int, int]] = Counter()
    for order in orders:
        owned[(order.product, order.user)] += order.quantity
    problems = []
    for (product, user), units in sorted(owned.items()):
        limit = planned[product].per_user_limit if product in planned else None
        if limit is not None and units > limit:
            problems.append(f"limit: buyer {user} owns {units} of product {product}, limit {limit}")
    return problems


def _room(ops: list[Operation], planned: dict[int, Expected], final: dict[int, int], orders: list[Order],
          closed: list[list[float]]) -> list[str]:
    """Nobody buys around a waiting room: a purchase sent without a pass is refused, whatever happened meanwhile
    (unless the room was closed then); a pass buys once; and the room lets buyers through at all."""
    def room_was_closed(order: Order) -> bool:
        return any(start - CLOSED_SLACK <= order.created_at <= end + CLOSED_SLACK for start, end in closed)

    by_key = {key: order for order in orders for key in order.keys}
    problems = []
    bought_with: dict[str, set[int]] = {}
    for op in ops:
        order = by_key.get(op.key) if op.keyed else None
        if not op.room or op.final[0] != 200 or order is None or room_was_closed(order):
            continue
        if op.queue_pass is None:
            problems.append(f"queue: key {op.key} bought product {op.product} without a pass")
        else:
            bought_with.setdefault(op.queue_pass, set()).add(order.id)
    for used, ids in bought_with.items():
        if len(ids) > 1:
            problems.append(f"queue: one pass bought {len(ids)} orders ({sorted(ids)}): {used[:40]}…")
    for product in planned.values():
        through = [op for op in ops if op.product == product.id and op.queue_pass and op.final[0] == 200]
        if product.room and not through and final.get(product.id, 0) > 0:
            problems.append(f"queue: nobody bought product {product.id} through its waiting room, and it ends with "
                            f"{final.get(product.id)} units")
    return problems


def _contract(history: History) -> list[str]:
    """Every answer — first tries, retries, joins, polls — is a JSON error or success; a dependency down is a 503
    (nginx turns its own 502/504 into 503 too): any other 5xx breaks the contract."""
    problems = []
    for op in history.operations:
        for n, answer in enumerate(op.answers()):
            what = f"key {op.key}" + (f" (retry {n})" if n else "")
            problems += _answer_problems(what, answer.status, answer.code)
    for call in history.calls:
        problems += _answer_problems(f"a {call.kind} of product {call.product}'s room (buyer {call.user})",
                                     call.status, call.body.get("error", {}).get("code")
                                     if isinstance(call.body.get("error"), dict) else None)
    return problems


def _answer_problems(what: str, status: int | None, code: str | None) -> list[str]:
    if status is None or status < 400:
        return []
    if status >= 500 and status != 503:
        return [f"contract: {what} was answered {status}"]
    if code is None:
        return [f"contract: {what} was answered {status} without a JSON error"]
    return []
