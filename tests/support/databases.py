"""Databases for tests and bench: PostgreSQL databases made for a run (and dropped after),
the app's tables emptied between tests, SQLite files in a temp dir.

A PostgreSQL *server* is a DSN without a database name (``postgresql://user@host:port``,
``env.PG_DSN``); the coroutines run from synchronous code with
``tests.support.waiting.run_blocking``.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

#: Every table the app's migrations create (dropped by ``drop_app_tables``).
APP_TABLES = (
    "pending_offline",
    "online_users",
    "sessions",
    "users",
    "write_probes",
    "alembic_version",
)


def sqlite_url(path: Path) -> str:
    """The app's ``--database-url`` for a SQLite file."""
    return f"sqlite+aiosqlite:///{path}"


def postgres_url(dsn: str, name: str) -> str:
    """The app's ``--database-url`` (SQLAlchemy with asyncpg) for database ``name`` on the
    server ``dsn``."""
    return app_url(f"{dsn.rstrip('/')}/{name}")


def app_url(url: str) -> str:
    """A PostgreSQL URL as the app takes it (``postgresql+asyncpg://``)."""
    return "postgresql+asyncpg://" + url.split("://", 1)[1]


def asyncpg_dsn(url: str) -> str:
    """A PostgreSQL URL as asyncpg itself takes it (``postgresql://``)."""
    return "postgresql://" + url.split("://", 1)[1]


async def execute(url: str, sql: str) -> None:
    """One statement on the database at ``url`` (a fresh connection, closed after)."""
    import asyncpg

    conn = await asyncpg.connect(asyncpg_dsn(url), timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def create_database(dsn: str, prefix: str) -> str:
    """A new empty database on the server ``dsn``, named ``<prefix>_<pid>_<random>`` so
    parallel runs never meet; returns its name."""
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    await execute(f"{dsn.rstrip('/')}/postgres", f'CREATE DATABASE "{name}"')
    return name


async def drop_database(dsn: str, name: str) -> None:
    """Drop ``name`` on the server ``dsn``, closing whatever is still connected to it."""
    await execute(f"{dsn.rstrip('/')}/postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def drop_app_tables(url: str) -> None:
    """Empty a PostgreSQL database of the app's tables: the next start creates them anew."""
    await execute(url, f"DROP TABLE IF EXISTS {', '.join(APP_TABLES)} CASCADE")
