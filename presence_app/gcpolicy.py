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
survivors are frozen again.
"""
from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)


class GcPolicy:
    def __init__(self, freeze_every: int = 1000, collect_after: int = 1000) -> None:
        self.freeze_every = freeze_every
        self.collect_after = collect_after
        self._opened = 0
        self._closed = 0

    def opened(self) -> None:
        self._opened += 1
        if self._opened >= self.freeze_every:
            self._opened = 0
            gc.freeze()

    def closed(self, open_sockets: int) -> None:
        self._closed += 1
        if self._closed >= max(self.collect_after, open_sockets // 10):
            self._closed = 0
            started = time.perf_counter()
            gc.unfreeze()
            freed = gc.collect()
            gc.freeze()
            log.debug("Full GC over %d sockets freed %d objects in %.0f ms", open_sockets,
                      freed, (time.perf_counter() - started) * 1000)
