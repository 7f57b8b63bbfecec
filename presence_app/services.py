"""``open_services``: open everything a process needs, close it in reverse order."""
from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import AsyncIterator

from presence_app.accounts import AccountService
from presence_app.broker import Broker, LocalBroker, RedisBroker, make_broker
from presence_app.config import Settings
from presence_app.db import Database
from presence_app.ledger import OnlineLedger
from presence_app.passwords import PasswordHasher
from presence_app.presence import PresenceService
from presence_app.store import MemoryStore, PresenceStore
from presence_app.sync import PresenceSync
from presence_app.throttle import LoginThrottle

log = logging.getLogger(__name__)


class StartupError(Exception):
    """A service could not be opened; the message is one line for the operator."""


@dataclass
class Services:
    settings: Settings
    db: Database
    accounts: AccountService
    broker: Broker
    presence: PresenceService
    sync: PresenceSync
    ledger: OnlineLedger
    throttle: LoginThrottle
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def health(self) -> tuple[bool, dict[str, object]]:
        """Readiness: the database answers and, where configured, Redis does."""
        problems = []
        try:
            await asyncio.wait_for(self.db.ping(), timeout=2.0)
        except Exception as exc:
            problems.append(f"database unreachable: {exc.__class__.__name__}")
        for problem in (self.broker.problem, self.sync.problem):
            if problem and problem not in problems:
                problems.append(problem)
        body: dict[str, object] = {
            "status": "unavailable" if problems else "ok",
            "node": self.settings.node_id,
            "broker": self.broker.name,
            "sockets": self.presence.socket_count,
            "online_users": self.presence.online_count(),
        }
        if problems:
            body["reason"] = "; ".join(problems)
        return not problems, body


def make_store(broker: Broker, prefix: str, grace: float = 0.0) -> PresenceStore:
    if isinstance(broker, LocalBroker):
        return MemoryStore(broker, grace)
    from presence_app.redis_store import RedisStore
    assert isinstance(broker, RedisBroker)
    return RedisStore(broker, prefix, grace)


@asynccontextmanager
async def open_services(settings: Settings) -> AsyncIterator[Services]:
    db = Database(settings.database_url)
    hasher = PasswordHasher(settings.bcrypt_rounds, settings.bcrypt_threads)
    broker = make_broker(settings.broker_url, settings.redis_prefix, settings.redis_timeout)
    tasks: list[asyncio.Task[None]] = []
    try:
        try:
            await db.create_schema()
        except Exception as exc:
            url = db.engine.url.render_as_string(hide_password=True)
            raise StartupError(f"cannot open the database {url}: "
                               f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}"
                               ) from exc
        accounts = AccountService(db, hasher, settings.session_days)
        await broker.connect()
        store = make_store(broker, settings.redis_prefix, settings.offline_grace)
        ledger = OnlineLedger(db, settings.node_id)
        presence = PresenceService(settings.node_id, broker, store, ledger, accounts)
        sync = PresenceSync(presence, store, ledger, settings.node_id,
                            settings.heartbeat_timeout, settings.heartbeat_interval)
        # Subscribe before loading state, so nothing published in between is missed.
        tasks.append(asyncio.create_task(broker.listen(presence.on_message, sync.resync)))
        await broker.wait_subscribed(timeout=3.0)
        await sync.start()
        tasks.append(asyncio.create_task(sync.run()))
        tasks.append(asyncio.create_task(ledger.run(settings.flush_interval)))
        throttle = LoginThrottle(settings.login_max_failures, settings.login_failure_window)
        services = Services(settings, db, accounts, broker, presence, sync, ledger, throttle,
                            tasks)
        log.info("Services ready: node %s, database %s, broker %s", settings.node_id,
                 db.engine.url.render_as_string(hide_password=True), broker.name)
        try:
            yield services
        finally:
            try:  # SIGTERM must end the process within 5 s, whatever Redis is doing
                await asyncio.wait_for(sync.stop(), timeout=3.5)
            except asyncio.TimeoutError:
                log.warning("Shutdown cleanup timed out; the heartbeat timeout will finish it")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await broker.close()
        hasher.close()
        await db.close()
