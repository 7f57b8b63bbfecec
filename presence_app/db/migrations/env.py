"""Alembic's environment: always online, on the connection the caller provides (see
``presence_app.db.migrations.upgrade``), inside the caller's transaction and lock."""

from __future__ import annotations

from alembic import context

from presence_app.db.database import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("Run migrations through `presence db upgrade`, not the alembic CLI")
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
