"""Keeping the shared presence state true: heartbeats, reaping dead processes, resync.

A process that dies without cleaning up stops refreshing its liveness key; any other process
notices within the heartbeat timeout and detaches the dead process's users (one atomic script,
so only one of them publishes). After a Redis outage or restart, every process re-registers
what it holds locally and corrects its clients from the rebuilt state.

With an offline grace, every process also sweeps the store's expired pending-offline deadlines
(one atomic step per sweep, so only one process announces a user), and a stopping process
hands its users over instead of announcing them offline.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from presence_app.backends.base import Backend, UserState
from presence_app.live.ledger import OnlineLedger
from presence_app.live.presence import PresenceService, iso, iso_now

log = logging.getLogger(__name__)
PURGE_INTERVAL = 3600.0
#: Seconds between heartbeats while the store is unreachable: /healthz (and the resync)
#: follow Redis's return within a fraction of a second, not a heartbeat interval later.
RETRY_INTERVAL = 0.25
#: Without Redis, how often open sockets' sessions and the accounts are checked against the
#: database: the bound on how long an admin command takes to reach a running server.
DATABASE_CHECK_INTERVAL = 5.0
# A sweep runs this long after the deadline it waits for, so that deadlines this close together
# are finalised by one sweep (fewer round trips in a storm of closes).
GRACE_SLACK = 0.05


class PresenceSync:
    def __init__(self, presence: PresenceService, backend: Backend, ledger: OnlineLedger,
                 node_id: str, heartbeat_timeout: float, heartbeat_interval: float) -> None:
        self.presence = presence
        self.backend = backend
        self.ledger = ledger
        self.node_id = node_id
        self.timeout = heartbeat_timeout
        self.interval = heartbeat_interval
        self.problem: str | None = None
        self.resyncs = self.reaped = 0  # read by /metrics
        #: Called when the store answers again after a problem (the broker retries at once).
        self.on_recovered: Callable[[], None] | None = None
        self._epoch: str | None = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._settling: asyncio.Future[None] | None = None
        self._to_settle: set[str] = set()
        self._reap_from = 0.0  # loop time before which no other process is reaped (see beat)

    async def start(self) -> None:
        """Clear what an earlier process with our node id left behind, then load the view."""
        try:
            # With a grace, our earlier life's users (killed and restarted at once, say) get
            # their grace too: their clients are probably reconnecting to us right now.
            self.ledger.record(await self.backend.handover(self.node_id, iso_now()))
            self._epoch, _ = await self.backend.heartbeat(self.node_id, self.timeout)
        except Exception as exc:
            self.problem = f"presence store unreachable: {exc}"
            self.presence.needs_resync = True
            log.warning("Presence store unreachable at start: %s", exc)
        await self.ledger.clear_node(self.node_id)
        if not self.backend.survives_restart:
            saved = await self.ledger.take_pending()
            if self.backend.grace > 0 and saved:
                await self.backend.restore(saved)
                log.info("%d user(s) handed over by the previous run stay online until they "
                         "come back or their grace ends", len(await self.backend.pending()))
        await self.presence.load()

    async def run(self) -> None:
        """Liveness and maintenance in separate loops: a slow resync, reap or database write
        must never delay the heartbeat (or others would reap this live process)."""
        loops = [self._liveness(), self._maintenance(), self._expiry()]
        if not self.backend.survives_restart:
            loops.append(self._database_check())
        if self.backend.grace > 0:
            loops.append(self._sweeper())
        await asyncio.gather(*loops)

    async def _liveness(self) -> None:
        while True:
            await self.beat()
            await asyncio.sleep(min(self.interval, RETRY_INTERVAL) if self.problem
                                else self.interval)

    async def beat(self) -> None:
        """Refresh our liveness key; flag a resync if the store was reset or reaped us."""
        try:
            epoch, rejoined = await self.backend.heartbeat(self.node_id, self.timeout)
            if epoch != self._epoch:
                log.warning("Presence store was reset (epoch %s -> %s); resynchronising",
                            self._epoch, epoch)
                self.presence.needs_resync = True
            elif rejoined:
                log.warning("This process had been reaped as dead; resynchronising")
                self.presence.needs_resync = True
            self._epoch = epoch
            self._answered()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self.problem is None:
                log.warning("Presence store unreachable: %s", exc)
            self.problem = f"presence store unreachable: {exc}"
            self.presence.needs_resync = True
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
                if self.presence.needs_resync:
                    await self.resync()
                elif self.presence.unannounced:
                    await self.presence.announce_revocations()
                await self.reap_dead()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("Presence maintenance failed (%s); will retry", exc)
                self.presence.needs_resync = True
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
        p = self.presence
        while True:
            await asyncio.sleep(DATABASE_CHECK_INTERVAL)
            try:
                await p.recheck_sessions()
                before = p.usernames()
                accounts = await p.accounts.all_users()
                p.prune({user.username for user in accounts}, before)
                for user in accounts:  # added by `presence users add`
                    if not p.known(user.username):
                        p.apply_and_broadcast(user.username,
                                              UserState(False, 0, iso(user.last_seen)))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("Could not check sessions and accounts in the database (%s)", exc)

    async def resubscribed(self) -> None:
        """The broker resubscribed after losing its subscription: revocations published
        meanwhile were missed, so cached sessions are dropped before the resync (which
        re-checks the sessions of every open socket)."""
        self.presence.accounts.clear_cache()
        await self.resync()

    async def _sweeper(self) -> None:
        """Announce the users whose offline grace ended, at their deadline.

        Sleeps until the next deadline the store reports, at most a heartbeat interval (so a
        deadline another process recorded is seen in time), and wakes early when this process
        records one that is due sooner."""
        loop = asyncio.get_running_loop()
        added, grace = self.backend.pending_added, self.backend.grace
        while True:
            added.clear()  # before the sweep: a deadline recorded meanwhile still wakes us
            delay = self.interval
            if self.problem is None:
                try:
                    events, wait = await self.backend.sweep()
                    if events:
                        self.ledger.record(events)
                        log.info("%d user(s) went offline after the %.1f s grace",
                                 len(events), grace)
                    if wait is not None:
                        delay = min(delay, max(wait, 0.0) + GRACE_SLACK)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("Could not finalise offline graces (%s); will retry", exc)
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
            log.warning("Process %s stopped heartbeating; %d user(s) went offline",
                        node, len(events))

    async def resync(self) -> None:
        """Rebuild the shared state from our local truth and correct our clients."""
        async with self._lock:
            p = self.presence
            p.needs_resync = False
            self.resyncs += 1
            self._epoch, _ = await self.backend.heartbeat(self.node_id, self.timeout)
            self._answered()
            held = await self.backend.members(self.node_id)
            p.registered.clear()
            p.registered.update(held)
            for username in held | p.local_users():
                p.changed(username)
            await p.settled()
            p.remark_all()
            before = p.usernames()
            accounts = await p.accounts.all_users()
            names = {user.username for user in accounts}
            for user in accounts:  # sign-ups we may have missed
                if not p.known(user.username):
                    p.apply_and_broadcast(user.username, UserState(False, 0, iso(user.last_seen)))
            states = await self.backend.states()
            p.prune(names | {name for name, state in states.items() if state.online}, before)
            for username, state in states.items():
                if username in names or state.online:  # not a deleted account's remnant
                    p.apply_and_broadcast(username, state)
            # Online in our view but unknown to an emptied store: maybe nobody holds them any
            # more, maybe their process has not re-registered yet. Settle them only after every
            # live process has had time to (two heartbeats), or they would flicker offline.
            missing = {u["username"] for u in p.users() if u["online"]} - set(states)
            self._to_settle |= missing
            if self._to_settle and (self._settling is None or self._settling.done()):
                self._settling = asyncio.ensure_future(self._settle_later())
            log.info("Resynchronised presence: %d local user(s), %d known state(s)",
                     len(p.local_users()), len(states))
        await self.revocations()

    async def revocations(self) -> None:
        """After a resync: close the sockets whose session ended while messages may have been
        lost, and announce the revocations made here while the broker was down."""
        p = self.presence
        try:
            await p.recheck_sessions()
        except Exception as exc:  # the database: try again with the next resync
            log.warning("Could not re-check the sessions of open sockets (%s); will retry", exc)
            p.needs_resync = True
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
            self.presence.needs_resync = True

    async def stop(self) -> None:
        """Shutdown: close sockets (1001), let our users go, clear our rows.

        Without a grace they go offline at once (unless held elsewhere). With one they are
        handed over: pending deadlines in the store, which any process (or, with the
        in-process store, our next start, through the database) finalises."""
        p = self.presence
        p.closing = True
        if self._settling is not None:
            self._settling.cancel()
        p.close_all()
        p.gc.cancel()
        await p.settled(timeout=2.0)
        try:
            self.ledger.record(await self.backend.handover(self.node_id, iso_now()))
        except Exception as exc:
            log.warning("Could not clear this process from the presence store: %s", exc)
        # Before the rows: within the shutdown's time budget, this is what users would notice.
        if self.backend.grace > 0 and not self.backend.survives_restart:
            try:
                saved = await self.backend.pending()
                await self.ledger.save_pending(saved)
                log.info("Handed over %d user(s) for the next start (grace %.1f s)",
                         len(saved), self.backend.grace)
            except Exception as exc:
                log.warning("Could not save the users handed over (%s); a restart will list "
                            "them offline", exc)
        try:
            await self.ledger.flush()
            await self.ledger.clear_node(self.node_id)
        except Exception as exc:
            log.warning("Could not clear this process's online-users rows: %s", exc)
