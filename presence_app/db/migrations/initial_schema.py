"""The schema as the code created it before migrations existed, frozen (the models in
``presence_app.db.database`` move on; this must not). The first revision creates it, and a database
made before migrations is completed from it before being stamped."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    func,
)

FIRST_REVISION = "0001"


def initial_metadata() -> MetaData:
    meta = MetaData()
    Table(
        "users",
        meta,
        Column("id", Integer, primary_key=True),
        Column("username", String(32), nullable=False),
        Column("username_key", String(32), nullable=False, unique=True),
        Column("password_hash", String(80), nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("last_seen", DateTime(timezone=True), nullable=True),
    )
    Table(
        "sessions",
        meta,
        Column("token_hash", String(64), primary_key=True),
        Column(
            "user_id",
            Integer,
            ForeignKey("users.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("expires_at", DateTime(timezone=True), nullable=False),
    )
    Table(
        "online_users",
        meta,
        Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
        Column("node_id", String(160), primary_key=True, index=True),
        Column("connections", BigInteger, nullable=False),
        Column("since", DateTime(timezone=True), nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    )
    Table(
        "pending_offline",
        meta,
        Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
        Column("last_seen", DateTime(timezone=True), nullable=False),
        Column("deadline", DateTime(timezone=True), nullable=False),
    )
    Table(
        "write_probes",
        meta,
        Column("node_id", String(160), primary_key=True),
        Column("written_at", DateTime(timezone=True), nullable=False),
    )
    return meta
