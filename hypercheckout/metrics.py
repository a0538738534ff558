"""GET /metrics in Prometheus' text format, from a registry of this process (no global registry).

Two kinds of figures: counted as requests finish (requests by route and status, purchase latency) and read from
the services when scraped (rate-limit decisions, Redis fail-opens, batch sizes, database pool, stock per product,
payments).
The second kind costs the purchase path nothing.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from hypercheckout.store import Product

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    def __init__(self, replica: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.replica = replica
        self.requests = Counter("hypercheckout_requests", "HTTP requests answered, by route, method and status.",
                                ["route", "method", "status"], registry=self.registry)
        self.purchase_seconds = Histogram(
            "hypercheckout_purchase_seconds", "Time to answer POST /purchase, by status.", ["status"],
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.products: list[Product] = []  # refreshed from PostgreSQL before each scrape
        self.queues: dict[int, dict[str, int]] = {}  # per waiting room: length and admitted, read likewise
        self._request_series: dict[tuple[Any, ...], Any] = {}  # (route, method, status) → its series
        self._latency_series: dict[tuple[Any, ...], Any] = {}  # (status,) → its series

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        # Every label from a closed set: any client can send any method, and each new value would be a new series.
        method = method if method in METHODS else "other"
        _kept(self._request_series, self.requests, (route, method, status)).inc()
        if route == "/purchase":
            _kept(self._latency_series, self.purchase_seconds, (status,)).observe(seconds)

    def watch(self, services: Any) -> None:
        """Read the services' own counters at scrape time."""
        self.registry.register(ServiceCollector(services, self))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _kept(kept: dict[tuple[Any, ...], Any], metric: Any, labels: tuple[Any, ...]) -> Any:
    """The metric's series for these labels, asked of prometheus_client once and kept: its labels() checks the
    values and takes a lock on every call, about half of what observing a request cost. As many are kept as it keeps
    itself."""
    series = kept.get(labels)
    if series is None:
        series = kept[labels] = metric.labels(*(str(label) for label in labels))
    return series


