"""Turning receive timestamps into the figures of the reports."""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable
from typing import Any

import numpy as np

from bench.generator.wire import decode_ts


def pct(values: Iterable[float] | np.ndarray, q: float) -> float | None:
    arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float)
    if arr.size == 0:
        return None
    return round(float(np.percentile(arr, q)), 3)


def summary_ms(values: Iterable[float] | np.ndarray) -> dict[str, float | None]:
    arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float)
    return {
        "p50": pct(arr, 50),
        "p95": pct(arr, 95),
        "p99": pct(arr, 99),
        "max": round(float(arr.max()), 3) if arr.size else None,
        "n": int(arr.size),
    }


def merge_events(parts: list[list[dict[str, Any]]]) -> dict[bytes, dict[str, Any]]:
    """Events reported by several workers, merged by payload."""
    merged: dict[bytes, dict[str, Any]] = {}
    for part in parts:
        for item in part:
            entry = merged.setdefault(item["payload"], {"kts": [], "uts": []})
            entry["kts"].append(np.frombuffer(decode_ts(item["kts"]).tobytes(), dtype=np.int64))
            entry["uts"].append(np.frombuffer(decode_ts(item["uts"]).tobytes(), dtype=np.int64))
    for payload, entry in merged.items():
        entry["kts"] = np.concatenate(entry["kts"]) if entry["kts"] else np.zeros(0, np.int64)
        entry["uts"] = np.concatenate(entry["uts"]) if entry["uts"] else np.zeros(0, np.int64)
        try:
            entry["meta"] = json.loads(payload)
        except ValueError:
            entry["meta"] = {"type": "?"}
    return merged


def analyse(
    merged: dict[bytes, dict[str, Any]],
    observers: int,
    triggers: list[tuple[str, bool, int]],
    movers: set[str],
    skip_before: int = 0,
) -> dict[str, Any]:
    """Per-event fan-out figures of the movers' presence events.

    ``triggers``: (username, online, time the mover's connect or close started), CLOCK_REALTIME
    ns. Each event is matched with the latest trigger of its user and direction before the
    event's first delivery. Events whose trigger is before ``skip_before`` (warm-up) are left
    out of latency figures but still checked for losses.
    """
    fanout = Fanout(observers, triggers, skip_before)
    for payload, entry in merged.items():
        meta = entry["meta"]
        if meta.get("type") != "presence" or meta.get("username") not in movers:
            fanout.other_messages += int(entry["kts"].size)
            continue
        fanout.add(payload, meta, entry["kts"], entry["uts"])
    return fanout.result()


class Fanout:
    """The figures of ``analyse``, event by event."""

    def __init__(
        self, observers: int, triggers: list[tuple[str, bool, int]], skip_before: int
    ) -> None:
        self.observers, self.triggers, self.skip_before = observers, triggers, skip_before
        self.by_key: dict[tuple[str, bool], list[int]] = {}
        for username, online, t in triggers:
            self.by_key.setdefault((username, bool(online)), []).append(t)
        for times in self.by_key.values():
            times.sort()
        self.last_k: list[float] = []
        self.last_u: list[float] = []
        self.first_k: list[float] = []
        self.per_delivery: list[np.ndarray] = []
        self.events: list[dict[str, Any]] = []
        self.lost = self.duplicates = self.incomplete_events = self.other_messages = 0
        self.matched_triggers: set[tuple[str, bool, int]] = set()

    def add(self, payload: bytes, meta: dict[str, Any], kts: np.ndarray, uts: np.ndarray) -> None:
        """One presence event of a mover: its deliveries' kernel and user times."""
        count = int(kts.size)
        if count < self.observers:
            self.lost += self.observers - count
            self.incomplete_events += 1
        elif count > self.observers:
            self.duplicates += count - self.observers
        key = (meta["username"], bool(meta["online"]))
        times = self.by_key.get(key, [])
        first = int(kts.min())
        i = bisect.bisect_right(times, first) - 1
        if i < 0:
            self.events.append(
                {"username": key[0], "online": key[1], "count": count, "trigger": None}
            )
            return
        trigger = times[i]
        self.matched_triggers.add((key[0], key[1], trigger))
        if trigger < self.skip_before:
            return
        lk = (int(kts.max()) - trigger) / 1e6
        lu = (int(uts.max()) - trigger) / 1e6
        self.last_k.append(lk)
        self.last_u.append(lu)
        self.first_k.append((first - trigger) / 1e6)
        self.per_delivery.append((kts - trigger) / 1e6)
        self.events.append(
            {
                "username": key[0],
                "online": key[1],
                "version": meta.get("version"),
                "count": count,
                "trigger": trigger,
                "last_ms": round(lk, 3),
                "last_user_ms": round(lu, 3),
                "first_ms": round((first - trigger) / 1e6, 3),
                "t_first": first,
                "t_last": int(kts.max()),
                "bytes": len(payload) + (2 if len(payload) < 126 else 4),
            }
        )

    def result(self) -> dict[str, Any]:
        unmatched = [
            t
            for t in self.triggers
            if (t[0], bool(t[1]), t[2]) not in self.matched_triggers and t[2] >= self.skip_before
        ]
        deliveries = np.concatenate(self.per_delivery) if self.per_delivery else np.zeros(0)
        total_fanout_s = sum(self.last_k) / 1e3
        measured_deliveries = int(deliveries.size)
        return {
            "events": len(self.last_k),
            "observers": self.observers,
            "last_observer_ms": summary_ms(self.last_k),
            "last_observer_user_ms": summary_ms(self.last_u),
            "first_observer_ms": summary_ms(self.first_k),
            "per_delivery_ms": summary_ms(deliveries),
            "deliveries": measured_deliveries,
            "deliveries_per_s": round(measured_deliveries / total_fanout_s)
            if total_fanout_s
            else None,
            "lost": self.lost,
            "incomplete_events": self.incomplete_events,
            "duplicates": self.duplicates,
            "triggers_without_event": len(unmatched),
            "other_messages": self.other_messages,
            "event_list": sorted(self.events, key=lambda e: e.get("trigger") or 0),
        }


def ratio(ours: float | None, reference: float | None) -> float | None:
    if ours is None or reference in (None, 0):
        return None
    return round(ours / reference, 2)  # type: ignore[operator]


def bcrypt_checks(hashed: bytes, start: float, seconds: float) -> float:
    """bcrypt.checkpw in a loop from ``start`` (time.time()) for ``seconds``: the bare limit
    of one core (run one per core). Returns checks done, the last one pro rata."""
    import time

    import bcrypt

    time.sleep(max(start - time.time(), 0.0))
    count = 0.0
    end = start + seconds
    while True:
        t = time.time()
        if t >= end:
            return count
        bcrypt.checkpw(b"bench-password", hashed)
        took = time.time() - t
        count += 1.0 if time.time() <= end else (end - t) / took
