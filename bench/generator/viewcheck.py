"""How a page-like view's final state is checked: a full view exactly (snapshot decoded,
events applied by version), the others by counting (``bench.views`` explains why)."""

from __future__ import annotations

import json
import zlib
from typing import Any

from bench.generator.viewbase import ViewBase
from bench.generator.wire import DEFLATE_TAIL, OPEN

ONLINE_MARKERS = (b'"online":true', b'"online": true')  # how a snapshot row says online


class Checking(ViewBase):
    """The final-view check."""

    __slots__ = ()

    def check(
        self, expect: dict[str, bool], users_total: int, online_marker: bytes | None
    ) -> tuple[str, dict[str, Any]]:
        """("ok" | "lost" | "unverified" | "closed", details) for this view's final state."""
        if self.state != OPEN:
            return "closed", {}
        if self.full:
            return self._check_full(expect)
        if self.snap_payload is None:
            return "unverified", {}
        raw = self._raw_snapshot()
        if online_marker:
            online = raw.count(online_marker)
        else:
            users = self.group.parsed(raw).get("users") or []
            online = sum(1 for u in users if isinstance(u, dict) and u.get("online"))
        missing = users_total - online - self.conn_presence
        return ("lost" if missing > 0 else "ok"), {"redundant": max(-missing, 0), "raw": len(raw)}

    def _raw_snapshot(self) -> bytes:
        assert self.snap_payload is not None
        if self.snap_compressed:
            return zlib.decompressobj(-15).decompress(self.snap_payload + DEFLATE_TAIL)
        return self.snap_payload

    def _check_full(self, expect: dict[str, bool]) -> tuple[str, dict[str, Any]]:
        raw = self._raw_snapshot()
        snap = json.loads(raw)
        view: dict[str, tuple[bool, int]] = {}
        for user in snap.get("users") or []:
            view[user["username"]] = (bool(user.get("online")), int(user.get("version") or 0))
        me_ok = snap.get("me") == self.label and view.get(self.label, (False, 0))[0]
        for payload, _kts in (self.events or [])[self.snap_index :]:
            event = self.group.parsed(payload)
            if event.get("type") != "presence":
                continue
            name, version = event["username"], int(event.get("version") or 0)
            old = view.get(name)
            if old is None or not version or version > old[1]:
                view[name] = (bool(event.get("online")), version)
        wrong = [
            name for name, online in expect.items() if view.get(name, (None, 0))[0] is not online
        ]
        online = sum(1 for v in snap.get("users") or [] if v.get("online"))
        markers = [m for m in ONLINE_MARKERS if raw.count(m) == online]
        details = {
            "raw": len(raw),
            "users": len(snap.get("users") or []),
            "online_in_snapshot": online,
            "me_ok": bool(me_ok),
            "wrong": wrong[:5],
            "wrong_count": len(wrong),
            "online_marker": markers[0] if markers else None,
        }
        return ("lost" if wrong or not me_ok else "ok"), details
