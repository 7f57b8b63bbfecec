"""What the scenarios share: the servers they run against, a target of the report; for the
distinct-user scenarios, opening page-like views over the generator's processes, waiting
for the presence traffic to settle, merging per-worker reports."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.servers import Deployment

if TYPE_CHECKING:
    from bench.runner import Runner

KINDS = ("app", "reference", "picows")  # ratios stay relative to "reference" (websockets)


def target(name: str, value: Any, limit: str, met: bool | None, detail: str = "") -> dict[str, Any]:
    """One row of the report's targets table (BENCHMARKS.md, Summary, lists the targets)."""
    return {"target": name, "value": value, "limit": limit, "met": met, "detail": detail}


def dist(values: list[float]) -> dict[str, Any]:
    """Mean, p50, min, max, sum of per-socket figures."""
    if not values:
        return {"n": 0, "mean": None, "p50": None, "min": None, "max": None, "sum": 0}
    arr = np.asarray(values, dtype=float)

    def r(x: float) -> float:
        return round(float(x), 1)

    return {
        "n": int(arr.size),
        "mean": r(arr.mean()),
        "p50": r(np.percentile(arr, 50)),
        "min": r(arr.min()),
        "max": r(arr.max()),
        "sum": r(arr.sum()),
    }


def view_options(opts: Any, reconnect: dict[str, Any] | None = None) -> dict[str, Any]:
    """Options every view of a scenario shares (compression, memory budget, reconnects)."""
    per_worker = opts.snapshot_budget_mib * 2**20 // max(opts.gen_processes_effective, 1)
    return {"compress": opts.compress, "snapshot_budget": per_worker, "reconnect": reconnect}


def full_flags(count: int, sample: int) -> list[bool]:
    """Which views are verified in full: every k-th, ``sample`` of them spread evenly."""
    every = max(count // max(sample, 1), 1)
    return [j % every == 0 for j in range(count)]


async def open_views(
    runner: Runner,
    dep: Deployment,
    headers: list[dict[str, str]],
    labels: list[str],
    group: str,
    options: dict[str, Any],
    timeout: float = 120.0,
) -> dict[str, Any]:
    """Open one view per ``headers`` entry, spread over the observer processes (view j of
    the whole list goes to target j % targets), ``--concurrency`` handshakes in flight."""
    lg, o = runner.loadgen, runner.opts
    count = len(headers)
    full = full_flags(count, o.verify_sample)
    workers = list(lg.observers)
    per = max(o.concurrency // len(workers), 1)
    calls = []
    for w in workers:
        idx = list(range(w, count, len(workers)))
        if not idx:
            continue
        calls.append(
            lg.call(
                w,
                "viewcmds:open",
                group=group,
                targets=dep.targets,
                headers=[headers[j] for j in idx],
                labels=[labels[j] for j in idx],
                full=[full[j] for j in idx],
                concurrency=per,
                timeout=timeout,
                options=options,
                offset=0,
                progress=True,
            )
        )
    results = await asyncio.gather(*calls)
    errors: dict[str, int] = {}
    for r in results:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    return {
        "requested": count,
        "open": sum(r["open"] for r in results),
        "errors": errors,
        "t_first_send": min(r["t_first_send"] for r in results),
        "t_last_open": max(r["t_last_open"] for r in results),
        "deflate": sum(r["deflate"] for r in results),
        "handshake_ms_by_worker": [r["handshake_ms"] for r in results],
    }


async def counts(runner: Runner, group: str, since: int = 0) -> dict[str, Any]:
    parts = await runner.loadgen.call_observers("viewcmds:counts", group=group, since=since)
    return {
        "open": sum(p["open"] for p in parts),
        "presence": sum(p["presence"] for p in parts),
        "bytes": sum(p["bytes"] for p in parts),
        "fresh": sum(p["fresh"] for p in parts),
        "t_last_fresh": max(p["t_last_fresh"] for p in parts),
        "t_last_presence": max(p["t_last_presence"] for p in parts),
        "attempts": sum(p["attempts"] for p in parts),
    }


async def wait_settled(
    runner: Runner, group: str, timeout: float, quiet_s: float = 1.0
) -> dict[str, Any]:
    """Until no view has received a presence event or a snapshot for ``quiet_s`` (or
    ``timeout`` s). Not "no byte at all": the app's protocol pings (every 20 s per socket)
    reach some socket every second once 10,000 are open."""
    deadline = time.monotonic() + timeout
    last: tuple[int, int, int] = (-1, -1, -1)
    still_since = time.monotonic()
    c: dict[str, Any] = {}
    while time.monotonic() < deadline:
        c = await counts(runner, group)
        now = (c["presence"], c["open"], c["fresh"])
        if now != last:
            last, still_since = now, time.monotonic()
        elif time.monotonic() - still_since >= quiet_s:
            c["settled"] = True
            return c
        await asyncio.sleep(0.2)
    c["settled"] = False
    return c


async def report(
    runner: Runner,
    group: str,
    expect_online: list[str],
    expect_offline: list[str] | None = None,
    check_counts: bool = True,
) -> dict[str, Any]:
    """Every observer process's ``viewcmds:report``, merged."""
    parts = await runner.loadgen.call_observers(
        "viewcmds:report",
        group=group,
        expect_online=expect_online,
        expect_offline=expect_offline or [],
        check_counts=check_counts,
    )
    merged: dict[str, Any] = {
        "results": {},
        "wrong_examples": [],
        "close_codes": {},
        "view_errors": {},
    }
    for part in parts:
        for key in ("results", "close_codes", "view_errors"):
            for k, v in part[key].items():
                merged[key][k] = merged[key].get(k, 0) + v
        merged["wrong_examples"] += part["wrong_examples"]
    for key in (
        "views",
        "full",
        "redundant_deliveries",
        "me_wrong",
        "compressed",
        "refused",
        "fast_reads",
        "slow_reads",
        "probes",
        "probe_failures",
    ):
        merged[key] = sum(p[key] for p in parts)
    for key in (
        "snapshot_wire_bytes",
        "snapshot_raw_bytes",
        "snapshot_frames",
        "snapshot_users",
        "bytes_per_view",
        "frames_per_view",
        "presence_per_view",
        "attempts_per_view",
    ):
        merged[key] = dist([x for p in parts for x in p[key]])
    res = merged["results"]
    merged["lost"] = res.get("lost", 0) + res.get("closed", 0)
    merged["verified"] = res.get("ok", 0) + res.get("lost", 0)
    merged["wrong_examples"] = merged["wrong_examples"][:5]
    return merged


def get_json(url: str, headers: dict[str, str], timeout: float = 10.0) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (OSError, ValueError):
        return 0, None
