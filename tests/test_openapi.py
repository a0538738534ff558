"""/openapi.json describes what the handlers really do: schemathesis generates thousands of requests from it (valid
and invalid) against a real replica; none may get a 5xx, and every answer must match the document."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request

from hypercheckout.settings import Settings
from tests.helpers import assert_invariant, set_stock
from tests.replicas import running_replicas

CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,"
          "response_schema_conformance,negative_data_rejection")
OPERATIONS = 6
EXAMPLES = 400  # per operation and phase: well over 2,000 cases in all


def test_every_generated_request_gets_a_documented_answer(settings: Settings) -> None:
    set_stock(settings.database_url, 1_000_000)
    with running_replicas(settings, count=1) as (url,):
        with urllib.request.urlopen(f"{url}/openapi.json", timeout=10) as response:
            document = json.load(response)
        assert document["openapi"] == "3.1.0" and len(document["paths"]) == OPERATIONS
        done = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json", "--checks", CHECKS,
             "--max-examples", str(EXAMPLES), "--generation-deterministic", "--workers", "4", "--no-color"],
            capture_output=True, text=True, timeout=600,
        )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    counted = re.search(r"(\d+) generated, (\d+) passed", done.stdout)
    assert counted, done.stdout[-3000:]
    generated, passed = map(int, counted.groups())
    assert generated == passed >= 2_000, done.stdout[-3000:]
    assert_invariant(settings.database_url, 1_000_000)
