"""The admin API, called as an operator's script would: a 503 is asked again."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from hypercheckout.cluster import Cluster


def admin(cluster: Cluster, method: str, path: str, body: dict[str, Any] | None = None,
          attempts: int = 20) -> dict[str, Any]:
    """An admin API call; a 503 (a replica still finding the new primary, a standby still catching up while
    commits wait for it) is asked again, as an operator's script would."""
    for attempt in range(attempts):
        request = urllib.request.Request(
            f"{cluster.url}{path}", method=method, data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {cluster.env['HC_ADMIN_TOKEN']}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or attempt == attempts - 1:
                raise
            time.sleep(0.5)
    raise AssertionError("not reached")
