"""Forked workers sharing one listening socket, supervised by the parent process.

Tornado's ``fork_processes`` does not forward SIGTERM to its children; this small supervisor
does, and restarts a worker that dies (keeping its worker number, hence its node id, so the
new worker clears what the dead one left behind).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def fork_workers(count: int, run_worker: Callable[[int], int]) -> int:
    """Fork ``count`` workers running ``run_worker(i)``; returns the parent's exit code."""
    children: dict[int, int] = {}
    stopping = False

    def spawn(worker: int) -> None:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 1
            try:
                code = run_worker(worker)
            finally:
                os._exit(code)
        children[pid] = worker

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for worker in range(count):
        spawn(worker)
    restarts: list[float] = []
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        worker = children.pop(pid, -1)
        if worker < 0 or stopping:
            continue
        code = os.waitstatus_to_exitcode(status)
        log.warning("Worker %d (pid %d) exited with %d; restarting it", worker, pid, code)
        restarts = [t for t in restarts if t > time.monotonic() - 60] + [time.monotonic()]
        if len(restarts) > 10 * count:
            log.error("Workers keep dying; giving up")
            forward(signal.SIGTERM, None)
            continue
        spawn(worker)
    return 0
