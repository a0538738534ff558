"""`make bench`: raw ceilings with wrk, all in one run, through nginx and three replicas on this machine.

Measures, one after another against the same private PostgreSQL and Redis:

* the no-op ceiling: ``GET /healthz`` (nginx + replicas + the load generator, no domain work);
* successful purchases/s while stock lasts, for each strategy (pessimistic, atomic, batched), limiter off;
* holds/s (POST /checkouts) and checkouts held then confirmed/s, as a ratio to batched purchases/s;
* sold-out rejections/s (stock 0: answered from the replicas' sold-out flags);
* not-started rejections/s (a sale an hour ahead: answered from the replicas' copy of the schedule);
* rate-limited rejections/s (one buyer over its rate: one Redis script call each);
* the limiter on one Redis server and on a Redis Cluster (three masters with a replica each, on this machine):
  purchases with the limiter deciding each one (buyer and address: one script call on one server, two in
  parallel on the cluster) and rate-limited rejections, each as a ratio to the one-server figure of the same run;
* latency at about half the batched maximum, paced with wrk's ``delay()`` (wrk2 is not packaged in Debian);
* the overload curve: purchases at 64, 1,000, 4,000 and 10,000 connections, far past what the replicas can serve:
  200s/s next to the peak of the curve, every other answer by status and error code, connection errors, and
  p50/p99 of all answers (wrk's view) and of 200s alone (nginx's ``request_time``, from its access log).

Each figure is measured right after a no-op ceiling run on the same cluster with the same connections, and is
printed as a ratio to that ceiling and to ``pessimistic``: absolute numbers on a shared 2-core machine move from
run to run, and pairing keeps the ratio honest. Yet this machine's pace moves within a minute (a no-op request's
replica CPU went from 223 to 324 µs within one 40-second `make cpu` run here), so one pair's ratio moves too (by
0.13 between two runs of one code): ``--rounds N`` measures each figure as N pairs in turn (ceiling, run, ceiling,
run, …) and gives the median of their ratios, with the lowest and highest beside it.
A sweep repeats the pair (ceiling, batched purchases) at more connections, since group commit gains with
concurrency. After each purchase run the invariant is checked
(``stock + sold == initial`` and one order per 2xx answer). Results: ``load-tests/results/<date>/bench.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import Backends, percentile, private_backends  # noqa: E402

from hypercheckout.cluster import FILES_KEPT_BACK, raise_file_limit  # noqa: E402

WRK_SCRIPT = HERE / "wrk.lua"
STRATEGIES = ("pessimistic", "atomic", "batched")
PLENTY = 50_000_000  # stock that outlasts any run
OVERLOAD_STEPS = (64, 1_000, 4_000, 10_000)


@dataclass
class Step:
    """One step of the overload curve."""

    connections: int
    seconds: float
    answers: int  # wrk's count
    socket_errors: int  # connect, read, write errors and timeouts, as wrk counts them
    p50_ms: float  # every answer, as wrk saw it
    p99_ms: float
    by_status: dict[str, int]  # "200", "503 overloaded", "409 out_of_stock", … from nginx's access log
    ok_p50_ms: float  # 200s only, nginx's request_time
    ok_p99_ms: float
    peak: float = 0.0  # the best 200s/s of the curve

    @property
    def ok_rate(self) -> float:
        return self.by_status.get("200", 0) / self.seconds


@dataclass
class Figure:
    name: str
    requests: int
    seconds: float
    non_2xx: int
    socket_errors: int
    p50_ms: float
    p99_ms: float
    note: str = ""
    connections: int = 0
    ceiling: float = 0.0  # the no-op ceiling measured just before, same cluster and connections (rounds: median)
    ratios: list[float] = field(default_factory=list)  # each round's req/s ÷ its own ceiling's (--rounds)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def ratio(self) -> float:
        """To the no-op ceiling: the median of the rounds' ratios, or of the one pair."""
        return statistics.median(self.ratios) if self.ratios else self.rate / self.ceiling

    def ratio_text(self) -> str:
        if len(self.ratios) < 2:
            return f"{self.ratio:.2f}"
        return f"{self.ratio:.2f} ({min(self.ratios):.2f} to {max(self.ratios):.2f})"


