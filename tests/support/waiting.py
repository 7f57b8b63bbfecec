"""Waiting from synchronous test code: for a condition, or for a coroutine to finish."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Poll ``predicate`` until it returns something truthy, and return that.

    An ``OSError`` or ``ValueError`` it raises (a refused connection, a half-written file)
    counts as "not yet"; anything else propagates. The timeout error says what it last saw.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except (OSError, ValueError) as exc:
            value = exc
        if value and not isinstance(value, Exception):
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what} (last: {value!r})")
        time.sleep(interval)


def run_blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a thread of its own and return its result.

    ``asyncio.run`` on the calling thread would replace that thread's event loop (the one
    pytest-tornado made for the test) or refuse to run at all (Playwright's sync API keeps a
    loop running there); a fresh thread has no loop to disturb.
    """
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = asyncio.run(coro)
        except BaseException as exc:  # handed to the caller below
            result["error"] = exc

    thread = threading.Thread(target=run, name="run_blocking")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    value: T = result["value"]
    return value
