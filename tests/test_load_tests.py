"""The load tests themselves, run small: `make scenarios` and `make bench` must keep working, and the invariant
checks they make after each run must hold. Speed is not asserted here (load-tests/README.md reports it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

LOAD_TESTS = Path(__file__).resolve().parent.parent / "load-tests"


def run(script: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(LOAD_TESTS / script), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "HC_LOG_LEVEL": "WARNING"})


def test_the_three_scenarios_run_check_the_invariant_and_write_a_report(tmp_path: Path) -> None:
    done = run("run.py", "--duration", "3", "--drain-users", "200", "--drain-stock", "400", "--after-sold-out", "1",
               "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = (tmp_path / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ") and "holds" in line]
    assert [row.split(" | ")[0][2:] for row in rows] == ["write-limit", "rate-limit-shield", "flash-sale-drain"]
    drain = rows[2].split(" | ")
    assert drain[-3:] == ["0", "400", "holds |"]  # drained to exactly 0, nothing oversold
    shield = rows[1].split(" | ")
    assert int(shield[6].replace(",", "")) > 0  # the limiter answered 429s
    for name in ("write-limit", "rate-limit-shield", "flash-sale-drain"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    assert "invariant holds" in done.stdout


@pytest.mark.skipif(shutil.which("wrk") is None and not os.environ.get("CI"), reason="wrk is not installed")
def test_the_benchmark_runs_every_figure_and_checks_the_invariant(tmp_path: Path) -> None:
    done = run("bench.py", "--seconds", "1", "--connections", "16", "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads((tmp_path / "bench.json").read_text())["figures"]
    assert [(f["name"], f["connections"]) for f in figures] == [
        ("sold-out rejections (409)", 16), ("purchases (batched)", 16), ("purchases (batched) at ~half the max", 32),
        ("purchases (batched)", 32), ("purchases (batched)", 64), ("purchases (pessimistic)", 16),
        ("purchases (atomic)", 16), ("rate-limited rejections (429)", 16),
    ]
    assert all(f["requests"] > 0 and f["socket_errors"] == 0 and f["ceiling"] > 0 for f in figures)
    assert figures[0]["non_2xx"] == figures[0]["requests"]  # nothing sold while sold out
    assert "vs ceiling" in (tmp_path / "bench.md").read_text()
