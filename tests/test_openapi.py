"""/openapi.json describes what the handlers really do: schemathesis generates thousands of requests from it (valid
and invalid) against a real replica; none may get a 5xx, and every answer must match the document."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request

from hypercheckout.settings import Settings
from tests.helpers import assert_invariant, set_stock, sql
from tests.replicas import running_replicas

CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,"
          "response_schema_conformance,negative_data_rejection")
OPERATIONS = 23  # 15 public, 8 of the admin API
EXAMPLES = 250  # per operation and phase: well over 2,000 cases in all


def test_every_generated_request_gets_a_documented_answer(settings: Settings) -> None:
    set_stock(settings.database_url, 1_000_000)
    # Requests without the admin token count as failed logins; left at their defaults, the throttle would lock the
    # test's address out after ten, and the admin operations would go untested behind 429s.
    with running_replicas(settings, count=1, HC_ADMIN_TOKEN=settings.admin_token,
                          HC_LOGIN_FAILURES_PER_ADDRESS="1000000", HC_LOGIN_FAILURES_TOTAL="1000000") as (url,):
        with urllib.request.urlopen(f"{url}/openapi.json", timeout=10) as response:
            document = json.load(response)
        operations = sum(method in {"get", "post", "patch", "delete"} for path in document["paths"].values()
                         for method in path)
        assert document["openapi"] == "3.1.0" and operations == OPERATIONS
        done = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json", "--checks", CHECKS,
             "--header", f"Authorization: Bearer {settings.admin_token}",
             "--max-examples", str(EXAMPLES), "--generation-deterministic",
             # One worker: with four, schemathesis's threads ran ast.parse at once and CPython 3.11.7 failed
             # with "AST constructor recursion depth mismatch" (its parser kept that depth in global state,
             # CPython gh-106905), at random, once the document had the admin operations.
             "--workers", "1", "--no-color"],
            capture_output=True, text=True, timeout=600,
        )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    counted = re.search(r"(\d+) generated, (\d+) passed", done.stdout)
    assert counted, done.stdout[-3000:]
    generated, passed = map(int, counted.groups())
    assert generated == passed >= 2_000, done.stdout[-3000:]
    # The admin operations created, changed, reset and deleted products at random (product 1 among them): the
    # invariant must hold for every product there is, with the initial stock each was last given.
    for product_id, initial in sql(settings.database_url, "SELECT id, initial_stock FROM products"):
        assert_invariant(settings.database_url, initial, product=product_id)
