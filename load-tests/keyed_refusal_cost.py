"""What a refused request with an Idempotency-Key makes PostgreSQL do (issue 22, item 7): a bot that adds a fresh
key to every request must not turn each refusal it would get from memory into work on the product's hot row.

One replica (the real application, in this process, over HTTP) against private PostgreSQL and Redis started for
the run. For each case, N purchases are sent 20 at a time while another connection holds the product's row locked
(FOR UPDATE), as a busy drop's batches do: a refusal that needs that row cannot be answered until the lock goes
(each request gives up after 3 s). Per case: how many were answered while the row was held, and the transactions
PostgreSQL committed and rolled back and the WAL it wrote during the case, the same cases without keys alongside
(what the replica's own background work costs shows there too).

    python load-tests/keyed_refusal_cost.py [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg2
import tornado.httpserver
from tornado.httpclient import HTTPClientError
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from hypercheckout.app import make_app, start_services, stop_services
from hypercheckout.localservices import PrivatePostgres, PrivateRedis
from hypercheckout.processes import free_port
from hypercheckout.settings import Settings

COUNTERS = """
SELECT xact_commit, xact_rollback, pg_current_wal_lsn() FROM pg_stat_database WHERE datname = current_database()
"""


def counters(url: str) -> tuple[int, int, int]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_stat_clear_snapshot()")
        cur.execute(COUNTERS)
        commits, rollbacks, lsn = cur.fetchone()
        cur.execute("SELECT %s::pg_lsn - '0/0'::pg_lsn", (lsn,))
        return commits, rollbacks, int(cur.fetchone()[0])
    # (psycopg2's `with conn` ends the transaction, it does not close: the connection goes with the function)


async def send(client: SimpleAsyncHTTPClient, base: str, body: dict[str, Any], headers: dict[str, str]) -> str:
    try:
        answer = await client.fetch(f"{base}/purchase", method="POST", body=json.dumps(body), headers=headers,
                                    request_timeout=3)
        return str(answer.code)
    except HTTPClientError as exc:
        if exc.code == 599:
            return "no answer in 3 s"
        return f"{exc.code} {json.loads(exc.response.body)['error']['code']}" if exc.response else str(exc.code)


async def case(url: str, base: str, product: int, user: int | None, count: int, keyed: bool) -> dict[str, Any]:
    """``user`` None: a new buyer id for each request (a bot counting through them, under every buyer's rate)."""
    client = SimpleAsyncHTTPClient(force_instance=True, max_clients=20)
    holder = psycopg2.connect(url)
    try:
        await asyncio.sleep(11)  # earlier work's counters reach pg_stat_database (an idle backend flushes within 10 s)
        before = counters(url)
        with holder.cursor() as cur:
            cur.execute("SELECT id FROM products WHERE id = %s FOR UPDATE", (product,))
        answers: Counter[str] = Counter()
        for start in range(0, count, 20):
            wave = await asyncio.gather(*(
                send(client, base, {"user_id": user or 1000 + start + n, "product_id": product, "quantity": 1},
                     {"Idempotency-Key": uuid.uuid4().hex} if keyed else {})
                for n in range(min(20, count - start))))
            answers.update(wave)
        holder.rollback()
        await asyncio.sleep(11)
        after = counters(url)
    finally:
        holder.close()
        client.close()
    return {"answers": dict(answers), "commits": after[0] - before[0], "rollbacks": after[1] - before[1],
            "wal_bytes": after[2] - before[2]}


async def measure(settings: Settings, count: int) -> dict[str, dict[str, Any]]:
    services = await start_services(settings)
    server = tornado.httpserver.HTTPServer(make_app(services))
    port = free_port()
    server.listen(port, "127.0.0.1")
    base = f"http://127.0.0.1:{port}"
    url = settings.database_url
    try:
        with psycopg2.connect(url) as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO products (name, stock, initial_stock, waiting_room, admission_origin, "
                        "room_generation) VALUES ('queued', 1000, 1000, true, now(), 1) RETURNING id")
            room = cur.fetchone()[0]
        await services.schedule.load()
        # A buyer banned: the rate is 1 a second with a burst of 1 and a ban after 3 refusals.
        client = SimpleAsyncHTTPClient(force_instance=True)
        for _ in range(10):
            await send(client, base, {"user_id": 66, "product_id": 1, "quantity": 1}, {})
        client.close()
        results = {}
        for name, product, user in (("no pass (waiting room)", room, None), ("banned buyer", 1, 66)):
            for keyed in (False, True):
                label = f"{name}, {'a fresh key each' if keyed else 'no key'}"
                results[label] = await case(url, base, product, user, count, keyed)
        return results
    finally:
        server.stop()
        await stop_services(services)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="purchases per case")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hc-keyed-refusal-") as tmp:
        Path(tmp).chmod(0o755)  # as root, PostgreSQL runs as another user who must reach its data dir
        postgres, redis = PrivatePostgres(Path(tmp) / "pg"), PrivateRedis(Path(tmp) / "redis")
        try:
            settings = Settings.from_env({
                "HC_RATE_LIMIT": "1/s", "HC_RATE_BURST": "1", "HC_BAN_AFTER": "3", "HC_IP_RATE_LIMIT": "off",
            }, database_url=postgres.start(), redis_url=redis.start())
            results = asyncio.run(measure(settings, args.requests))
        finally:
            redis.stop()
            postgres.stop()
    print(f"{args.requests} purchases per case, 20 at a time, the product's row held locked throughout:")
    for label, result in results.items():
        print(f"  {label:<48} answers {result['answers']}; PostgreSQL: {result['commits']} commits, "
              f"{result['rollbacks']} rollbacks, {result['wal_bytes']:,} bytes of WAL")
    return 0


if __name__ == "__main__":
    sys.exit(main())
