"""The hot-row bound: how many purchases one product's row can take per second, straight against PostgreSQL.

Every purchase of a product locks that product's row, so one product's sales are serialised in PostgreSQL whatever
the number of replicas. Batching puts B purchases in one transaction under one lock. This runs pgbench against a
private, durable PostgreSQL (fsync on, as in production) with the shape of a batch transaction — lock the row,
decrement by B, insert B orders, commit — for several B, and prints batch transactions/s and purchases/s.

    python load-tests/hot_row.py [--seconds 10] [--clients 8] [--batches 1,16,64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from hypercheckout.localservices import PrivatePostgres, find_postgres_bin  # noqa: E402
from hypercheckout.store import Store, ensure_database  # noqa: E402

BATCH = """\\set uid random(1, 1000000000)
BEGIN;
SELECT stock FROM products WHERE id = 1 FOR UPDATE;
UPDATE products SET stock = stock - {size} WHERE id = 1;
INSERT INTO orders (user_id, product_id, quantity, replica)
SELECT :uid + g, 1, 1, 'hot-row' FROM generate_series(1, {size}) AS g;
COMMIT;
"""


def pgbench(url: str, script: Path, *, clients: int, seconds: float) -> float:
    done = subprocess.run(
        [str(find_postgres_bin("pgbench")), "-n", "-c", str(clients), "-j", str(min(clients, 2)),
         "-T", f"{seconds:g}", "-f", str(script), url], capture_output=True, text=True, check=True)
    match = re.search(r"tps = ([\d.]+)", done.stdout)
    if not match:
        raise RuntimeError(f"pgbench printed no tps:\n{done.stdout}\n{done.stderr}")
    return float(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=8, help="concurrent transactions (replicas' batches)")
    parser.add_argument("--batches", default="1,16,64", help="purchases per transaction, comma-separated")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hc-hot-row-") as tmp:
        os.chmod(tmp, 0o755)
        server = PrivatePostgres(Path(tmp) / "pg", durable=True)
        url = server.start().rsplit("/", 1)[0] + "/hypercheckout"
        try:
            async def prepare() -> None:
                await ensure_database(url)
                store = await Store.connect(url, size=1, timeout=10)
                try:
                    await store.migrate(seed_stock=2_000_000_000)
                finally:
                    await store.close()

            asyncio.run(prepare())
            print(f"pgbench, {args.clients} clients, {args.seconds:g} s each, one product row, fsync on")
            print("| purchases per transaction | transactions/s | purchases/s |")
            print("|---:|---:|---:|")
            for size in (int(n) for n in args.batches.split(",")):
                script = Path(tmp) / f"batch-{size}.sql"
                script.write_text(BATCH.format(size=size))
                tps = pgbench(url, script, clients=args.clients, seconds=args.seconds)
                print(f"| {size} | {tps:,.0f} | {tps * size:,.0f} |", flush=True)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
