"""What a seed decides: the run's products, its faults and their timings, the number of buyers."""

from __future__ import annotations

import random
from dataclasses import dataclass

FAULTS = ("kill-replica", "pause-replica", "postgres-restart-fast", "postgres-restart-immediate", "redis-restart",
          "nginx-reload")
FAILOVER = "postgres-failover"  # with --pg-standby only
REDIS_MASTER = "redis-master-kill"  # with --redis-cluster, instead of redis-restart: SIGKILL one master
ROOM_RATE, ROOM_PASS_SECONDS = 200, 60  # the waiting room's product (--waiting-room)
# With --waiting-room, operators' changes to the room: a new rate (or the same one: an edit of the card), and the
# room closed, then opened again (a new line) when healed. While it is closed the product sells without a pass.
ROOM_RATE_EDIT, ROOM_REOPEN = "room-rate-edit", "room-close-reopen"
# Once a run, an operator typing in the dashboard's live rate field: ROOM_BURST_EDITS new rates in a row (more than
# the 32 segments the line once kept: a pass admitted before them must still buy).
ROOM_RATE_BURST, ROOM_BURST_EDITS = "room-rate-burst", 40
ROOM_FAULTS = (ROOM_RATE_EDIT, ROOM_REOPEN, ROOM_RATE_BURST)
# With --payments, the payment simulator's faults (POST /_simulator/faults, undone when healed): the provider down,
# and its webhooks late, twice, lost (then retried), out of order.
PAYMENT_FAULTS = ("payments-outage", "webhooks-delayed", "webhooks-duplicated", "webhooks-lost",
                  "webhooks-reordered")


@dataclass
class ProductPlan:
    name: str
    stock: int
    per_user_limit: int | None
    weight: float
    room: bool = False  # sold through a waiting room


@dataclass
class Fault:
    at: float  # seconds into the run
    kind: str
    target: int  # a replica's index where it matters
    hold: float  # seconds before it is healed (restart, SIGCONT)


@dataclass
class Plan:
    """Everything a seed decides."""

    seed: str
    products: list[ProductPlan]
    faults: list[Fault]
    buyers: int
    users: int
    holds_stock: int = 0  # with --holds: the stock of a product of its own that buyers hold, confirm and release
    holders: int = 0  # concurrent buyers holding it
    pay_stock: int = 0  # with --payments: a priced product of its own, held and paid on the simulator
    pay_price: int = 0
    payers: int = 0


def make_plan(seed: str, *, duration: float, buyers: int, faults_per_second: float, replicas: int,
              kinds: tuple[str, ...] = FAULTS, waiting_room: bool = False, holds: bool = False,
              payments: bool = False) -> Plan:
    rng = random.Random(seed)
    products = [
        ProductPlan("limited", rng.randint(5_000, 20_000), rng.randint(2, 5), 0.3),
        ProductPlan("scarce", rng.randint(20, 60), None, 0.3),
        ProductPlan("scarce-limited", rng.randint(30, 80), rng.randint(1, 3), 0.2),
        ProductPlan("plain", rng.randint(500, 5_000), None, 0.2),
    ]
    count = max(1, round(duration * faults_per_second * rng.uniform(0.8, 1.2)))
    faults = sorted((Fault(at=rng.uniform(0.5, duration * 0.9), kind=rng.choice(kinds),
                           target=rng.randrange(replicas), hold=rng.uniform(0.5, 3.0)) for _ in range(count)),
                    key=lambda f: f.at)
    if waiting_room:  # drawn apart, so that the rest of a seed's plan is the same with or without it
        products.append(ProductPlan("queued", random.Random(f"{seed}/queued").randint(100, 400), None, 0.25,
                                    room=True))
        room_rng = random.Random(f"{seed}/room-faults")
        faults = sorted(faults + [
            Fault(at=room_rng.uniform(0.5, duration * 0.8), kind=room_rng.choice((ROOM_RATE_EDIT, ROOM_REOPEN)),
                  target=room_rng.choice((ROOM_RATE // 2, ROOM_RATE, ROOM_RATE * 2)), hold=room_rng.uniform(0.5, 2.0))
            for _ in range(max(2, round(duration * 0.2)))], key=lambda f: f.at)
        burst = random.Random(f"{seed}/room-burst")  # apart too: the faults above are the same with or without it
        faults = sorted([*faults, Fault(at=burst.uniform(duration * 0.3, duration * 0.6), kind=ROOM_RATE_BURST,
                                        target=ROOM_BURST_EDITS, hold=0.1)], key=lambda f: f.at)
    plan = Plan(seed=seed, products=products, faults=faults, buyers=buyers, users=rng.randint(20, 60))
    if holds:  # drawn apart too
        held = random.Random(f"{seed}/holds")
        plan.holds_stock, plan.holders = held.randint(8, 25), max(4, buyers // 2)
    if payments:  # drawn apart too: its product, and the simulator's faults on top of the others
        paid = random.Random(f"{seed}/payments")
        plan.pay_stock, plan.pay_price, plan.payers = paid.randint(8, 25), paid.randint(100, 9_999), max(4, buyers // 2)
        plan.faults = sorted(plan.faults + [
            Fault(at=paid.uniform(0.5, duration * 0.85), kind=paid.choice(PAYMENT_FAULTS), target=0,
                  hold=paid.uniform(0.5, 3.0)) for _ in range(max(3, round(duration * 0.4)))], key=lambda f: f.at)
    return plan

