"""The offline grace across processes and restarts (opt-in, ``--offline-grace``).

Every process sweeps the store's expired pending-offline deadlines (one atomic step per sweep,
so only one process announces a user). With the in-process store, whose content dies with the
process, a stopping process saves its users' deadlines in the database and the next start
restores them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from presence_app.backends.base import Backend
from presence_app.live.ledger import OnlineLedger

log = logging.getLogger(__name__)

# A sweep runs this long after the deadline it waits for, so that deadlines this close together
# are finalised by one sweep (fewer round trips in a storm of closes).
GRACE_SLACK = 0.05


async def sweep_graces(
    store: Backend, ledger: OnlineLedger, interval: float, reachable: Callable[[], bool]
) -> None:
    """Announce the users whose offline grace ended, at their deadline (runs until cancelled).

    Sleeps until the next deadline the store reports, at most ``interval`` (so a deadline
    another process recorded is seen in time), and wakes early when this process records one
    that is due sooner. Skips the sweep while the store is not ``reachable``."""
    loop = asyncio.get_running_loop()
    added, grace = store.pending_added, store.grace
    while True:
        added.clear()  # before the sweep: a deadline recorded meanwhile still wakes us
        delay = interval
        if reachable():
            wait = await _sweep(store, ledger)
            if wait is not None:
                delay = min(delay, max(wait, 0.0) + GRACE_SLACK)
        wake_at = loop.time() + delay
        while (left := wake_at - loop.time()) > 0:
            if left <= grace + GRACE_SLACK:  # nothing recorded from now on is due sooner
                await asyncio.sleep(left)
                break
            try:
                await asyncio.wait_for(added.wait(), left)
            except TimeoutError:
                break
            added.clear()
            wake_at = min(wake_at, loop.time() + grace + GRACE_SLACK)


async def _sweep(store: Backend, ledger: OnlineLedger) -> float | None:
    """One sweep; seconds until the next deadline (None: none, or the sweep failed)."""
    try:
        events, wait = await store.sweep()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.warning("Could not finalise offline graces (%s); will retry", exc)
        return None
    if events:
        ledger.record(events)
        log.info("%d user(s) went offline after the %.1f s grace", len(events), store.grace)
    return wait


async def restore_handed_over(store: Backend, ledger: OnlineLedger) -> None:
    """At start, with the in-process store: the users the previous run handed over stay
    online until they come back or their grace ends."""
    saved = await ledger.take_pending()
    if store.grace > 0 and saved:
        await store.restore(saved)
        log.info(
            "%d user(s) handed over by the previous run stay online until they "
            "come back or their grace ends",
            len(await store.pending()),
        )


async def save_handed_over(store: Backend, ledger: OnlineLedger) -> None:
    """At stop, with the in-process store and a grace: keep the users handed over (their
    deadlines) in the database for the next start."""
    try:
        saved = await store.pending()
        await ledger.save_pending(saved)
        log.info(
            "Handed over %d user(s) for the next start (grace %.1f s)", len(saved), store.grace
        )
    except Exception as exc:
        log.warning(
            "Could not save the users handed over (%s); a restart will list them offline", exc
        )
