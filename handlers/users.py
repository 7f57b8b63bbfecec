"""The live users page, the users API and the health check."""

from __future__ import annotations

from typing import Any

import tornado.web

from handlers.base import BaseHandler

# Up to this many users the page lists every one of them (docs/PROTOCOL.md); beyond it, every
# online user and the first OFFLINE_PAGE of the others: the snapshot brings the rest, and
# the script shows them a page at a time (OFFLINE_PAGE is its page size too).
FULL_LIST_UP_TO = 1000
OFFLINE_PAGE = 100


def first_page(
    users: list[dict[str, Any]], full_up_to: int = FULL_LIST_UP_TO, offline_page: int = OFFLINE_PAGE
) -> list[dict[str, Any]]:
    """The rows the server renders, in the order given (presence.users(): by name)."""
    if len(users) <= full_up_to:
        return users
    online = [u for u in users if u["online"]]
    return online + [u for u in users if not u["online"]][:offline_page]


def matching(users: list[dict[str, Any]], query: str) -> list[dict[str, Any]]:
    """The search box's rule (static/js/state.js): case-insensitive part of the name."""
    q = query.strip().lower()
    return [u for u in users if q in u["username"].lower()] if q else users


def list_status(query: str, shown: int, matched: int, total: int) -> str:
    """The line under the list; the same words as listStatusText in static/js/format.js."""

    def users(n: int, one: str, many: str) -> str:
        return f"{n:,} {one if n == 1 else many}"

    q = query.strip().lower()
    if q:
        if matched == 0:
            return f"No users match “{q}”."
        what = f"{users(matched, 'user matches', 'users match')} “{q}”"
        return f"Showing {shown:,} of {what}." if shown < matched else f"{what}."
    return f"Showing {shown:,} of {users(total, 'user', 'users')}." if shown < total else ""


def summary(online: int, total: int) -> str:
    """Says "301 online · 1,001 users", in the same words as static/js/format.js."""
    return f"{online:,} online · {total:,} {'user' if total == 1 else 'users'}"


class UsersPageHandler(BaseHandler):
    @tornado.web.authenticated
    def get(self) -> None:
        # Rendered from the same view as WebSocket snapshots: connecting after this loses nothing.
        users = self.presence.users()
        online = sum(1 for u in users if u["online"])
        query = self.get_argument("q", "")[:64]  # the search form, for pages without JS
        found = matching(users, query)
        rows = first_page(found)
        self.set_header("Cache-Control", "no-store")
        self.render(
            "users.html",
            title="Who's online",
            me=self.current_user.username,
            users=rows,
            online_count=online,
            total=len(users),
            summary=summary(online, len(users)),
            page_size=OFFLINE_PAGE,
            query=query,
            shown=len(rows),
            matched=len(found),
            status=list_status(query, len(rows), len(found), len(users)),
        )


class SessionApiHandler(BaseHandler):
    """Who this session is: the page's cheap check before it reconnects (a 401 means the
    session is gone). ``/api/users`` would do, but at 10,000 users it is a megabyte per
    reconnecting tab."""

    def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        if not self.current_user:
            self.set_status(401)
            self.write({"error": "login required"})
            return
        self.write({"username": self.current_user.username})


class UsersApiHandler(BaseHandler):
    def get(self) -> None:
        if not self.current_user:
            self.set_status(401)
            self.write({"error": "login required"})
            return
        self.set_header("Cache-Control", "no-store")
        self.write({"users": self.presence.users()})
