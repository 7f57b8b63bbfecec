"""The live users page, the users API and the health check."""
from __future__ import annotations

import json
from typing import Any

import tornado.web

from handlers.base import BaseHandler

# Up to this many users the page lists every one of them (the contract); beyond it, every
# online user and the first OFFLINE_PAGE of the others: the snapshot brings the rest, and
# the script shows them a page at a time (OFFLINE_PAGE is its page size too).
FULL_LIST_UP_TO = 1000
OFFLINE_PAGE = 100


def first_page(users: list[dict[str, Any]], full_up_to: int = FULL_LIST_UP_TO,
               offline_page: int = OFFLINE_PAGE) -> list[dict[str, Any]]:
    """The rows the server renders, in the order given (presence.users(): by name)."""
    if len(users) <= full_up_to:
        return users
    online = [u for u in users if u["online"]]
    return online + [u for u in users if not u["online"]][:offline_page]


def summary(online: int, total: int) -> str:
    """Says "301 online · 1,001 users", in the same words as static/js/format.js."""
    return f"{online:,} online · {total:,} {'user' if total == 1 else 'users'}"


class UsersPageHandler(BaseHandler):
    @tornado.web.authenticated
    def get(self) -> None:
        # Rendered from the same view as WebSocket snapshots: connecting after this loses nothing.
        users = self.presence.users()
        online = sum(1 for u in users if u["online"])
        self.set_header("Cache-Control", "no-store")
        self.render("users.html", title="Who's online", me=self.current_user.username,
                    users=first_page(users), online_count=online, total=len(users),
                    summary=summary(online, len(users)), page_size=OFFLINE_PAGE)


class UsersApiHandler(BaseHandler):
    def get(self) -> None:
        if not self.current_user:
            self.set_status(401)
            self.write({"error": "login required"})
            return
        self.set_header("Cache-Control", "no-store")
        self.write({"users": self.presence.users()})


class HealthHandler(BaseHandler):
    async def prepare(self) -> None:
        """No session lookup: the health check must answer even when the database does not."""

    async def get(self) -> None:
        ok, body = await self.services.health()
        self.set_status(200 if ok else 503)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(body))
