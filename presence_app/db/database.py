"""Database schema and engine: SQLite (WAL, BEGIN IMMEDIATE for writes) or PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import ModuleType

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Integer,
    String,
    event,
    func,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from presence_app.runtime.inflight import mark_wrote

log = logging.getLogger(__name__)

# Any constant works; it only has to be the same in every process of a deployment.
SCHEMA_LOCK_KEY = 0x70726573


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(32))
    # Unique index on the lower-cased name: "Alice" and "alice" are one account.
    username_key: Mapped[str] = mapped_column(String(32), unique=True)
    password_hash: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    #: Set by ``presence users disable``: no login, no session (revision 0002).
    disabled_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Session(Base):
    __tablename__ = "sessions"
    # sha256 of the cookie token: a leaked table does not leak usable cookies.
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class OnlineUser(Base):
    """One row per (user, process) with open sockets; written in batches by presence."""

    __tablename__ = "online_users"
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    node_id: Mapped[str] = mapped_column(String(160), primary_key=True, index=True)
    connections: Mapped[int] = mapped_column(BigInteger)
    since: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now()
    )


class PendingOffline(Base):
    """A user handed over by a stopping single process with an offline grace (the in-process
    store forgets everything on exit): the next start lists them online until ``deadline``."""

    __tablename__ = "pending_offline"
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    last_seen: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    deadline: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class WriteProbe(Base):
    """One row per process, rewritten by the write probe: proof that the database can still
    write (a full disk lets reads and ``SELECT 1`` through)."""

    __tablename__ = "write_probes"
    node_id: Mapped[str] = mapped_column(String(160), primary_key=True)
    written_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class DatabaseWriteError(Exception):
    """A write transaction failed in the database itself (a full disk, a lost connection, a
    lock held too long), not by a constraint: nothing was written; trying later may work."""


#: How often the probe writes while writes fail (to notice the recovery soon).
PROBE_RETRY_SECONDS = 1.0


def aware(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


class Database:
    """The async engine plus two session makers: ``read()`` and ``write()`` units of work."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict = {"pool_pre_ping": not self.is_sqlite}
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": 30}
            restrict_sqlite_files(url)
        else:
            kwargs.update(pool_size=10, max_overflow=20)
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            _configure_sqlite(self.engine)
        self._reader = async_sessionmaker(self.engine, expire_on_commit=False)
        self._writer = async_sessionmaker(
            self.engine.execution_options(sqlite_begin="BEGIN IMMEDIATE"), expire_on_commit=False
        )
        #: Why the last write failed, while no write has succeeded since; None when writing.
        self.write_problem: str | None = None
        self._last_write = 0.0  # monotonic time of the last write outcome

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self._reader() as session:
            yield session

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A write transaction, committed on success. SQLite takes the write lock up front.

        Its outcome is what ``/healthz`` reports: a database error (other than a constraint)
        raises ``DatabaseWriteError`` and marks writes as failing until one succeeds.
        """
        try:
            async with self._writer() as session, session.begin():
                yield session
        except IntegrityError:
            raise  # the database works; the row conflicts (a taken name, say)
        except DBAPIError as exc:
            reason = f"{exc.__class__.__name__}: {str(exc.orig).splitlines()[0][:120]}"
            self._record_write(reason)
            raise DatabaseWriteError(reason) from exc
        self._record_write(None)
        mark_wrote()  # committed: a stop must now let this request finish (inflight.py)

    def _record_write(self, problem: str | None) -> None:
        """Log the transitions only: one warning when writes start failing, one info line
        when they work again (not a traceback per attempt)."""
        self._last_write = time.monotonic()
        if problem and self.write_problem is None:
            log.warning(
                "Database writes fail (%s); /healthz answers 503 until one succeeds", problem
            )
        elif problem is None and self.write_problem is not None:
            log.info("Database writes succeed again")
        self.write_problem = problem

    async def probe_write(self, node_id: str) -> None:
        """Rewrite this process's probe row (its outcome is recorded like any write)."""
        insert = (sqlite.insert if self.is_sqlite else postgresql.insert)(WriteProbe)
        async with self.write() as session:
            await session.execute(
                insert.values(node_id=node_id, written_at=utcnow()).on_conflict_do_update(
                    index_elements=["node_id"], set_={"written_at": utcnow()}
                )
            )

    async def run_write_probe(self, node_id: str, interval: float) -> None:
        """Write unless a real write did within ``interval``; while writes fail, try every
        ``PROBE_RETRY_SECONDS`` so that a recovery shows even when nobody writes."""
        while True:
            await asyncio.sleep(PROBE_RETRY_SECONDS if self.write_problem else interval)
            if not self.write_problem and time.monotonic() - self._last_write < interval:
                continue
            try:
                await self.probe_write(node_id)
            except DatabaseWriteError:
                pass  # recorded, and logged once, by write()
            except Exception:
                log.exception("The database write probe failed unexpectedly")

    async def create_schema(self) -> None:
        """Create or upgrade the schema to the latest migration (``upgrade_schema``)."""
        await self.upgrade_schema()

    async def upgrade_schema(self, target: str = "head") -> tuple[str | None, str | None]:
        """Run the migrations up to ``target``; the revisions before and after.

        Safe when several processes start at once: on PostgreSQL under the schema advisory
        lock (held to the commit), on SQLite inside ``BEGIN IMMEDIATE`` (the write lock; the
        others wait on the busy timeout). The later ones then find the schema up to date.
        """
        migrations = _migrations()
        async with self.engine.connect() as conn:
            if self.is_sqlite:
                conn = await conn.execution_options(sqlite_begin="BEGIN IMMEDIATE")
            async with conn.begin():
                if not self.is_sqlite:
                    await conn.execute(
                        text("SELECT pg_advisory_xact_lock(:k)"), {"k": SCHEMA_LOCK_KEY}
                    )
                return await conn.run_sync(migrations.upgrade, target)

    async def schema_revision(self) -> str | None:
        """The revision the database is at (None: never migrated)."""
        async with self.engine.connect() as conn:
            return await conn.run_sync(_migrations().current_revision)

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        await self.engine.dispose()


def _migrations() -> ModuleType:
    """The migrations module, imported when first needed, with Alembic's INFO lines ("Context
    impl ...", its plugins, at import and on every start) silenced: only its warnings."""
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from presence_app.db import migrations

    return migrations


def restrict_sqlite_files(url: str) -> None:
    """Create the SQLite file 0600 before SQLite does (it would use 0644 under the usual
    umask), and tighten an existing one: it holds the password hashes. SQLite gives the
    -wal and -shm files the mode of the database file."""
    path = make_url(url).database
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        for name in (path, path + "-wal", path + "-shm"):
            if os.path.exists(name):
                os.chmod(name, 0o600)
    except OSError as exc:  # SQLite's own open then reports the problem as usual
        log.warning("Cannot restrict the permissions of %s: %s", path, exc.strerror)


def _configure_sqlite(engine: AsyncEngine) -> None:
    """WAL + busy timeout, and explicit BEGINs so writes can take the lock immediately.

    pysqlite's implicit transaction handling is switched off (SQLAlchemy's documented recipe);
    a deferred read that later upgrades to a write is what raises "database is locked".
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(conn.get_execution_options().get("sqlite_begin", "BEGIN"))
