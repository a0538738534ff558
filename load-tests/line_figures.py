"""What reading a waiting room's figures (buyers in line, admitted so far) costs PostgreSQL with a long line: the
count of the places the dashboard once ran against the counters it reads now (store/line.py LENGTHS).

    .venv/bin/python load-tests/line_figures.py --database-url postgresql://…/db [--places 200000]

The database must be migrated (`hypercheckout migrate`); a product with a line of that many places is added to it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hypercheckout.store import line

COUNTED = f"""SELECT id, count(q.place), count(q.place) FILTER (WHERE q.place <= {line.LINE_NOW})
FROM products p LEFT JOIN queue_places q ON q.product_id = p.id AND q.generation = p.room_generation
WHERE p.id = ANY(%(ids)s::bigint[]) GROUP BY p.id"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--places", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    conn = psycopg2.connect(args.database_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        # Half the line reached: 100 a second for as long as half of it takes.
        cur.execute("INSERT INTO products (name, stock, initial_stock, waiting_room, admit_per_second, "
                    "admission_origin, room_generation) VALUES ('line figures', 10, 10, true, 100, "
                    "now() - make_interval(secs => %s), 1) RETURNING id", (args.places / 200,))
        (product,) = cur.fetchone()
        cur.execute("INSERT INTO queue_lines (product_id, generation, last_place, joined) VALUES (%s, 1, %s, %s)",
                    (product, args.places, args.places))
        cur.execute("INSERT INTO queue_places (product_id, generation, user_id, place, ordinal) "
                    "SELECT %s, 1, n, n, n FROM generate_series(1, %s) n", (product, args.places))
        cur.execute("ANALYZE queue_places")
        for name, query in (("counting the places (before)", COUNTED), ("counters (now)", line.LENGTHS)):
            times = []
            for _ in range(args.repeat):
                started = time.monotonic()
                cur.execute(query, {"ids": [product]})
                figures = cur.fetchall()
                times.append((time.monotonic() - started) * 1000)
            print(f"{name}: (product, in line, admitted) {figures[0]}; median {statistics.median(times):.2f} ms, "
                  f"max {max(times):.2f} ms over {args.repeat}")
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