class ServiceCollector(Collector):
    def __init__(self, services: Any, metrics: Metrics) -> None:
        self._services = services
        self._metrics = metrics

    def collect(self) -> Iterator[Any]:
        services = self._services
        limiter = services.limiter
        decisions = CounterMetricFamily("hypercheckout_rate_limit_decisions",
                                        "Rate-limit decisions, by outcome and where they were made.",
                                        labels=["decision", "source"])
        for (decision, source), count in sorted(limiter.decisions.items()):
            decisions.add_metric([decision, source], count)
        yield decisions
        pauses = services.gc_pauses
        gc_pauses = HistogramMetricFamily("hypercheckout_gc_pause_seconds", "How long Python's garbage collections "
                                          "stopped this replica, by generation (2: a full collection).",
                                          labels=["generation"])
        for generation in sorted(pauses.counts):
            gc_pauses.add_metric([str(generation)], pauses.cumulative(generation), pauses.seconds[generation])
        yield gc_pauses
        yield GaugeMetricFamily("hypercheckout_gc_frozen_objects", "Objects kept out of every garbage collection since "
                                "this replica started (HC_GC_FREEZE).", value=gc.get_freeze_count())
        yield _histogram("hypercheckout_rate_limit_call_size", "Attempts decided per call of the limiter's script "
                         "(those of a tick of the loop; on one server also those that arrived during the call before).",
                         limiter.call_sizes, BATCH_BUCKETS)
        yield CounterMetricFamily("hypercheckout_redis_fail_open", "Purchases let through unlimited because Redis "
                                  "was unreachable.", value=limiter.fail_open_events)
        admission = services.admission
        refused = CounterMetricFamily("hypercheckout_admission_refusals", "Purchases refused with 503 overloaded "
                                      "before any work, by reason.", labels=["reason"])
        queue_full = getattr(services.strategy, "refused", 0)
        for reason, count in (("in_flight", admission.refused["in_flight"]),
                              ("standing_queue", admission.refused["standing_queue"]), ("batch_queue", queue_full)):
            refused.add_metric([reason], count)
        yield refused
        yield GaugeMetricFamily("hypercheckout_purchases_in_flight", "Purchases this replica is serving now.",
                                value=admission.in_flight)
        yield GaugeMetricFamily("hypercheckout_admission_standing_queue", "1 while admission control judges this "
                                "replica's queue standing (its shortest wait stayed above the target for an interval).",
                                value=int(admission.standing))
        sizes = getattr(services.strategy, "batch_sizes", None)
        if sizes is not None:
            yield _histogram("hypercheckout_batch_size", "Purchases settled per batched transaction.", sizes,
                             BATCH_BUCKETS)
        pool = services.store.pool
        size = GaugeMetricFamily("hypercheckout_db_pool_connections", "PostgreSQL connections of this process.",
                                 labels=["state"])
        size.add_metric(["open"], pool.size)
        size.add_metric(["idle"], pool.freesize)
        size.add_metric(["max"], pool.maxsize)
        yield size
        stock = GaugeMetricFamily("hypercheckout_stock", "Units available, per product (read at scrape).",
                                  labels=["product"])
        initial = GaugeMetricFamily("hypercheckout_initial_stock", "Units the sale started with, per product.",
                                    labels=["product"])
        held = GaugeMetricFamily("hypercheckout_held_units", "Units held by checkouts whose hold still runs, per "
                                 "product (read at scrape).", labels=["product"])
        for product in self._metrics.products:
            stock.add_metric([str(product.id)], product.available)
            initial.add_metric([str(product.id)], product.initial_stock)
            held.add_metric([str(product.id)], product.held_now)
        yield stock
        yield initial
        yield held
        checkout = services.checkout
        holds = CounterMetricFamily("hypercheckout_holds", "Checkouts this replica took (placed) and how those it "
                                    "ended ended: confirmed, released, or expired (given back by its sweeper).",
                                    labels=["outcome"])
        for outcome, count in (("placed", checkout.holds_placed), ("confirmed", checkout.holds_confirmed),
                               ("released", checkout.holds_released), ("expired", services.sweeper.expired)):
            holds.add_metric([outcome], count)
        yield holds
        joined = GaugeMetricFamily("hypercheckout_queue_length", "Buyers who joined a product's waiting room.",
                                   labels=["product"])
        admitted = GaugeMetricFamily("hypercheckout_queue_admitted", "Buyers a product's waiting room has admitted "
                                     "so far (by the admission rate and PostgreSQL's clock).", labels=["product"])
        for product_id, queue in sorted(self._metrics.queues.items()):
            joined.add_metric([str(product_id)], queue["length"])
            admitted.add_metric([str(product_id)], queue["admitted"])
        yield joined
        yield admitted
        yield GaugeMetricFamily("hypercheckout_sold_out_flags", "Products this replica answers 409 for without "
                                "asking PostgreSQL.", value=len(services.sold_out.flagged))
        if services.payments is not None:
            payments = CounterMetricFamily(
                "hypercheckout_payments", "What this replica did with payments: intents created, captured, "
                "cancelled, late payments re-booked, webhooks received and the duplicates among them.",
                labels=["event"])
            for event, count in asdict(services.payments.counts).items():
                payments.add_metric([event], count)
            yield payments


def _histogram(name: str, documentation: str, counts: dict[int, int], buckets: tuple[int, ...]) -> Any:
    """A Prometheus histogram from exact value → count pairs."""
    cumulative = []
    for bound in buckets:
        cumulative.append((str(bound), sum(n for value, n in counts.items() if value <= bound)))
    total = sum(counts.values())
    cumulative.append(("+Inf", total))
    return HistogramMetricFamily(name, documentation, buckets=cumulative,
                                 sum_value=sum(value * n for value, n in counts.items()))
