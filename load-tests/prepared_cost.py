"""What a batch's statement costs PostgreSQL sent as text, and prepared (store/prepared.py): the plain batch's
statement (``SETTLE_PLAIN_BATCH``) run in a loop on one connection, in interleaved rounds each way, against a
private PostgreSQL started for the run (durable, as `make bench`'s), the backend's CPU time read from /proc. Text
is parsed, analysed and planned on every call; prepared, only executed. Batches of ``--size`` purchases, stock
plenty.

    python load-tests/prepared_cost.py [--batches 3000] [--rounds 2] [--size 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg2

from hypercheckout.localservices import PrivatePostgres
from hypercheckout.migrations.runner import SEED_PRODUCT_ID
from hypercheckout.store.arrays import int_array
from hypercheckout.store.purchases import SETTLE_PLAIN_BATCH

TICKS = os.sysconf("SC_CLK_TCK")
PLENTY = 2_000_000_000


def backend_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def text_of(prepared: str, names: list[str]) -> str:
    """The prepared statement's body as text with psycopg2's placeholders again."""
    body = prepared.split(" AS ", 1)[1]
    for number in range(len(names), 0, -1):  # $10 before $1
        body = body.replace(f"${number}", f"%({names[number - 1]})s")
    return body


def measure(url: str, batches: int, rounds: int, size: int) -> dict[str, list[tuple[float, float]]]:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("UPDATE products SET stock = %s, initial_stock = %s WHERE id = %s", (PLENTY, PLENTY, SEED_PRODUCT_ID))
    cur.execute("SELECT pg_backend_pid()")
    pid = cur.fetchone()[0]
    params = {"product_id": SEED_PRODUCT_ID, "replica": "cost", "total": size, "largest": 1,
              "user_ids": int_array(range(1, size + 1)), "quantities": int_array([1] * size)}
    cur.execute(SETTLE_PLAIN_BATCH.prepare_sql)
    ways = {"text": text_of(SETTLE_PLAIN_BATCH.prepare_sql, list(params)),
            "prepared": SETTLE_PLAIN_BATCH.execute_sql}
    found: dict[str, list[tuple[float, float]]] = {way: [] for way in ways}
    for _ in range(rounds):
        for way, statement in ways.items():
            cpu, wall = backend_cpu(pid), time.perf_counter()
            for _ in range(batches):
                cur.execute(statement, params)
                if cur.fetchone() is None:
                    raise AssertionError(f"{way}: the batch was not granted")
            found[way].append((1e6 * (backend_cpu(pid) - cpu) / batches, 1e6 * (time.perf_counter() - wall) / batches))
    conn.close()
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=3000, help="batches per way and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--size", type=int, default=8, help="purchases per batch")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hc-prepared-") as tmp:
        Path(tmp).chmod(0o755)  # as root, PostgreSQL runs as another user who must reach its data dir
        postgres = PrivatePostgres(Path(tmp) / "pg", durable=True)
        try:
            url = postgres.start()
            # The schema and its seed product, as `hypercheckout migrate` makes them.
            subprocess.run([sys.executable, "-m", "hypercheckout", "migrate"], check=True, capture_output=True,
                           env={**os.environ, "HC_DATABASE_URL": url})
            found = measure(url, args.batches, args.rounds, args.size)
        finally:
            postgres.stop()
    print(f"{args.rounds} interleaved rounds of {args.batches:,} batches of {args.size} each way, one connection; "
          "PostgreSQL backend's CPU µs per batch (wall µs per batch):")
    for way, values in found.items():
        cpu = statistics.median(v[0] for v in values)
        wall = statistics.median(v[1] for v in values)
        print(f"  {way:<9} {cpu:6.0f} µs CPU  ({wall:.0f} µs wall; rounds: "
              + ", ".join(f"{v[0]:.0f}" for v in values) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