def combined(runs: list[Figure]) -> Figure:
    """Rounds of one figure as one: their answers and seconds added, the median p50 and the highest p99."""
    if len(runs) == 1:
        return runs[0]
    return Figure(name="", requests=sum(r.requests for r in runs), seconds=sum(r.seconds for r in runs),
                  non_2xx=sum(r.non_2xx for r in runs), socket_errors=sum(r.socket_errors for r in runs),
                  p50_ms=statistics.median(r.p50_ms for r in runs), p99_ms=max(r.p99_ms for r in runs))


def read_access_log(path: Path, offset: int) -> tuple[list[dict[str, object]], int]:
    """The JSON lines nginx wrote since ``offset`` (it flushes its buffer every second), and the new offset."""
    with path.open("rb") as log:
        log.seek(offset)
        data = log.read()
    lines = data.splitlines()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        lines = lines[:-1]
    return [json.loads(line) for line in lines if line.strip()], offset + len(data)


def wrk(url: str, *, seconds: float, connections: int, threads: int = 2, **env: str) -> Figure:
    """Run wrk with wrk.lua; ``env`` sets its WRK_* variables."""
    done = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "-s", str(WRK_SCRIPT),
         url],
        capture_output=True, text=True, env={**os.environ, **env}, check=True, timeout=seconds + 120,
    )
    match = re.search(r"^WRK_JSON (\{.*\})$", done.stdout, re.MULTILINE)
    if not match:
        raise RuntimeError(f"wrk printed no result:\n{done.stdout}\n{done.stderr}")
    raw = json.loads(match.group(1))
    return Figure(
        name="", requests=raw["requests"], seconds=raw["duration_us"] / 1e6, non_2xx=raw["non_2xx"],
        socket_errors=raw["socket_errors"], p50_ms=raw["p50_us"] / 1000, p99_ms=raw["p99_us"] / 1000,
    )


