"""Alembic migrations: a database made before migrations is stamped and upgraded with its
data; the migrated schema is exactly the models'; concurrent starts migrate once."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import create_async_engine

from presence_app.db import migrations
from presence_app.db.database import Base, Database
from presence_app.db.migrations.initial_schema import initial_metadata

ROOT = Path(__file__).resolve().parents[2]
HASH = "$2b$04$" + "x" * 53


async def make_legacy_database(url: str) -> None:
    """What the code before migrations left: its tables (create_all), rows, no alembic table."""
    engine = create_async_engine(url)
    now = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(initial_metadata().create_all)
            await conn.execute(
                text(
                    "INSERT INTO users (id, username, username_key, password_hash, created_at, "
                    "last_seen) VALUES (7, 'Alice', 'alice', :h, :t, :t)"
                ),
                {"h": HASH, "t": now},
            )
            await conn.execute(
                text(
                    "INSERT INTO sessions (token_hash, user_id, created_at, expires_at) "
                    "VALUES (:k, 7, :t, :e)"
                ),
                {"k": "a" * 64, "t": now, "e": now + dt.timedelta(days=30)},
            )
    finally:
        await engine.dispose()


async def upgrade_and_read(url: str) -> dict[str, Any]:
    db = Database(url)
    try:
        first = await db.upgrade_schema()
        again = await db.upgrade_schema()
        async with db.engine.connect() as conn:
            user = (
                await conn.execute(
                    text("SELECT id, username, password_hash, disabled_at FROM users")
                )
            ).one()
            sessions = (await conn.execute(text("SELECT user_id FROM sessions"))).all()
            diff = await conn.run_sync(schema_diff)
        return {
            "first": first,
            "again": again,
            "user": tuple(user),
            "sessions": sessions,
            "diff": diff,
            "revision": await db.schema_revision(),
        }
    finally:
        await db.close()


def schema_diff(conn: Any) -> list[Any]:
    """What autogenerate would change to reach the models: nothing, if the migrations are
    right (types compared too)."""
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return [
        d
        for d in compare_metadata(context, Base.metadata)
        if not (isinstance(d, tuple) and d[0] == "remove_table" and d[1].name == "alembic_version")
    ]


def test_a_database_from_before_migrations_is_stamped_and_upgraded(fresh_database_url: str) -> None:
    asyncio.run(make_legacy_database(fresh_database_url))
    result = asyncio.run(upgrade_and_read(fresh_database_url))
    head = migrations.head_revision()
    assert head == "0002"
    assert result["first"] == ("0001", head)  # recognised, stamped, then upgraded
    assert result["again"] == (head, head)
    assert result["revision"] == head
    assert result["user"] == (7, "Alice", HASH, None)  # data intact; new column empty
    assert [tuple(r) for r in result["sessions"]] == [(7,)]
    assert result["diff"] == []


def test_an_empty_database_gets_exactly_the_models_schema(fresh_database_url: str) -> None:
    async def run() -> tuple[Any, list[Any], set[str]]:
        db = Database(fresh_database_url)
        try:
            revisions = await db.upgrade_schema()
            async with db.engine.connect() as conn:
                diff = await conn.run_sync(schema_diff)
                tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
            return revisions, diff, tables
        finally:
            await db.close()

    revisions, diff, tables = asyncio.run(run())
    assert revisions == (None, "0002")
    assert diff == []
    assert tables == set(Base.metadata.tables) | {"alembic_version"}


def test_an_older_build_missing_a_table_is_completed(fresh_database_url: str) -> None:
    """A database from a build before ``write_probes`` existed: created, then stamped."""

    async def drop_probes() -> None:
        engine = create_async_engine(fresh_database_url)
        async with engine.begin() as conn:
            await conn.execute(text("DROP TABLE write_probes"))
        await engine.dispose()

    asyncio.run(make_legacy_database(fresh_database_url))
    asyncio.run(drop_probes())
    result = asyncio.run(upgrade_and_read(fresh_database_url))
    assert result["diff"] == [] and result["user"][1] == "Alice"


def run_py(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "run.py", *args],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_concurrent_upgrades_migrate_once(fresh_database_url: str) -> None:
    """Four `db upgrade` processes at once on a database from before migrations (the
    advisory lock on PostgreSQL, BEGIN IMMEDIATE on SQLite): all succeed, one stamps."""
    asyncio.run(make_legacy_database(fresh_database_url))
    start = time.time() + 3.0  # every process imported and waiting: they start together
    code = (
        "import sys, time, run, presence_app.db.migrations; "
        f"time.sleep(max(0.0, {start} - time.time())); sys.exit(run.main(sys.argv[1:]))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, "db", "upgrade", "--database-url", fresh_database_url],
            cwd=ROOT,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(4)
    ]
    outputs = [proc.communicate(timeout=60) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 4, outputs
    assert sorted(out.strip() for out, _ in outputs) == ["database at revision 0002"] * 3 + [
        "database at revision 0002 (was 0001)"
    ]
    result = asyncio.run(upgrade_and_read(fresh_database_url))
    assert result["diff"] == [] and result["user"][1] == "Alice"


def test_db_current_and_usage(fresh_database_url: str) -> None:
    proc = run_py("db", "current", "--database-url", fresh_database_url)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.split() == ["current:", "none", "latest:", "0002"]
    proc = run_py("db", "downgrade", "--database-url", fresh_database_url)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "invalid choice: 'downgrade'" in err
