"""Plain HTTP calls from synchronous test code (health checks, JSON endpoints)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


def http_json(url: str, timeout: float = 3.0) -> tuple[int, Any]:
    """GET ``url``: the status and the decoded JSON body. An HTTP error status is returned,
    not raised; its body is ``None`` when it is not JSON (nginx's own HTML error pages).
    Connection errors (``OSError``) propagate: ``wait_until`` treats them as "not yet"."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"null")
        except ValueError:
            return exc.code, None
