"""``open_services``: open everything a process needs, close it in reverse order."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from presence_app.accounts.auth import AuthService
from presence_app.accounts.passwords import PasswordHasher
from presence_app.accounts.service import AccountService
from presence_app.backends import Backend, make_backend
from presence_app.backends.throttle import Throttle
from presence_app.config import Settings
from presence_app.db.database import Database
from presence_app.live.ledger import OnlineLedger
from presence_app.live.limits import SocketCaps
from presence_app.live.presence import PresenceService
from presence_app.live.sync import PresenceSync
from presence_app.metrics import Metrics
from presence_app.runtime.inflight import RequestTracker

log = logging.getLogger(__name__)


#: Seconds requests that have already written get, after the drain timeout, to finish.
DRAIN_GRACE = 0.75


class StartupError(Exception):
    """A service could not be opened; the message is one line for the operator."""


@dataclass
class Services:
    settings: Settings
    db: Database
    accounts: AccountService
    backend: Backend
    presence: PresenceService
    sync: PresenceSync
    ledger: OnlineLedger
    throttle: Throttle
    auth: AuthService  # the sign-up and login use cases
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    #: Open WebSockets per user and per address (the caps are off unless configured).
    caps: SocketCaps = field(default_factory=lambda: SocketCaps(0, 0))
    requests: RequestTracker = field(default_factory=RequestTracker)
    metrics: Metrics = field(default_factory=Metrics)

    async def drain(self, timeout: float, grace: float = DRAIN_GRACE) -> None:
        """A stop's first step (the server no longer accepts): new requests get 503, running
        ones get ``timeout`` s to finish. Then the ones still waiting for bcrypt, which have
        changed nothing, are refused (503), and those that have written get ``grace`` s more:
        a request either completes or does nothing."""
        running = self.requests.count
        if await self.requests.drain(timeout):
            if running:
                log.info("Drained %d running request(s)", running)
            return
        refused = self.accounts.hasher.stop_waiting()
        log.info(
            "Drain timeout: %d request(s) still running, %d of them refused (503)",
            self.requests.count,
            refused,
        )
        if not await self.requests.wait_idle(grace):
            log.warning(
                "%d request(s) still running after the drain; closing anyway", self.requests.count
            )

    def problems(self) -> list[str]:
        """What is known to be wrong without asking anyone (no database round trip)."""
        problems = ["shutting down"] if self.requests.draining else []
        if self.db.write_problem:  # reads work, writes do not (a full disk, say)
            problems.append("database cannot write")
        for problem in (self.backend.problem, self.sync.problem):
            if problem and problem not in problems:
                problems.append(problem)
        return problems

    async def health(self) -> tuple[bool, dict[str, object]]:
        """Readiness: the database answers and can write and, where configured, Redis
        answers; not while stopping."""
        problems = []
        try:
            await asyncio.wait_for(self.db.ping(), timeout=2.0)
        except Exception as exc:
            problems.append(f"database unreachable: {exc.__class__.__name__}")
        problems += self.problems()
        body: dict[str, object] = {
            "status": "unavailable" if problems else "ok",
            "node": self.settings.node_id,
            "broker": self.backend.name,
            "sockets": self.presence.socket_count,
            "online_users": self.presence.online_count(),
        }
        if problems:
            body["reason"] = "; ".join(problems)
        return not problems, body


def make_throttle(backend: Backend, settings: Settings) -> Throttle:
    """Failed logins counted in this process, or in Redis for the whole deployment."""
    return backend.login_throttle(
        settings.login_max_failures, settings.login_failure_window, settings.login_throttle_entries
    )


@asynccontextmanager
async def open_services(settings: Settings) -> AsyncIterator[Services]:
    db = Database(settings.database_url)
    hasher = PasswordHasher(
        settings.bcrypt_rounds, settings.bcrypt_threads, settings.bcrypt_queue_per_address
    )
    backend = make_backend(
        settings.broker_url,
        settings.redis_prefix,
        grace=settings.offline_grace,
        timeout=settings.redis_timeout,
    )
    tasks: list[asyncio.Task[None]] = []
    try:
        try:
            await db.create_schema()
        except Exception as exc:
            url = db.engine.url.render_as_string(hide_password=True)
            raise StartupError(
                f"cannot open the database {url}: "
                f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}"
            ) from exc
        accounts = AccountService(db, hasher, settings.session_days)
        await backend.connect()
        ledger = OnlineLedger(db, settings.node_id)
        presence = PresenceService(settings.node_id, backend, ledger, accounts)
        sync = PresenceSync(
            presence,
            backend,
            ledger,
            settings.node_id,
            settings.heartbeat_timeout,
            settings.heartbeat_interval,
        )
        # Subscribe before loading state, so nothing published in between is missed.
        # Cached sessions are served only while revocations can reach this process.
        accounts.guard_cache(lambda: backend.problem is None and sync.problem is None)
        sync.on_recovered = backend.retry_now
        tasks.append(asyncio.create_task(backend.listen(presence.on_message, sync.resubscribed)))
        await backend.wait_subscribed(timeout=3.0)
        await sync.start()
        tasks.append(asyncio.create_task(sync.run()))
        tasks.append(asyncio.create_task(ledger.run(settings.flush_interval)))
        tasks.append(
            asyncio.create_task(db.run_write_probe(settings.node_id, settings.write_probe_interval))
        )
        throttle = make_throttle(backend, settings)
        auth = AuthService(accounts, throttle, presence)
        services = Services(
            settings,
            db,
            accounts,
            backend,
            presence,
            sync,
            ledger,
            throttle,
            auth,
            tasks,
            SocketCaps(settings.max_sockets_per_user, settings.max_sockets_per_address),
            metrics=Metrics(settings.metrics_address),
        )
        services.metrics.watch(services)
        log.info(
            "Services ready: node %s, database %s, broker %s",
            settings.node_id,
            db.engine.url.render_as_string(hide_password=True),
            backend.name,
        )
        try:
            yield services
        finally:
            try:  # SIGTERM must end the process within 5 s, whatever Redis is doing
                await asyncio.wait_for(sync.stop(), timeout=3.5)
            except TimeoutError:
                log.warning("Shutdown cleanup timed out; the heartbeat timeout will finish it")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await backend.close()
        hasher.close()
        await db.close()
