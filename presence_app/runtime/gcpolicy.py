"""Keep Python's cyclic garbage collector off long-lived connections.

Each open socket is a few hundred long-lived objects (handler, stream, request, frames'
buffers), many in reference cycles. Left alone, the collector's full passes walk all of them
again and again while thousands of sockets connect: on this 2-core machine about 1.1 s of a
4.2 s connect storm of 10,000 sockets went to ten full passes of up to 220 ms each (measured
with bench.gcprobe). So every ``freeze_every`` new sockets the survivors are moved to the
permanent generation (``gc.freeze()``: constant time), where the collector never looks.

Frozen objects that die in a cycle (a closed socket's handler <-> connection) are not
reclaimed until unfrozen; after ``collect_after`` closes, or a tenth of the sockets, whichever
is more, one full collection over everything runs (``gc.unfreeze(); gc.collect()``) and the
survivors are frozen again. It runs ``defer`` seconds later, so that a mass disconnect (a
restart of nginx, say) costs one collection, not one per thousand closes.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger(__name__)


class GcPolicy:
    def __init__(
        self, freeze_every: int = 1000, collect_after: int = 1000, defer: float = 1.0
    ) -> None:
        self.freeze_every = freeze_every
        self.collect_after = collect_after
        self.defer = defer
        self._opened = 0
        self._closed = 0
        self._scheduled: asyncio.TimerHandle | None = None

    def opened(self) -> None:
        self._opened += 1
        if self._opened >= self.freeze_every:
            self._opened = 0
            gc.freeze()

    def closed(self, open_sockets: int) -> None:
        self._closed += 1
        if self._closed < max(self.collect_after, open_sockets // 10):
            return
        self._closed = 0
        if not self.defer:
            self.collect()
        elif self._scheduled is None:
            self._scheduled = asyncio.get_running_loop().call_later(self.defer, self.collect)

    def collect(self) -> None:
        self._scheduled = None
        started = time.perf_counter()
        gc.unfreeze()
        freed = gc.collect()
        gc.freeze()
        log.debug(
            "Full GC freed %d objects in %.0f ms", freed, (time.perf_counter() - started) * 1000
        )

    def cancel(self) -> None:
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
