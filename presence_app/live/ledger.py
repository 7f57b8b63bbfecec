"""Batched, durable writes of presence: the online-users table and ``users.last_seen``.

Connects and disconnects only mark rows dirty; one writer flushes them every
``flush_interval`` seconds in one transaction, so 10,000 sockets opening at once cost a
handful of statements rather than 10,000 round trips.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from typing import cast

from sqlalchemy import Table, bindparam, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from presence_app.backends.base import Pending
from presence_app.db.database import (
    Database,
    DatabaseWriteError,
    OnlineUser,
    PendingOffline,
    User,
    utcnow,
)

log = logging.getLogger(__name__)


def parse_time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _utc(value: dt.datetime) -> dt.datetime:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _iso(value: dt.datetime) -> str:
    """The store's time format (presence.iso, which this module cannot import: a cycle)."""
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


class OnlineLedger:
    def __init__(self, db: Database, node_id: str) -> None:
        self.db = db
        self.node_id = node_id
        self._counts: dict[int, int] = {}  # user id -> sockets here, pending write
        self._seen: dict[str, dt.datetime] = {}  # username -> last seen, pending write
        self._lock = asyncio.Lock()
        self.problem: str | None = None
        self.published = 0  # presence changes this process caused (and published): /metrics

    def mark(self, user_id: int, connections: int) -> None:
        self._counts[user_id] = connections

    def record(self, events: list[str]) -> None:
        """Remember ``last_seen`` of transitions this process caused."""
        self.published += len(events)
        for text in events:
            event = json.loads(text)
            if event.get("last_seen"):
                self._seen[event["username"]] = parse_time(event["last_seen"])

    async def flush(self) -> None:
        async with self._lock:
            counts, self._counts = self._counts, {}
            seen, self._seen = self._seen, {}
            if not counts and not seen:
                return
            try:
                async with self.db.write() as session:
                    await self._write_counts(session, counts)
                    if seen:  # one executemany, not a statement per user
                        table = cast(Table, User.__table__)
                        await session.execute(
                            update(table)
                            .where(table.c.username_key == bindparam("key"))
                            .values(last_seen=bindparam("when")),
                            [{"key": name.lower(), "when": when} for name, when in seen.items()],
                        )
                self.problem = None
            except Exception as exc:
                # Keep what was not written (newer marks win) and try again next time.
                for user_id, value in counts.items():
                    self._counts.setdefault(user_id, value)
                for username, when in seen.items():
                    self._seen.setdefault(username, when)
                self.problem = f"database write failed: {exc.__class__.__name__}"
                raise

    async def _write_counts(self, session: AsyncSession, counts: dict[int, int]) -> None:
        gone = [uid for uid, n in counts.items() if n <= 0]
        if gone:
            await session.execute(
                delete(OnlineUser).where(
                    OnlineUser.node_id == self.node_id, OnlineUser.user_id.in_(gone)
                )
            )
        live = [uid for uid, n in counts.items() if n > 0]
        if live:  # an account deleted meanwhile (`presence users delete`) has no row to get
            live = list(await session.scalars(select(User.id).where(User.id.in_(live))))
        rows = [
            {
                "user_id": uid,
                "node_id": self.node_id,
                "connections": counts[uid],
                "since": utcnow(),
                "updated_at": utcnow(),
            }
            for uid in live
        ]
        if rows:
            insert = (sqlite.insert if self.db.is_sqlite else postgresql.insert)(OnlineUser)
            await session.execute(
                insert.on_conflict_do_update(
                    index_elements=["user_id", "node_id"],
                    set_={
                        "connections": insert.excluded.connections,
                        "updated_at": insert.excluded.updated_at,
                    },
                ),
                rows,
            )

    async def clear_node(self, node_id: str) -> None:
        """Forget every row of a process (dead, restarted or stopping)."""
        async with self.db.write() as session:
            await session.execute(delete(OnlineUser).where(OnlineUser.node_id == node_id))

    async def save_pending(self, entries: list[Pending]) -> None:
        """Keep the handed-over users of a stopping in-process store for the next start, and
        their close time as ``last_seen`` (right even if that start never finalises them)."""
        by_key = {e.username.lower(): e for e in entries}
        async with self._lock, self.db.write() as session:
            for entry in entries:  # the close time is newer than any pending online time
                self._seen.pop(entry.username, None)
            await session.execute(delete(PendingOffline))
            keys = list(by_key)
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                users = (
                    await session.execute(
                        select(User.id, User.username_key).where(User.username_key.in_(chunk))
                    )
                ).all()
                rows = [
                    {
                        "user_id": uid,
                        "last_seen": parse_time(by_key[key].last_seen),
                        "deadline": dt.datetime.fromtimestamp(by_key[key].deadline, dt.UTC),
                    }
                    for uid, key in users
                ]
                if rows:
                    await session.execute(insert(PendingOffline), rows)
                    await session.execute(
                        update(User),
                        [  # bulk UPDATE by primary key
                            {"id": row["user_id"], "last_seen": row["last_seen"]} for row in rows
                        ],
                    )

    async def take_pending(self) -> list[Pending]:
        """Read and delete what ``save_pending`` kept (at most one start restores it)."""
        async with self.db.write() as session:
            rows = (
                await session.execute(
                    select(User.username, PendingOffline.deadline, PendingOffline.last_seen).join(
                        User, User.id == PendingOffline.user_id
                    )
                )
            ).all()
            await session.execute(delete(PendingOffline))
        return [
            Pending(name, _utc(deadline).timestamp(), _iso(_utc(seen)))
            for name, deadline, seen in rows
        ]

    async def run(self, interval: float) -> None:
        """Flush every ``interval``; a failing streak is logged once (a warning, a traceback
        only for what is not a database error) and its end once: a full disk must not
        write a traceback every half second to the log that fills it."""
        failing = False
        while True:
            await asyncio.sleep(interval)
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:
                    log.warning(
                        "Writing the online-users table failed (%s); retrying every %.2g s",
                        exc,
                        interval,
                        exc_info=not isinstance(exc, DatabaseWriteError),
                    )
                failing = True
            else:
                if failing:
                    log.info("Writing the online-users table works again")
                failing = False
