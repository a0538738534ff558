"""The garbage collector's pauses as /metrics shows them, and a started replica's heap kept out of collections."""

from __future__ import annotations

import gc
import itertools
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hypercheckout.app import Services
from hypercheckout.gcpauses import PAUSE_BUCKETS, GcPauses, freeze_started_heap
from tests.replicas import running_replicas
from tests.test_metrics import scrape


def test_every_collection_is_counted_by_generation_with_its_duration() -> None:
    pauses = GcPauses()
    pauses.install()
    try:
        gc.collect(0)
        gc.collect(2)
        gc.collect(2)
    finally:
        pauses.uninstall()
    assert pauses._observe not in gc.callbacks
    assert sum(pauses.counts[2].values()) == 2 and sum(pauses.counts[0].values()) >= 1
    assert 0 < pauses.longest[2] <= pauses.seconds[2]
    cumulative = pauses.cumulative(2)
    assert [bound for bound, _ in cumulative] == [repr(b) for b in PAUSE_BUCKETS] + ["+Inf"]
    assert cumulative[-1][1] == 2 and all(a[1] <= b[1] for a, b in itertools.pairwise(cumulative))
    gc.collect(2)
    assert sum(pauses.counts[2].values()) == 2  # uninstalled: nothing more is counted


def test_a_frozen_heap_is_left_out_of_full_collections() -> None:
    class Cycle:
        def __init__(self) -> None:
            self.me = self

    kept = [Cycle() for _ in range(1000)]
    try:
        frozen = freeze_started_heap()
        assert frozen >= len(kept) and gc.get_freeze_count() == frozen
        tracked = len(gc.get_objects())
        assert tracked < frozen  # a collection walks only what was made since
    finally:
        gc.unfreeze()
    assert len(gc.get_objects()) >= tracked + frozen - 1_000  # back in the generations the collector walks


@pytest.mark.gen_test
async def test_metrics_show_the_collectors_pauses(http_client, base_url, services: Services) -> None:
    before = sum(services.gc_pauses.counts[2].values())
    gc.collect(2)
    m = await scrape(http_client, base_url)
    count = m["hypercheckout_gc_pause_seconds_count", (("generation", "2"),)]
    assert count >= before + 1
    assert m["hypercheckout_gc_pause_seconds_bucket", (("generation", "2"), ("le", "+Inf"))] == count
    assert m["hypercheckout_gc_pause_seconds_sum", (("generation", "2"),)] > 0


@pytest.mark.parametrize(("freeze", "frozen"), [("on", True), ("off", False)])
def test_a_started_replica_keeps_its_heap_out_of_collections_unless_told_not_to(settings, freeze: str,
                                                                               frozen: bool) -> None:
    with running_replicas(settings, count=1, HC_GC_FREEZE=freeze) as (url,):
        body = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    families = {f.name: f for f in text_string_to_metric_families(body)}
    kept = families["hypercheckout_gc_frozen_objects"].samples[0].value
    # Started, a replica holds tens of thousands of objects (the libraries, the app): all of them, or none.
    assert (kept > 10_000) if frozen else kept == 0
