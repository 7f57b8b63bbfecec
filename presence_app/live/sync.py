"""Keeping the shared presence state true: heartbeats, reaping dead processes, resync.

A process that dies without cleaning up stops refreshing its liveness key; any other process
notices within the heartbeat timeout and detaches the dead process's users (one atomic script,
so only one of them publishes). After a Redis outage or restart, every process re-registers
what it holds locally and corrects its clients from the rebuilt state.

With an offline grace, every process also sweeps the store's expired pending-offline deadlines
(one atomic step per sweep, so only one process announces a user), and a stopping process
hands its users over instead of announcing them offline (presence_app/live/grace.py).

Presence and sync meet through narrow methods only: anything that finds the shared state may
be wrong calls ``PresenceService.request_resync(reason)``; once the store answers, the
maintenance loop runs ``resync``, which takes every reason asked for, counts the first
(``presence_resyncs_total{reason}``), logs them all in one line and has presence
``rebuild`` from what the store says this process holds. ``stop`` ends with
``PresenceService.shutdown`` and the handover.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from presence_app.backends.base import Backend
from presence_app.live.grace import restore_handed_over, save_handed_over, sweep_graces
from presence_app.live.ledger import OnlineLedger
from presence_app.live.presence import PresenceService
from presence_app.live.resync import (
    BROKER_RECONNECTED,
    MAINTENANCE_FAILED,
    REAPED,
    REASONS,
    SESSION_CHECK_FAILED,
    SETTLE_FAILED,
    STORE_RESET,
    STORE_UNREACHABLE,
)
from presence_app.live.view import iso_now

log = logging.getLogger(__name__)
PURGE_INTERVAL = 3600.0
#: Seconds between heartbeats while the store is unreachable: /healthz (and the resync)
#: follow Redis's return within a fraction of a second, not a heartbeat interval later.
RETRY_INTERVAL = 0.25
#: Without Redis, how often open sockets' sessions and the accounts are checked against the
#: database: the bound on how long an admin command takes to reach a running server.
DATABASE_CHECK_INTERVAL = 5.0


class PresenceSync:
    def __init__(
        self,
        presence: PresenceService,
        backend: Backend,
        ledger: OnlineLedger,
        node_id: str,
        heartbeat_timeout: float,
        heartbeat_interval: float,
    ) -> None:
        self.presence = presence
        self.backend = backend
        self.ledger = ledger
        self.node_id = node_id
        self.timeout = heartbeat_timeout
        self.interval = heartbeat_interval
        self.problem: str | None = None
        self.reaped = 0  # read by /metrics
        #: Resyncs by the first reason asked for (read by /metrics).
        self.resyncs: dict[str, int] = dict.fromkeys(REASONS, 0)
        #: Called when the store answers again after a problem (the broker retries at once).
        self.on_recovered: Callable[[], None] | None = None
        self._epoch: str | None = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._settling: asyncio.Future[None] | None = None
        self._to_settle: set[str] = set()
        self._reap_from = 0.0  # loop time before which no other process is reaped (see beat)
        self._loops: asyncio.Future[list[None]] | None = None

    async def start(self) -> None:
        """Clear what an earlier process with our node id left behind, then load the view."""
        try:
            # With a grace, our earlier life's users (killed and restarted at once, say) get
            # their grace too: their clients are probably reconnecting to us right now.
            self.ledger.record(await self.backend.handover(self.node_id, iso_now()))
            self._epoch, _ = await self.backend.heartbeat(self.node_id, self.timeout)
        except Exception as exc:
            self.problem = f"presence store unreachable: {exc}"
            self.presence.request_resync(STORE_UNREACHABLE)
            log.warning("Presence store unreachable at start: %s", exc)
        await self.ledger.clear_node(self.node_id)
        if not self.backend.survives_restart:
            await restore_handed_over(self.backend, self.ledger)
        await self.presence.load()

    async def run(self) -> None:
        """Liveness and maintenance in separate loops: a slow resync, reap or database write
        must never delay the heartbeat (or others would reap this live process)."""
        loops = [self._liveness(), self._maintenance(), self._expiry()]
        if not self.backend.survives_restart:
            loops.append(self._database_check())
        if self.backend.grace > 0:
            loops.append(
                sweep_graces(self.backend, self.ledger, self.interval, lambda: self.problem is None)
            )
        self._loops = asyncio.gather(*loops)
        await self._loops

    async def _liveness(self) -> None:
        while True:
            await self.beat()
            await asyncio.sleep(
                min(self.interval, RETRY_INTERVAL) if self.problem else self.interval
            )

    async def beat(self) -> None:
        """Refresh our liveness key; flag a resync if the store was reset or reaped us."""
        try:
            epoch, rejoined = await self.backend.heartbeat(self.node_id, self.timeout)
            if epoch != self._epoch:
                log.warning(
                    "Presence store was reset (epoch %s -> %s); resynchronising", self._epoch, epoch
                )
                self.presence.request_resync(STORE_RESET)
            elif rejoined:
                log.warning("This process had been reaped as dead; resynchronising")
                self.presence.request_resync(REAPED)
            self._epoch = epoch
            self._answered()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self.problem is None:
                log.warning("Presence store unreachable: %s", exc)
            self.problem = f"presence store unreachable: {exc}"
            self.presence.request_resync(STORE_UNREACHABLE)
        self._wake.set()

    def _answered(self) -> None:
        """The store answered a heartbeat: whatever problem it had is over."""
        if self.problem:
            log.info("Presence store reachable again")
            # The others probably lost the store too (an outage, a Sentinel failover) and
            # their keys expired meanwhile: give them a heartbeat timeout to come back
            # before reaping anyone, or all their users would flicker offline.
            self._reap_from = asyncio.get_running_loop().time() + self.timeout
            self.problem = None
            if self.on_recovered is not None:
                self.on_recovered()

    async def _maintenance(self) -> None:
        loop = asyncio.get_running_loop()
        next_purge = loop.time() + 60
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.problem:
                continue
            try:
                reason = self.presence.resync_requested
                if reason is not None:
                    await self.resync(reason)
                elif self.presence.unannounced:
                    await self.presence.announce_revocations()
                await self.reap_dead()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("Presence maintenance failed (%s); will retry", exc)
                self.presence.request_resync(MAINTENANCE_FAILED)
            if loop.time() >= next_purge:
                next_purge = loop.time() + PURGE_INTERVAL
                await self.purge_sessions()

    async def _expiry(self) -> None:
        """Close the sockets of expired sessions, checked every heartbeat interval (so a
        socket outlives its session by at most that: 2.5 s with the default timeout)."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.presence.close_expired()
            except Exception:  # never let this loop die: log and carry on
                log.exception("Could not close the sockets of expired sessions")

    async def _database_check(self) -> None:
        """One process without Redis: an admin command (another process) cannot reach its
        sockets, so every ``DATABASE_CHECK_INTERVAL`` s it closes the sockets of sessions
        revoked in the database (disabled, reset, revoked), removes deleted accounts and
        lists added ones."""
        while True:
            await asyncio.sleep(DATABASE_CHECK_INTERVAL)
            try:
                await self.presence.check_database()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("Could not check sessions and accounts in the database (%s)", exc)

    async def resubscribed(self) -> None:
        """The broker resubscribed after losing its subscription: revocations published
        meanwhile were missed, so cached sessions are dropped before the resync (which
        re-checks the sessions of every open socket)."""
        self.presence.accounts.clear_cache()
        await self.resync(BROKER_RECONNECTED)

    async def purge_sessions(self) -> None:
        """Delete expired sessions now and then (any process may; it is idempotent)."""
        try:
            count = await self.presence.accounts.purge_expired_sessions()
            if count:
                log.info("Deleted %d expired session(s)", count)
        except Exception as exc:
            log.warning("Could not delete expired sessions: %s", exc)

    async def reap_dead(self) -> None:
        if asyncio.get_running_loop().time() < self._reap_from:
            return
        for node in await self.backend.dead_nodes(self.node_id):
            events = await self.backend.reap(node, iso_now())
            self.reaped += 1
            self.ledger.record(events)
            await self.ledger.clear_node(node)
            log.warning(
                "Process %s stopped heartbeating; %d user(s) went offline", node, len(events)
            )

    async def resync(self, reason: str) -> None:
        """Rebuild the shared state from our local truth and correct our clients.

        ``reason`` (one of ``resync.REASONS``) joins the reasons asked for meanwhile; the
        first asked is counted, all are logged. Returns at once if a resync that began after
        the request has already answered it."""
        p = self.presence
        p.request_resync(reason)
        async with self._lock:
            reasons = p.take_resync_reasons()
            if not reasons:
                return
            self.resyncs[reasons[0]] += 1
            log.info("Resynchronising presence (reason: %s)", ", ".join(reasons))
            self._epoch, _ = await self.backend.heartbeat(self.node_id, self.timeout)
            self._answered()
            states = await p.rebuild(await self.backend.members(self.node_id))
            # Online in our view but unknown to an emptied store: maybe nobody holds them any
            # more, maybe their process has not re-registered yet. Settle them only after every
            # live process has had time to (two heartbeats), or they would flicker offline.
            missing = {u["username"] for u in p.users() if u["online"]} - set(states)
            self._to_settle |= missing
            if self._to_settle and (self._settling is None or self._settling.done()):
                self._settling = asyncio.ensure_future(self._settle_later())
            log.info(
                "Resynchronised presence: %d local user(s), %d known state(s)",
                len(p.local_users()),
                len(states),
            )
        await self.revocations()

    async def revocations(self) -> None:
        """After a resync: close the sockets whose session ended while messages may have been
        lost, and announce the revocations made here while the broker was down."""
        p = self.presence
        try:
            await p.recheck_sessions()
        except Exception as exc:  # the database: try again with the next resync
            log.warning("Could not re-check the sessions of open sockets (%s); will retry", exc)
            p.request_resync(SESSION_CHECK_FAILED)
        await p.announce_revocations()

    async def _settle_later(self) -> None:
        await asyncio.sleep(2 * self.interval)
        usernames, self._to_settle = self._to_settle, set()
        try:
            states = await self.backend.states()
            for username in sorted(usernames - set(states)):
                event = await self.backend.settle(username, iso_now())  # no-op if held again
                self.ledger.record([event] if event else [])
        except Exception as exc:
            log.warning("Could not settle users missing after a reset (%s)", exc)
            self.presence.request_resync(SETTLE_FAILED)

    async def stop(self) -> None:
        """Shutdown: close sockets (1001), let our users go, clear our rows.

        Without a grace they go offline at once (unless held elsewhere). With one they are
        handed over: pending deadlines in the store, which any process (or, with the
        in-process store, our next start, through the database) finalises."""
        if self._settling is not None:
            self._settling.cancel()
            await asyncio.gather(self._settling, return_exceptions=True)
        await self.presence.shutdown(timeout=2.0)
        try:
            self.ledger.record(await self.backend.handover(self.node_id, iso_now()))
        except Exception as exc:
            log.warning("Could not clear this process from the presence store: %s", exc)
        # Before the rows: within the shutdown's time budget, this is what users would notice.
        if self.backend.grace > 0 and not self.backend.survives_restart:
            await save_handed_over(self.backend, self.ledger)
        try:
            await self.ledger.flush()
            await self.ledger.clear_node(self.node_id)
        except Exception as exc:
            log.warning("Could not clear this process's online-users rows: %s", exc)
        await self._stop_loops()

    async def _stop_loops(self) -> None:
        """The heartbeat and maintenance loops end with the handover: a heartbeat after it
        would list this process as alive again."""
        loops, self._loops = self._loops, None
        if loops is not None:
            loops.cancel()
            await asyncio.gather(loops, return_exceptions=True)
