"""The live users page, the users API and the health check."""
from __future__ import annotations

import json

import tornado.web

from handlers.base import BaseHandler


class UsersPageHandler(BaseHandler):
    @tornado.web.authenticated
    def get(self) -> None:
        # Rendered from the same view as WebSocket snapshots: connecting after this loses nothing.
        users = self.presence.users()
        self.set_header("Cache-Control", "no-store")
        self.render("users.html", title="Who's online", me=self.current_user.username,
                    users=users, online_count=sum(1 for u in users if u["online"]))


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
