"""Commands that drive ``bench.views`` in the load generator's worker processes:
``LoadGen.call(i, "viewcmds:<name>", ...)`` runs ``cmd_<name>(worker, ...)`` here
(``Worker.handler`` resolves ``module:name``). Open views, follow their progress, check
their final views, time a churn phase, run movers."""

from __future__ import annotations

import asyncio
import time
from array import array
from collections import Counter
from typing import Any

import numpy as np

from bench.generator.conncmds import percentiles_ms
from bench.views import HIST_EDGES, OPEN, View, ViewGroup, time_ns


def _group(worker: Any, name: str, options: dict[str, Any] | None = None) -> ViewGroup:
    group = worker.groups.get(name)
    if group is None or not isinstance(group, ViewGroup):
        group = worker.groups[name] = ViewGroup(name, options or {})
    return group


async def cmd_open(
    worker: Any,
    group: str,
    targets: list[tuple[str, int]],
    headers: list[dict[str, str]],
    labels: list[str],
    full: list[bool],
    concurrency: int,
    timeout: float,
    options: dict[str, Any],
    offset: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Open one view per ``headers`` entry (view j to ``targets[(offset + j) % len]``),
    ``concurrency`` handshakes in flight, each until its snapshot."""
    g = _group(worker, group, options)
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(max(concurrency, 1))
    new = [
        View(
            g,
            loop,
            tuple(targets[(offset + j) % len(targets)]),  # type: ignore[arg-type]
            headers[j],
            labels[j],
            full[j],
        )
        for j in range(len(headers))
    ]
    g.conns.extend(new)

    async def one(view: View) -> None:
        ok = await view.connect(timeout, sem)
        if not ok:
            g.errors[view.error] += 1

    await worker.wait_reporting(
        [loop.create_task(one(v)) for v in new],
        (
            lambda: {
                "progress": "open",
                "worker": worker.index,
                "group": group,
                "open": g.open_count,
                "of": len(g.conns),
            }
        )
        if progress
        else None,
    )
    ok = [v for v in new if v.snaps]
    return {
        "requested": len(new),
        "open": len(ok),
        "errors": dict(Counter(v.error for v in new if v.error and not v.snaps)),
        "t_first_send": min((v.t_first_send for v in new), default=0),
        "t_last_open": max((v.t_open for v in ok), default=0),
        "handshake_ms": percentiles_ms([(v.t_open - v.t_send) / 1e6 for v in ok]),
        "deflate": sum(1 for v in ok if v.deflate),
    }


async def cmd_counts(worker: Any, group: str, since: int = 0) -> dict[str, Any]:
    """Progress: open views, presence frames so far, fresh snapshots since ``since`` ns."""
    g = _group(worker, group)
    fresh = [v for v in g.conns if v.state == OPEN and v.t_send >= since] if since else []
    return {
        "open": g.open_count,
        "views": len(g.conns),
        "presence": sum(v.presence for v in g.conns),
        "bytes": sum(v.bytes_in for v in g.conns),
        "fresh": len(fresh),
        "t_last_fresh": max((v.t_open for v in fresh), default=0),
        "t_last_presence": max((v.t_last_presence for v in g.conns), default=0),
        "attempts": sum(v.attempts for v in g.conns),
    }


async def cmd_report(
    worker: Any,
    group: str,
    expect_online: list[str],
    expect_offline: list[str] | None = None,
    check_counts: bool = True,
) -> dict[str, Any]:
    """Per-view figures and the final-view check (see ``View.check``)."""
    g = _group(worker, group)
    expect = {name: True for name in expect_online}
    expect.update({name: False for name in expect_offline or []})
    results: Counter[str] = Counter()
    wrong_examples: list[Any] = []
    full_details = _check_full(g, expect, len(expect_online), results, wrong_examples)
    markers = {d["online_marker"] for d in full_details}
    # Count online rows with a byte count only if every decoded snapshot agreed with it.
    marker = markers.pop() if len(markers) == 1 else None
    raws = [d["raw"] for d in full_details]
    redundant = 0
    for view in g.conns:
        if view.full and view.state == OPEN:
            continue
        if not check_counts:
            results["closed" if view.state != OPEN else "uncounted"] += 1
            continue
        status, details = view.check(expect, len(expect_online), marker)
        results[status] += 1
        redundant += details.get("redundant", 0)
        if details.get("raw"):
            raws.append(details["raw"])
        if status == "lost" and len(wrong_examples) < 5:
            wrong_examples.append({"view": view.label, "presence": view.conn_presence})
    return {
        "views": len(g.conns),
        "full": sum(1 for v in g.conns if v.full),
        "results": dict(results),
        "redundant_deliveries": redundant,
        "wrong_examples": wrong_examples[:5],
        "me_wrong": sum(1 for d in full_details if not d["me_ok"]),
        "snapshot_raw_bytes": raws,
        "snapshot_users": [d["users"] for d in full_details],
        **_figures(g),
    }


def _check_full(
    g: ViewGroup,
    expect: dict[str, bool],
    users_total: int,
    results: Counter[str],
    wrong_examples: list[Any],
) -> list[dict[str, Any]]:
    """The exact check of every open full view; their details."""
    full_details: list[dict[str, Any]] = []
    for view in [v for v in g.conns if v.full and v.state == OPEN]:
        status, details = view.check(expect, users_total, None)
        results[status] += 1
        full_details.append(details)
        if status == "lost":
            wrong_examples.append({"view": view.label, **details})
    return full_details


def _figures(g: ViewGroup) -> dict[str, Any]:
    """Per-view figures (lists, merged over the workers by the runner) and totals."""
    views = [v for v in g.conns if v.snaps]
    return {
        "snapshot_wire_bytes": [v.snap_wire for v in views],
        "snapshot_frames": [v.snap_frames for v in views],
        "compressed": sum(1 for v in views if v.snap_compressed),
        "bytes_per_view": [v.bytes_in for v in views],
        "frames_per_view": [v.frames for v in views],
        "presence_per_view": [v.presence for v in views],
        "attempts_per_view": [v.attempts for v in g.conns],
        "refused": sum(v.refused for v in g.conns),
        "probes": sum(v.probes for v in g.conns),
        "probe_failures": sum(v.probe_failures for v in g.conns),
        "close_codes": {str(k): v for k, v in g.close_codes.items()},
        "view_errors": dict(g.errors),
        "fast_reads": g.fast_reads,
        "slow_reads": g.slow_reads,
    }


async def cmd_mark(worker: Any, group: str) -> dict[str, Any]:
    """Start of a measured phase: count from here, and note every read's time and count."""
    g = _group(worker, group)
    for view in g.conns:
        view.mark_presence, view.mark_bytes, view.mark_frames = (
            view.presence,
            view.bytes_in,
            view.frames,
        )
        view.track_t, view.track_c = array("q"), array("q")
        view.mark_events = len(view.events or ())
    return {"views": len(g.conns)}


async def cmd_stream(worker: Any, group: str) -> dict[str, Any]:
    """The presence events the full views received since the mark, in order: the stream
    every view of a deployment receives (one broker, one order)."""
    g = _group(worker, group)
    full = [v for v in g.conns if v.full and v.state == OPEN]
    streams = [
        [p for p, _k in (v.events or [])[v.mark_events :] if g.parsed(p).get("type") == "presence"]
        for v in full
    ]
    if not streams:
        return {"stream": [], "first_kts": b"", "full_views": 0, "mismatched": 0}
    longest = max(streams, key=len)
    mismatched = sum(1 for s in streams if s != longest)
    first = np.full(len(longest), np.iinfo(np.int64).max, dtype=np.int64)
    for view in full:
        if view.events:
            kts = [
                k
                for p, k in view.events[view.mark_events :]
                if g.parsed(p).get("type") == "presence"
            ]
            if len(kts) == len(longest):
                first = np.minimum(first, np.asarray(kts, dtype=np.int64))
    return {
        "stream": longest,
        "first_kts": first.tobytes(),
        "full_views": len(streams),
        "mismatched": mismatched,
    }


async def cmd_latency(
    worker: Any, group: str, events: int, triggers: bytes, seconds: float
) -> dict[str, Any]:
    """When each view had event j of the stream (the first read after which it had counted
    j+1 presence frames since the mark): per event the last and first view's time and how
    many views had it; a histogram of every delivery's latency; per-view rates."""
    g = _group(worker, group)
    trig = np.frombuffer(triggers, dtype=np.int64)
    last = np.zeros(events, dtype=np.int64)
    first = np.full(events, np.iinfo(np.int64).max, dtype=np.int64)
    have = np.zeros(events, dtype=np.int64)
    hist = np.zeros(len(HIST_EDGES) - 1, dtype=np.int64)
    wanted = np.arange(1, events + 1)
    lost = extra = 0
    rates_b, rates_f = [], []
    for view in g.conns:
        if view.track_t is None or view.track_c is None or view.state != OPEN:
            continue
        t = np.frombuffer(view.track_t, dtype=np.int64)
        c = np.frombuffer(view.track_c, dtype=np.int64)
        got = view.presence - view.mark_presence
        lost += max(events - got, 0)
        extra += max(got - events, 0)
        rates_b.append((view.bytes_in - view.mark_bytes) / seconds)
        rates_f.append((view.frames - view.mark_frames) / seconds)
        if not len(t) or not events:
            continue
        idx = np.searchsorted(c, wanted, side="left")
        ok = idx < len(t)
        times = np.where(ok, t[np.minimum(idx, len(t) - 1)], 0)
        have += ok
        last = np.maximum(last, times)
        first = np.minimum(first, np.where(ok, times, first))
        valid = ok & (trig > 0)
        hist += np.histogram((times[valid] - trig[valid]) / 1e6, HIST_EDGES)[0]
    return {
        "last": last.tobytes(),
        "first": first.tobytes(),
        "have": have.tobytes(),
        "hist": hist.tobytes(),
        "lost": lost,
        "extra": extra,
        "bytes_per_s": rates_b,
        "frames_per_s": rates_f,
    }


async def cmd_close(worker: Any, group: str, timeout: float = 10.0) -> dict[str, Any]:
    g = _group(worker, group)
    views = [v for v in g.conns if v.sock is not None or v.retry is not None]
    for view in views:
        view.close()
    waiting = [v.closed for v in views if not v.closed.done()]
    if waiting:
        await asyncio.wait(waiting, timeout=timeout)
    aborted = 0
    for view in views:
        if view.sock is not None:
            view.abort()
            aborted += 1
    g.stopped = True
    return {"closed": len(views) - aborted, "aborted": aborted}


async def cmd_churn(
    worker: Any,
    group: str,
    targets: list[tuple[str, int]],
    headers: list[dict[str, str]],
    labels: list[str],
    rate: float,
    duration: float,
    options: dict[str, Any],
    timeout: float = 10.0,
) -> dict[str, Any]:
    """Movers (distinct users) go online and offline: every 1/rate s the next idle mover
    toggles (connects and waits for its snapshot, or closes and waits for the close). At the
    end every mover is closed. Returns every trigger (label, online, time_ns)."""
    g = _group(worker, group, options)
    loop = asyncio.get_running_loop()
    movers = [
        View(
            g,
            loop,
            tuple(targets[i % len(targets)]),  # type: ignore[arg-type]
            headers[i],
            labels[i],
            False,
        )
        for i in range(len(headers))
    ]
    g.conns.extend(movers)
    churn = Churn(movers, timeout)
    started = time_ns()
    skipped, ticks = await churn.run(rate, duration)
    if churn.tasks:
        await asyncio.wait(list(churn.tasks), timeout=timeout * 2)
    for i, view in enumerate(movers):  # everyone ends offline
        if view.state == OPEN:
            churn.busy[i] = True
            await churn.toggle(i)
    return {
        "triggers": churn.triggers,
        "errors": dict(churn.errors),
        "skipped": skipped,
        "t_start": started,
        "t_end": time_ns(),
        "ticks": ticks,
    }


class Churn:
    """Movers toggling one at a time on a clock, each toggle a task of its own."""

    def __init__(self, movers: list[View], timeout: float) -> None:
        self.movers = movers
        self.timeout = timeout
        self.busy = [False] * len(movers)
        self.triggers: list[tuple[str, bool, int]] = []
        self.errors: Counter[str] = Counter()
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self, rate: float, duration: float) -> tuple[int, int]:
        """Every 1/rate s for ``duration`` s, toggle the next idle mover (none idle: a
        skipped tick). Returns (skipped ticks, ticks)."""
        loop = asyncio.get_running_loop()
        movers, busy = self.movers, self.busy
        skipped = 0
        t0 = time.monotonic()
        tick = cursor = 0
        while time.monotonic() - t0 < duration:
            delay = t0 + tick / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tick += 1
            for step in range(len(movers)):
                i = (cursor + step) % len(movers)
                if not busy[i]:
                    busy[i] = True
                    cursor = i + 1
                    task = loop.create_task(self.toggle(i))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
                    break
            else:
                skipped += 1
        return skipped, tick

    async def toggle(self, i: int) -> None:
        """Mover ``i`` goes offline if it is online, online otherwise."""
        view = self.movers[i]
        try:
            if view.state == OPEN:
                view.dead = False
                self.triggers.append((view.label, False, view.close()))
                try:
                    await asyncio.wait_for(asyncio.shield(view.closed), self.timeout)
                except TimeoutError:
                    self.errors["close timeout"] += 1
                    view.abort()
                view.dead = False
            elif await view.connect(self.timeout):
                self.triggers.append((view.label, True, view.t_send))
            else:
                self.errors[view.error] += 1
        finally:
            self.busy[i] = False