class Bench:
    def __init__(self, backends: Backends, *, seconds: float, connections: int, rounds: int = 1) -> None:
        self.backends = backends
        self.rounds = rounds
        self.cli = backends.cli
        self.cluster = backends.cluster
        self.seconds = seconds
        self.connections = connections
        self.figures: list[Figure] = []
        self.curve: list[Step] = []
        self.steps = OVERLOAD_STEPS
        self.log_offset = 0  # how far check_invariant has read nginx's access log

    def record(self, name: str, figure: Figure, *, connections: int, ceiling: float, note: str = "") -> Figure:
        figure.name, figure.note, figure.connections, figure.ceiling = name, note, connections, ceiling
        self.figures.append(figure)
        print(f"  {name:<40} {figure.rate:>9,.0f} req/s  ({figure.ratio_text()} of {ceiling:,.0f})  "
              f"p50 {figure.p50_ms:6.2f} ms  p99 {figure.p99_ms:6.2f} ms  non-2xx {figure.non_2xx:,}", flush=True)
        return figure

    def paired(self, name: str, url: str, *, connections: int | None = None, **env: str) -> Figure:
        """The no-op ceiling, then this run, back to back on the same cluster (``rounds`` such pairs in turn)."""
        connections = connections or self.connections
        self.skip_access_log()
        ceilings, runs = [], []
        for _ in range(self.rounds):
            ceilings.append(wrk(url, seconds=self.seconds, connections=connections, WRK_MODE="healthz").rate)
            runs.append(wrk(url, seconds=self.seconds, connections=connections, **env))
        figure = combined(runs)
        if self.rounds > 1:
            figure.ratios = [run.rate / ceiling for run, ceiling in zip(runs, ceilings, strict=True)]
        return self.record(name, figure, connections=connections, ceiling=statistics.median(ceilings))

    def run(self, parts: str = "all") -> None:
        if parts == "redis":
            self.redis_cluster_cost()
            return
        if parts == "buyers":
            self.verified_buyers()
            return
        if parts == "holds":
            with self.cluster(HC_STRATEGY="batched") as url:
                self.cli("reset", "--stock", str(PLENTY))
                batched = self.paired("purchases (batched)", url)
                self.check_invariant(batched)
                self.holds(url, batched)
            return
        if parts in ("all", "overload"):
            with self.cluster(HC_STRATEGY="batched") as url:
                self.overload_curve(url, self.steps)
        if parts == "overload":
            return
        print(f"Each run: wrk -t2 -c{self.connections} for {self.seconds:g} s, through nginx to 3 replicas, right "
              "after a no-op ceiling run on the same cluster", flush=True)
        with self.cluster(HC_STRATEGY="batched") as url:
            self.cli("reset", "--stock", "0")
            wrk(url, seconds=1, connections=4)  # every replica sees the product at 0 once
            soldout = self.paired("sold-out rejections (409)", url)
            assert soldout.non_2xx == soldout.requests, "a sold-out product sold something"
            # A sale an hour away: refused by each replica's copy of the schedule, also without PostgreSQL.
            later = json.loads(self.cli("product", "create", "--name", "Later", "--stock", str(PLENTY),
                                        "--starts-at", "+3600", "--json"))
            early = self.paired("not-started rejections (409)", url, WRK_PRODUCT=str(later["id"]))
            assert early.non_2xx == early.requests, "a sale that has not started sold something"
            self.cli("reset", "--stock", str(PLENTY))
            batched = self.paired("purchases (batched)", url)
            self.check_invariant(batched)
            self.holds(url, batched)
            self.half_rate_latency(url, batched)
            # Below the front door's limit (HC_FRONT_DOOR_IN_FLIGHT x 3 replicas = 384; at the limit itself a slot
            # frees a moment after its answer): past it nginx refuses the excess by design, which the overload
            # curve measures.
            for connections in (self.connections * 2, self.connections * 5 // 2):
                self.cli("reset", "--stock", str(PLENTY))
                self.check_invariant(self.paired("purchases (batched)", url, connections=connections),
                                     connections)
        for strategy in ("pessimistic", "atomic"):
            with self.cluster(HC_STRATEGY=strategy) as url:
                self.cli("reset", "--stock", str(PLENTY))
                self.check_invariant(self.paired(f"purchases ({strategy})", url))
        with self.cluster(HC_STRATEGY="batched", HC_RATE_LIMIT="1/s", HC_RATE_BURST="1",
                          HC_BAN_AFTER="1000000000") as url:
            self.cli("reset", "--stock", str(PLENTY))
            limited = self.paired("rate-limited rejections (429)", url, WRK_USER="7")
            self.check_limited(limited)
        if parts == "all":
            self.redis_cluster_cost()
            self.verified_buyers()

    def redis_cluster_cost(self) -> None:
        """The limiter's cost on a Redis Cluster against one Redis server, in the same run and the same settings.
        Every purchase is decided by the limiter for its buyer (a new one each time: allowed) and for its address
        (127.0.0.1 for all, through nginx: its limit set out of reach, yet decided each time)."""
        limits = {"HC_STRATEGY": "batched", "HC_RATE_LIMIT": "1/s", "HC_RATE_BURST": "1",
                  "HC_BAN_AFTER": "1000000000", "HC_IP_RATE_LIMIT": "100000000/s", "HC_IP_RATE_BURST": "100000000"}
        found: dict[str, tuple[Figure, Figure]] = {}
        for where, redis_url in (("one Redis", self.backends.env["HC_REDIS_URL"]),
                                 ("Redis Cluster", self.backends.redis_cluster_url())):
            with self.cluster(HC_REDIS_URL=redis_url, **limits) as url:
                self.cli("reset", "--stock", str(PLENTY))
                bought = self.paired(f"purchases, limiter on ({where})", url)
                self.check_invariant(bought)
                limited = self.paired(f"rate-limited rejections ({where})", url, WRK_USER="8")
                self.check_limited(limited)
                found[where] = bought, limited
        (one_bought, one_limited), (cl_bought, cl_limited) = found["one Redis"], found["Redis Cluster"]
        for figure, base in ((cl_bought, one_bought), (cl_limited, one_limited)):
            ratio = (f"{figure.rate / base.rate:.2f} of one Redis's req/s; {figure.ratio:.2f} of "
                     f"its ceiling vs {base.ratio:.2f}")
            figure.note = f"{figure.note}; {ratio}" if figure.note else ratio
            print(f"  {figure.name}: {figure.note}", flush=True)

    def overload_curve(self, url: str, steps: tuple[int, ...] = OVERLOAD_STEPS) -> None:
        """Purchases at ever more connections, stock plenty, limiter off: goodput must hold and the excess must
        be answered (503 overloaded), not dropped."""
        print("Overload curve: POST /purchase, batched, limiter off, stock plenty", flush=True)
        self.cli("reset", "--stock", str(PLENTY))
        time.sleep(1.5)  # nginx flushes its access log every second
        _, offset = read_access_log(self.backends.access_log, 0)
        for connections in steps:
            figure = wrk(url, seconds=self.seconds, connections=connections, threads=2)
            time.sleep(1.5)
            entries, offset = read_access_log(self.backends.access_log, offset)
            purchases = [e for e in entries if e.get("uri") == "/purchase"]
            by_status: dict[str, int] = {}
            for entry in purchases:
                status = str(entry["status"])
                if status == "499" or (status != "200" and not entry.get("bytes")):
                    key = "cut off when the step ended"  # wrk closed the connection before the answer
                else:
                    key = status if status == "200" else f"{status} {entry.get('code') or 'without a code'}"
                by_status[key] = by_status.get(key, 0) + 1
            ok_times = [float(e["request_time"]) * 1000 for e in purchases if e["status"] == 200]
            step = Step(connections=connections, seconds=figure.seconds, answers=figure.requests,
                        socket_errors=figure.socket_errors, p50_ms=figure.p50_ms, p99_ms=figure.p99_ms,
                        by_status=dict(sorted(by_status.items())), ok_p50_ms=percentile(ok_times, 0.50),
                        ok_p99_ms=percentile(ok_times, 0.99))
            self.curve.append(step)
            others = ", ".join(f"{k}: {v:,}" for k, v in step.by_status.items() if k != "200") or "none"
            print(f"  {connections:>6,} connections  200s {step.ok_rate:>7,.0f}/s  p50/p99 all {step.p50_ms:,.0f}/"
                  f"{step.p99_ms:,.0f} ms  200s {step.ok_p50_ms:,.0f}/{step.ok_p99_ms:,.0f} ms  "
                  f"connection errors {step.socket_errors:,}  others: {others}", flush=True)
        peak = max(step.ok_rate for step in self.curve)
        for step in self.curve:
            step.peak = peak
        status = self.backends.status()
        product = status["products"][0]
        assert product["stock"] + product["sold"] == product["initial_stock"], product

    def curve_table(self) -> str:
        lines = ["| connections | 200s/s | vs peak | p50 / p99 all ms | p50 / p99 200s ms | connection errors | "
                 "other answers |", "|---:|---:|---:|---:|---:|---:|---|"]
        for s in self.curve:
            others = ", ".join(f"{k}: {v:,}" for k, v in s.by_status.items() if k != "200") or "—"
            lines.append(f"| {s.connections:,} | {s.ok_rate:,.0f} | {s.ok_rate / s.peak:.2f} | "
                         f"{s.p50_ms:,.0f} / {s.p99_ms:,.0f} | {s.ok_p50_ms:,.0f} / {s.ok_p99_ms:,.0f} | "
                         f"{s.socket_errors:,} | {others} |")
        return "\n".join(lines)

    def curve_chart(self, path: Path) -> None:
        """200s/s against the peak, the excess by answer, and latency, per step of the overload curve."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        xs = [s.connections for s in self.curve]
        fig, (rates, latency) = plt.subplots(1, 2, figsize=(13, 4.2))
        fig.suptitle("Overload curve: POST /purchase through nginx to 3 replicas, wrk, one machine", fontsize=11)
        rates.plot(xs, [s.ok_rate for s in self.curve], "o-", color="#16a34a", label="200s/s")
        refused = [s.by_status.get("503 overloaded", 0) / s.seconds for s in self.curve]
        rates.plot(xs, refused, "o-", color="#64748b", label="503 overloaded/s")
        rates.axhline(0.9 * self.curve[0].peak, color="#16a34a", linestyle=":", linewidth=1, label="0.9 x peak")
        rates.set(xscale="log", xlabel="concurrent connections", ylabel="answers/s", ylim=(0, None))
        rates.legend(fontsize=8)
        rates.grid(alpha=0.3)
        for attr, style, label in (("ok_p50_ms", "o-", "200s p50"), ("ok_p99_ms", "o--", "200s p99"),
                                   ("p50_ms", "s-", "all p50"), ("p99_ms", "s--", "all p99")):
            latency.plot(xs, [getattr(s, attr) for s in self.curve], style, label=label,
                         color="#16a34a" if "ok" in attr else "#0f172a", linewidth=1.3)
        latency.set(xscale="log", yscale="log", xlabel="concurrent connections", ylabel="ms")
        latency.legend(fontsize=8)
        latency.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)

    def half_rate_latency(self, url: str, batched: Figure) -> None:
        """Latency at about half the maximum: each connection waits before its next request (wrk's delay())."""
        target = batched.rate / 2
        connections = 32
        delay_ms = max(0.0, connections / target * 1000 - 2)  # less the expected answer time
        self.cli("reset", "--stock", str(PLENTY))
        figure = wrk(url, seconds=self.seconds, connections=connections, WRK_DELAY_MS=f"{delay_ms:.2f}")
        self.record("purchases (batched) at ~half the max", figure, connections=connections,
                    ceiling=batched.ceiling,
                    note=f"target {target:,.0f}/s: {connections} connections, each pausing {delay_ms:.1f} ms")
        self.check_invariant(figure, connections)

    def holds(self, url: str, purchases: Figure) -> None:
        """Checkouts against purchases, the same cluster and connections: holds alone (POST /checkouts), then
        checkouts held and confirmed (each confirm sent by the thread right after its hold's answer): what a
        confirm costs is the difference between the two, per checkout completed."""
        self.cli("reset", "--stock", str(PLENTY))
        held = self.paired("holds (batched)", url, WRK_MODE="hold")
        ratio = f"{held.rate / purchases.rate:.2f} of purchases/s"
        held.note = f"{held.note}; {ratio}" if held.note else ratio
        self.check_units(held, held=True)
        self.cli("reset", "--stock", str(PLENTY))
        completed = self.paired("holds then confirms (batched)", url, WRK_MODE="checkout")
        self.check_units(completed, held=False)
        checkouts = (completed.requests - completed.non_2xx) / 2 / completed.seconds
        note = (f"{checkouts:,.0f} checkouts completed/s, {checkouts / purchases.rate:.2f} of purchases/s; a confirm "
                f"costs {(held.rate / checkouts - 1) if checkouts else 0:.2f} of a hold")
        completed.note = f"{completed.note}; {note}" if completed.note else note
        print(f"  holds: {held.note}; {note}", flush=True)

    def verified_buyers(self, buyers: int = 2_000) -> None:
        """Purchases with HC_BUYER_AUTH=jwt against the same with none, on the same backends: each request carries
        one of ``buyers`` tokens of a local issuer (so most are verified once and then remembered, as a buyer's
        token is over a sale; the first use of each also makes its buyer's number)."""
        from hypercheckout.buyers.issuer import LocalIssuer

        with self.cluster(HC_STRATEGY="batched") as url:
            self.cli("reset", "--stock", str(PLENTY))
            plain = self.paired("purchases (batched, buyers none)", url)
            self.check_invariant(plain)
        issuer = LocalIssuer(self.backends.workdir / "issuer").ensure()
        tokens = self.backends.workdir / "tokens.txt"
        tokens.write_text("\n".join(issuer.mint(f"buyer-{n}", ttl=3600) for n in range(buyers)) + "\n")
        with self.cluster(HC_STRATEGY="batched", **issuer.settings_env()) as url:
            self.cli("reset", "--stock", str(PLENTY))
            first = self.paired("purchases (batched, buyers jwt)", url, WRK_TOKENS=str(tokens))
            self.check_invariant(first)
            # The same tokens again, each replica having verified each once: a sale's buyers buy, hold, confirm
            # and poll with one token.
            self.cli("reset", "--stock", str(PLENTY))
            again = self.paired("purchases (batched, buyers jwt, tokens seen)", url, WRK_TOKENS=str(tokens))
            self.check_invariant(again)
        for figure, what in ((first, "the first run: each token's first use on each replica among them"),
                             (again, "every token verified before")):
            ratio = (f"{figure.rate / plain.rate:.2f} of purchases with buyers none; {buyers:,} buyers' tokens, "
                     f"{what}")
            figure.note = f"{figure.note}; {ratio}" if figure.note else ratio
            print(f"  verified buyers: {ratio}", flush=True)

    def check_limited(self, figure: Figure) -> None:
        """One buyer at 1/s with a burst of 1: at most one purchase a second of each round, and its first."""
        allowed = figure.requests - figure.non_2xx
        assert allowed <= (self.seconds + 2) * self.rounds, f"the limiter let too much through: {allowed} purchases"

    def check_units(self, figure: Figure, *, held: bool) -> None:
        """After a run of holds: available + held + sold = the stock set, and every 2xx was a hold (or a confirm)."""
        product = self.backends.status()["products"][0]
        assert product["available"] + product["held"] + product["sold"] == product["initial_stock"], product
        in_flight = self.connections * self.rounds  # answered after a round's wrk stopped counting: one a connection
        assert figure.non_2xx <= in_flight, f"{figure.non_2xx} holds or confirms refused while stock lasted"
        if held:
            ok = figure.requests - figure.non_2xx
            assert 0 <= product["held"] - ok <= in_flight, (product, ok)

    def skip_access_log(self) -> None:
        """What nginx logged so far is not this run's (each cluster's nginx may start a new log)."""
        time.sleep(1.5)  # nginx flushes its access log every second
        if self.log_offset > self.backends.access_log.stat().st_size:
            self.log_offset = 0
        _, self.log_offset = read_access_log(self.backends.access_log, self.log_offset)

    def check_invariant(self, figure: Figure, connections: int | None = None) -> None:
        status = self.backends.status()
        product = status["products"][0]
        assert product["available"] + product["held"] + product["sold"] == product["initial_stock"], product
        ok = figure.requests - figure.non_2xx
        # Requests in flight when wrk stops are answered after it stopped counting: at most one per connection, each
        # round.
        assert 0 <= status["orders"] - ok <= (connections or self.connections) * self.rounds, (status["orders"], ok)
        # While stock lasts the only refusal allowed is admission control's (503 overloaded, nothing sold): on a
        # slow moment of a shared machine a replica's queue can stand (controlled delay).
        time.sleep(1.5)  # nginx flushes its access log every second
        entries, self.log_offset = read_access_log(self.backends.access_log, self.log_offset)
        # 499: wrk hung up on requests in flight when its run ended.
        refused = [(e["status"], e.get("code")) for e in entries
                   if e.get("uri") == "/purchase" and e["status"] not in (200, 499)]
        others = [r for r in refused if r != (503, "overloaded")]
        assert not others, f"purchases refused while stock lasted: {others[:5]} ({len(others)} in all)"
        if refused:
            figure.note = (figure.note + "; " if figure.note else "") + f"{len(refused)} x 503 overloaded"

    def table(self) -> str:
        if not self.figures:
            return ""
        pessimistic = next((f.rate for f in self.figures if f.name == "purchases (pessimistic)"), None)
        lines = ["| run | connections | req/s | ceiling req/s | vs ceiling | vs pessimistic | p50 ms | p99 ms | "
                 "non-2xx | note |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for f in self.figures:
            versus = f"{f.rate / pessimistic:.2f}" if pessimistic else "—"
            lines.append(f"| {f.name} | {f.connections} | {f.rate:,.0f} | {f.ceiling:,.0f} | "
                         f"{f.ratio_text()} | {versus} | {f.p50_ms:.2f} | {f.p99_ms:.2f} | "
                         f"{f.non_2xx:,} | {f.note} |")
        return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10, help="length of each wrk run (default 10)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="pairs (no-op ceiling, run) per figure, in turn; its ratio is their median (default 1)")
    parser.add_argument("--only", choices=("all", "overload", "figures", "redis", "holds", "buyers"), default="all",
                        help="overload: only the overload curve; figures: everything but it; redis: only the limiter "
                             "on one Redis against a Redis Cluster; holds: batched purchases, then holds and "
                             "checkouts confirmed against them; buyers: purchases with verified buyers (jwt) "
                             "against none (default: everything)")
    parser.add_argument("--steps", type=lambda text: tuple(int(n) for n in text.split(",")), default=OVERLOAD_STEPS,
                        help="connections of the overload curve, comma-separated (default 64,1000,4000,10000)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / datetime.now().strftime("%Y-%m-%d"),
                        help="folder for bench.md and bench.json")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is missing: apt-get install wrk (make bench installs it)", file=sys.stderr)
        return 2
    files = raise_file_limit()  # wrk's connections (and nginx's, which inherits the limit through the cluster)
    if files < max(args.steps) + FILES_KEPT_BACK:
        print(f"warning: only {files} open files allowed; the largest steps may fail to connect", file=sys.stderr)
    with private_backends() as backends:
        bench = Bench(backends, seconds=args.seconds, connections=args.connections, rounds=args.rounds)
        bench.steps = args.steps
        bench.run(args.only)
    table = bench.table()
    curve = bench.curve_table()
    print("\n" + table + "\n\n" + curve)
    args.out.mkdir(parents=True, exist_ok=True)
    started = datetime.now().isoformat(timespec="seconds")
    machine = f"{os.cpu_count()} cores, {os.uname().machine}"
    curve_section = (
        f"\n\n## Overload curve\n\nPOST /purchase (batched, limiter off, stock plenty), wrk -t2, {args.seconds:g} s "
        f"a step. Latency of all answers as wrk saw it; of 200s as nginx logged them (request_time).\n\n{curve}\n\n"
        "![overload curve](overload-curve.png)") if bench.curve else ""
    rounds = (f" Each figure: {args.rounds} pairs of runs in turn (no-op ceiling, then the figure's); vs ceiling is "
              "the median of their ratios, the lowest and highest in brackets; req/s is over all of its rounds."
              if args.rounds > 1 else "")
    (args.out / "bench.md").write_text(
        f"# make bench — {started}\n\nMachine: {machine}; wrk -t2 -c{args.connections}, {args.seconds:g} s per run, "
        f"through nginx to 3 replicas, all on this machine.{rounds}\n\n{table}{curve_section}\n")
    (args.out / "bench.json").write_text(json.dumps(
        {"started": started, "machine": machine, "seconds": args.seconds, "connections": args.connections,
         "rounds": args.rounds, "figures": [{**asdict(f), "rate": f.rate, "ratio": f.ratio} for f in bench.figures],
         "overload_curve": [{**asdict(step), "ok_rate": step.ok_rate} for step in bench.curve]}, indent=2) + "\n")
    if bench.curve:
        bench.curve_chart(args.out / "overload-curve.png")
    print(f"\nwritten: {args.out / 'bench.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
