"""The worker commands over groups of ``Conn`` sockets (observers, movers, a stalled
client): ``LoadGen.call(i, "<name>", ...)`` runs ``cmd_<name>(worker, ...)`` here."""

from __future__ import annotations

import asyncio
import gc
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from bench.generator.conn import Conn
from bench.generator.wire import CLOSED, OPEN, time_ns, upgrade_request

if TYPE_CHECKING:
    from bench.generator.worker import Worker


def percentiles_ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    values = sorted(values)

    def pick(q: float) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))], 3)

    return {"p50": pick(0.5), "p95": pick(0.95), "p99": pick(0.99), "max": round(values[-1], 3)}


async def cmd_open(
    worker: Worker,
    group: str,
    targets: list[tuple[str, int]],
    count: int,
    headers: list[dict[str, str]],
    concurrency: int,
    timeout: float,
    record: bool = True,
    offset: int = 0,
    rcvbuf: int = 0,
    path: str = "/ws",
    labels: list[str] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Open ``count`` sockets; socket j goes to ``targets[(offset + j) % len]`` with
    ``headers[j % len]``. Returns when all are open or have failed."""
    g = worker.group(group, record)
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(max(concurrency, 1))
    requests: dict[tuple[tuple[str, int], int], bytes] = {}
    new: list[Conn] = []
    started = time_ns()
    base = g.open_count

    async def one(j: int) -> None:
        host, port = targets[(offset + j) % len(targets)]
        target = (host, port)
        key = (target, j % len(headers))
        if key not in requests:
            requests[key] = upgrade_request(target[0], target[1], path, headers[key[1]])
        conn = Conn(loop, g, labels[j % len(labels)] if labels else "")
        new.append(conn)
        async with sem:
            ok = await conn.open(target, requests[key], timeout, rcvbuf)
        if not ok:
            g.errors[conn.error] += 1

    await worker.wait_reporting(
        [loop.create_task(one(j)) for j in range(count)],
        (
            lambda: {
                "progress": "open",
                "worker": worker.index,
                "group": group,
                "open": g.open_count,
                "of": base + count,
            }
        )
        if progress
        else None,
    )
    g.conns.extend(c for c in new if c.state != CLOSED)
    gc.collect()
    gc.freeze()
    return opened(new, count, started)


def opened(new: list[Conn], count: int, started: int) -> dict[str, Any]:
    """What ``cmd_open`` reports about the sockets it opened."""
    ok = [c for c in new if c.state == OPEN]
    return {
        "requested": count,
        "open": len(ok),
        "errors": dict(Counter(c.error for c in new if c.error)),
        "t_start": started,
        "t_first_send": min((c.t_send for c in new), default=0),
        "t_last_open": max((c.t_open for c in ok), default=0),
        "handshake_ms": percentiles_ms([(c.t_open - c.t_send) / 1e6 for c in ok]),
        "t_send": [c.t_send for c in ok] if len(ok) <= 1000 else [],
        "labels": [c.label for c in ok] if len(ok) <= 1000 else [],
    }


async def cmd_close(
    worker: Worker, group: str, timeout: float = 10.0, concurrency: int = 0
) -> dict[str, Any]:
    """Closing handshake on every socket of the group; RST for those not done in time."""
    g = worker.group(group)
    conns = [c for c in g.conns if c.state != CLOSED]
    t_close = time_ns()
    if concurrency:
        for i in range(0, len(conns), concurrency):
            for conn in conns[i : i + concurrency]:
                conn.close()
            await asyncio.sleep(0)
    else:
        for conn in conns:
            conn.close()
    waiting = [c.closed for c in conns if not c.closed.done()]
    if waiting:
        await asyncio.wait(waiting, timeout=timeout)
    aborted = 0
    for conn in conns:
        if conn.state != CLOSED:
            conn.abort()
            aborted += 1
    g.conns = [c for c in g.conns if c.state != CLOSED]
    return {
        "closed": len(conns) - aborted,
        "aborted": aborted,
        "t_close": t_close,
        "t_done": time_ns(),
    }


async def cmd_wait_event(
    worker: Worker, group: str, username: str, online: bool, not_before: int, timeout: float
) -> dict[str, Any]:
    """Wait until every open socket of the group has a matching presence event."""
    g = worker.group(group)
    spec = {"username": username, "online": online, "not_before": not_before}
    rec = g.find_complete(spec)
    if rec is None:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        waiter = (spec, fut)
        g.waiters.append(waiter)
        try:
            rec = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            if waiter in g.waiters:
                g.waiters.remove(waiter)
            return {"complete": False, "count": g.best_count(spec), "expected": g.open_count}
    assert rec is not None
    return {
        "complete": True,
        "count": len(rec.kts),
        "expected": rec.target,
        "last_kts": max(rec.kts),
    }


async def cmd_events(worker: Worker, group: str, reset: bool = True) -> list[dict[str, Any]]:
    """Every distinct message the group received, with its timestamps (as bytes)."""
    g = worker.group(group)
    out = [
        {
            "payload": rec.payload,
            "target": rec.target,
            "kts": rec.kts.tobytes(),
            "uts": rec.uts.tobytes(),
        }
        for rec in g.events.values()
    ]
    if reset:
        g.events = {}
        g.meta = {}
    return out


async def cmd_counts(worker: Worker, group: str) -> dict[str, Any]:
    g = worker.group(group)
    return {
        "deliveries": sum(len(r.kts) for r in g.events.values()),
        "events": len(g.events),
        "open": g.open_count,
        "last_kts": max((r.kts[-1] for r in g.events.values() if len(r.kts)), default=0),
    }


async def cmd_status(worker: Worker, group: str) -> dict[str, Any]:
    g = worker.group(group)
    return {
        "open": g.open_count,
        "sockets": len(g.conns),
        "unexpected_closes": g.unexpected_closes,
        "close_codes": {str(k): v for k, v in g.close_codes.items()},
        "bytes_in": sum(c.bytes_in for c in g.conns),
        "errors": dict(g.errors),
    }


async def cmd_pause(worker: Worker, group: str) -> dict[str, Any]:
    g = worker.group(group)
    for conn in g.conns:
        conn.pause()
    return {
        "paused": len(g.conns),
        "ports": [c.sock.getsockname()[1] for c in g.conns if c.sock is not None],
    }


async def cmd_resume(worker: Worker, group: str, wait: float = 0.0) -> dict[str, Any]:
    """Read again; wait up to ``wait`` s for the server to close the sockets."""
    g = worker.group(group)
    before = sum(c.bytes_in for c in g.conns)
    for conn in g.conns:
        conn.resume()
    pending = [c.closed for c in g.conns if not c.closed.done()]
    if wait and pending:
        await asyncio.wait(pending, timeout=wait)
    return {
        "bytes_read_after_resume": sum(c.bytes_in for c in g.conns) - before,
        "closed_by_server": sum(1 for c in g.conns if c.state == CLOSED),
        "close_codes": [c.close_code for c in g.conns],
        "sockets": len(g.conns),
    }


async def cmd_churn(
    worker: Worker,
    group: str,
    targets: list[tuple[str, int]],
    headers: list[dict[str, str]],
    labels: list[str],
    duration: float,
    timeout: float = 10.0,
    hold: float = 0.0,
    rcvbuf: int = 0,
) -> dict[str, Any]:
    """Each mover (one per headers entry) connects, waits for its snapshot, closes, waits
    for the close, and again, for ``duration`` s. Returns every trigger time."""
    g = worker.group(group, record=False)
    loop = asyncio.get_running_loop()
    stop_at = time.monotonic() + duration
    worker.churn_stopped = False
    triggers: list[tuple[str, bool, int]] = []
    errors: Counter[str] = Counter()
    cycles = 0

    async def mover(i: int) -> None:
        nonlocal cycles
        host, port = targets[i % len(targets)]
        target = (host, port)
        while time.monotonic() < stop_at and not worker.churn_stopped:
            request = upgrade_request(target[0], target[1], "/ws", headers[i])
            conn = Conn(loop, g, labels[i])
            if not await conn.open(target, request, timeout, rcvbuf):
                errors[conn.error] += 1
                await asyncio.sleep(0.05)
                continue
            triggers.append((labels[i], True, conn.t_send))
            if hold:
                await asyncio.sleep(hold)
            triggers.append((labels[i], False, conn.close()))
            try:
                await asyncio.wait_for(asyncio.shield(conn.closed), timeout)
            except TimeoutError:
                errors["close timeout"] += 1
                conn.abort()
            cycles += 1

    started = time_ns()
    await asyncio.gather(*(mover(i) for i in range(len(headers))))
    return {
        "triggers": triggers,
        "errors": dict(errors),
        "cycles": cycles,
        "t_start": started,
        "t_end": time_ns(),
    }
