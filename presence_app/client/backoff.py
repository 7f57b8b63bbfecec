"""When to reconnect: the page's backoff with full jitter (static/js/connection.js; a test
checks that the constants agree), so scripted clients come back after a restart spread out
like browsers do, not as one flood."""

from __future__ import annotations

import random
from collections.abc import Callable

BACKOFF_BASE = 0.5  # seconds; connection.js BACKOFF_BASE_MS
BACKOFF_CAP = 15.0  # BACKOFF_CAP_MS
RESTART_WINDOW = 2.0  # RESTART_WINDOW_MS: the first wait after a 1001 spreads over this
STABLE_AFTER = 10.0  # STABLE_AFTER_MS: connected this long resets the backoff
GOING_AWAY = 1001  # a restart or a deploy closes every socket of a process with it


def reconnect_delay(
    attempt: int, close_code: int | None, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait before reconnect attempt ``attempt`` (0-based count of consecutive
    failures): uniform in ``[0, min(15, 0.5 * 2**attempt))``, the ceiling at least 2 s
    right after a close with 1001."""
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt)
    if close_code == GOING_AWAY:
        ceiling = max(ceiling, RESTART_WINDOW)
    return rand() * ceiling
