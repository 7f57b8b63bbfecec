"""In-flight HTTP requests: counted so that a stop can wait for them, and scoped so that
deeper layers (the bcrypt queue, the database) know which client a piece of work is for.

The scope travels in a ``ContextVar``: Tornado runs each request in a task of its own, so a
scope set in ``prepare`` is seen by every await of that request and by no other request,
without threading an address through every service signature.
"""

from __future__ import annotations

import asyncio
import time
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(eq=False)  # hashed by identity: two requests are never "equal"
class RequestScope:
    """One request: who sent it and whether it has changed anything yet."""

    address: str
    #: Set once a database write of this request has committed: from then on the request
    #: must be allowed to finish, or a stop would leave it half done (an account without
    #: the session the client was promised, say).
    wrote: bool = False


_current: ContextVar[RequestScope | None] = ContextVar("presence_request", default=None)


def current_scope() -> RequestScope | None:
    """The scope of the request being handled in this task (None outside a request)."""
    return _current.get()


def mark_wrote() -> None:
    """Record that the current request has committed a write (no-op outside a request)."""
    scope = _current.get()
    if scope is not None:
        scope.wrote = True


class RequestTracker:
    """Counts requests between ``begin`` and ``end``; refuses new ones once draining."""

    def __init__(self) -> None:
        self.draining = False
        self._scopes: set[RequestScope] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def count(self) -> int:
        return len(self._scopes)

    def begin(self, address: str) -> RequestScope | None:
        """Start tracking a request and make it the current scope; None while draining."""
        if self.draining:
            return None
        scope = RequestScope(address)
        self._scopes.add(scope)
        self._idle.clear()
        _current.set(scope)
        return scope

    def end(self, scope: RequestScope) -> None:
        self._scopes.discard(scope)
        if not self._scopes:
            self._idle.set()

    async def drain(self, timeout: float) -> bool:
        """Refuse new requests, then wait up to ``timeout`` s for the running ones: True if
        none is left."""
        self.draining = True
        return await self.wait_idle(timeout)

    async def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + max(timeout, 0.0)
        if not self._scopes:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), max(deadline - time.monotonic(), 0.0))
        except TimeoutError:
            return False
        return True
