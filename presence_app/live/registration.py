"""Keeping the store's list of the users this process holds in line with its sockets.

One task per user at most: a burst of opens and closes of one user's sockets costs at most
one attach or detach in flight, and the task loops until the store agrees with the sockets.
A write that fails asks for a resync (the store may have missed it), which starts over from
what the store says this process holds (``replace``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from presence_app.backends.base import Backend
from presence_app.live.ledger import OnlineLedger
from presence_app.live.resync import STORE_WRITE_FAILED
from presence_app.live.view import iso_now

log = logging.getLogger(__name__)


class StoreRegistration:
    """``holds(username)``: whether a socket of that user is open here; ``failed(reason)``:
    ask for a resync."""

    def __init__(
        self,
        node_id: str,
        store: Backend,
        ledger: OnlineLedger,
        holds: Callable[[str], bool],
        failed: Callable[[str], None],
    ) -> None:
        self.node_id = node_id
        self.store = store
        self.ledger = ledger
        self._holds = holds
        self._failed = failed
        self._registered: set[str] = set()  # users the store believes we hold
        self._reconciling: dict[str, asyncio.Task[None]] = {}
        self._forgetting: set[asyncio.Task[None]] = set()
        self._closed = False

    def registered(self) -> frozenset[str]:
        return frozenset(self._registered)

    def replace(self, held: set[str]) -> None:
        """The store says we hold ``held``: take it as the truth to reconcile from."""
        self._registered = set(held)

    def changed(self, username: str) -> None:
        """Bring the store in line with our sockets of ``username``."""
        if username not in self._reconciling and not self._closed:
            task = asyncio.ensure_future(self._reconcile(username))
            self._reconciling[username] = task

    async def _reconcile(self, username: str) -> None:
        try:
            while True:
                want = self._holds(username)
                if want == (username in self._registered):
                    return
                now = iso_now()
                if want:
                    event = await self.store.attach(self.node_id, username, now)
                    self._registered.add(username)
                else:
                    event = await self.store.detach(self.node_id, username, now)
                    self._registered.discard(username)
                if event:
                    self.ledger.record([event])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(STORE_WRITE_FAILED)
            log.warning("Presence store unavailable for %s (%s); will resynchronise", username, exc)
        finally:
            self._reconciling.pop(username, None)

    async def settled(self, timeout: float = 5.0) -> None:
        """Wait until every pending store update of this process is done."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._reconciling and asyncio.get_running_loop().time() < deadline:
            await asyncio.wait(list(self._reconciling.values()), timeout=0.5)

    def forget(self, username: str) -> None:
        """A deleted account: once our detach of it is done, the store forgets it (or a
        resync would bring it back)."""
        if not self._closed:
            task = asyncio.ensure_future(self._forget(username))
            self._forgetting.add(task)
            task.add_done_callback(self._forgetting.discard)

    async def _forget(self, username: str) -> None:
        try:
            running = self._reconciling.get(username)
            if running is not None:
                await asyncio.wait([running], timeout=5.0)
            await self.store.forget(username)
        except Exception as exc:  # the next resync drops users the database no longer has
            log.warning(
                "Could not remove deleted user %s from the presence store (%s)", username, exc
            )

    async def close(self, timeout: float) -> None:
        """No new updates; those in flight get ``timeout`` s, then are cancelled. Every task
        is awaited, so none is left pending or with an unretrieved exception."""
        self._closed = True
        tasks = [*self._reconciling.values(), *self._forgetting]
        if tasks:
            _, running = await asyncio.wait(tasks, timeout=timeout)
            for task in running:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
