"""The schema as it was before migrations: users, sessions, online users, pending offline
handovers, write probes.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from alembic import op

from presence_app.db.migrations.initial_schema import initial_metadata

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    initial_metadata().create_all(op.get_bind())


def downgrade() -> None:
    initial_metadata().drop_all(op.get_bind())
