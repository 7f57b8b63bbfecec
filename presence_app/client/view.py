"""The client's view of who is online: a snapshot, then events applied by version."""

from __future__ import annotations

from typing import Any

Message = dict[str, Any]


class PresenceView:
    """``state`` maps each username to its latest entry (a snapshot row or a ``presence``
    event). The contract's client-side rule is built in: per user, an event is applied only
    if its version is newer than what is held, so a stale event never overwrites a newer one.
    """

    def __init__(self) -> None:
        self.me: str | None = None
        self.state: dict[str, Message] = {}
        self.stale: list[Message] = []  # events that arrived out of order (ignored)
        #: True once a snapshot is applied; False after a ``disconnected`` marker, until the
        #: ``reconnected`` one (the view may be out of date meanwhile).
        self.synced = False

    def apply(self, message: Message) -> bool:
        """Apply one message to the view; False if it was a stale ``presence`` event."""
        kind = message.get("type")
        if kind == "snapshot":
            self.me = message["me"]
            self.state = {u["username"]: u for u in message["users"]}
            self.synced = True
        elif kind == "presence":
            known = self.state.get(message["username"])
            if known is None or message.get("version", 0) > known.get("version", 0):
                self.state[message["username"]] = message
            else:
                self.stale.append(message)
                return False
        elif kind == "removed":  # an account deleted by an operator
            self.state.pop(str(message.get("username")), None)
        return True

    def online(self, username: str) -> bool | None:
        """True/False as the view says; ``None`` for a name the view does not know."""
        user = self.state.get(username)
        return None if user is None else bool(user["online"])

    def online_users(self) -> list[str]:
        """The usernames the view has online, sorted like the page (by lower-case name)."""
        return sorted(
            (name for name, user in self.state.items() if user["online"]),
            key=lambda name: (name.lower(), name),
        )


def missed_events(before: dict[str, Message], after: dict[str, Message]) -> list[Message]:
    """What changed between two views, as the events that would have told it: a ``presence``
    event per user whose status differs or who is new, a ``removed`` per user who is gone.
    Each carries ``"missed": True`` (it was not sent by the server; a snapshot showed it)."""
    events: list[Message] = []
    for name, user in after.items():
        old = before.get(name)
        if old is None or bool(old["online"]) != bool(user["online"]):
            events.append({**user, "type": "presence", "missed": True})
    for name in before.keys() - after.keys():
        events.append({"type": "removed", "username": name, "missed": True})
    return events
