"""Schema migrations (Alembic), run in-process: ``presence db upgrade`` and every start.

The scripts live in this package (``env.py``, ``versions/``), found through ``__file__``, so
an installed copy migrates without an ``alembic.ini``. Callers hand in a connection already
inside their own transaction (and lock, see ``Database.create_schema``): every revision of one
upgrade commits together or not at all on PostgreSQL and SQLite, whose DDL is transactional.

A database made by the code before migrations existed (tables, no ``alembic_version``) is
recognised by its ``users`` table: tables an older build lacked are created from the frozen
first revision, the database is stamped at that revision, then upgraded like any other.
"""

from __future__ import annotations

import logging
import os

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from presence_app.db.migrations.initial_schema import FIRST_REVISION, initial_metadata

log = logging.getLogger(__name__)

HERE = os.path.dirname(os.path.abspath(__file__))


def alembic_config(connection: Connection | None = None) -> Config:
    """A Config with no ini file: the script location is this package."""
    config = Config()
    config.set_main_option("script_location", HERE)
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(connection: Connection, target: str = "head") -> tuple[str | None, str | None]:
    """Bring the schema to ``target`` on ``connection`` (in the caller's transaction);
    returns the revisions before and after. Idempotent: at head it changes nothing."""
    tables = set(inspect(connection).get_table_names())
    config = alembic_config(connection)
    before = current_revision(connection)
    if before is None and "users" in tables:
        # Made by the code before migrations: same tables as the first revision (an older
        # build may lack some: create those), nothing to migrate to reach it.
        initial_metadata().create_all(connection, checkfirst=True)
        command.stamp(config, FIRST_REVISION)
        log.info("Database created before migrations: stamped at revision %s", FIRST_REVISION)
        before = FIRST_REVISION
    command.upgrade(config, target)
    after = current_revision(connection)
    if after != before:
        log.info("Database schema upgraded: %s -> %s", before or "empty", after)
    return before, after
