"""Scenario ``churn``: with ``--churn-modes one``, M movers (distinct users) connect, wait for
their snapshot and close, again and again, at once, while observers (sockets of one user)
count every event, against every target; with ``distinct``, N distinct users online and
movers at a fixed rate (``bench.scenarios.churn_distinct``, the app only). The churn phase
here also fills the stalled client's buffers in ``slow``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from bench.metrics import analyse, merge_events, ratio
from bench.scenarios.cells import fmt
from bench.scenarios.common import KINDS
from bench.servers import Deployment, Probe

if TYPE_CHECKING:
    from bench.runner import Runner

Watch = Callable[["asyncio.Future[Any]"], Awaitable[Any]]


async def run(runner: Runner) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "one" in runner.opts.churn_modes:
        out = await run_one(runner)
    if "distinct" in runner.opts.churn_modes and "app" in runner.opts.targets:
        from bench.scenarios import churn_distinct  # numpy, the app's models: only if needed

        out["distinct"] = await churn_distinct.run(runner)
    return out


async def run_one(runner: Runner) -> dict[str, Any]:
    o = runner.opts
    out: dict[str, Any] = {"n": o.churn_n, "movers": o.movers, "seconds": o.churn_seconds}
    for kind in runner.targets():
        async with runner.deployment(kind) as dep:
            await runner.open_observers(dep, o.churn_n)
            await runner.settle()
            out[kind] = await phase(runner, dep, o.churn_n, o.movers, o.churn_seconds, kind)
    if "app" in out and "reference" in out:
        out["ratio_events_per_s"] = ratio(
            out["app"]["events_per_s"], out["reference"]["events_per_s"]
        )
    return out


async def phase(
    runner: Runner,
    dep: Deployment,
    observers: int,
    movers: int,
    seconds: float,
    label: str,
    watch: Watch | None = None,
) -> dict[str, Any]:
    """``movers`` users connect, wait for their snapshot, close, and again, at once."""
    lg = runner.loadgen
    headers = await dep.mover_headers(movers)
    labels = [f"mover-{i}" for i in range(movers)]
    probe = Probe(dep, runner.gen_cpu)
    await probe.__aenter__()
    task = asyncio.ensure_future(
        lg.call(
            lg.mover,
            "churn",
            group="churn",
            targets=dep.targets[:1],
            headers=headers,
            labels=labels,
            duration=seconds,
        )
    )
    watched = None
    if watch is not None:
        watched = await watch(task)
    r = await task
    await drain(runner)
    await probe.__aexit__(None, None, None)
    parts = await lg.call_observers("events", group="obs", reset=True)
    merged = merge_events(parts)
    result = analyse(merged, observers, r["triggers"], set(labels))
    ends = [e["t_last"] for e in result["event_list"] if e.get("t_last")]
    span = (max(ends) - r["t_start"]) / 1e9 if ends else seconds
    result.update(
        {
            "n": observers,
            "movers": movers,
            "seconds": seconds,
            "cycles": r["cycles"],
            "mover_errors": r["errors"],
            "triggers": len(r["triggers"]),
            "events_per_s": round(result["events"] / span, 1) if span else None,
            "deliveries_per_s_sustained": round(result["deliveries"] / span) if span else None,
            "movers_left_online": left_online(merged, set(labels)),
            "span_s": round(span, 2),
            "server_cpu_s": probe.result["server_cpu_s"],
            "generator_cpu_s": probe.result["generator_cpu_s"],
            "probe": probe.result,
        }
    )
    if watched is not None:
        result["watch"] = watched
    s = result["last_observer_ms"]
    runner.log(
        f"  {label}: {result['events']} events in {span:.1f} s = "
        f"{result['events_per_s']} events/s to {observers} observers; last observer "
        f"p95 {s['p95']} ms; lost {result['lost']}"
    )
    return result


async def drain(runner: Runner) -> None:
    """Let the last events reach everyone: until deliveries stop growing (at most 60 s)."""
    last, still = -1, 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        counts = await runner.loadgen.call_observers("counts", group="obs")
        total = sum(c["deliveries"] for c in counts)
        still = still + 1 if total == last else 0
        if still >= (2 if runner.opts.quick else 4):
            break
        last = total
        await asyncio.sleep(0.25)


def left_online(merged: dict[bytes, dict[str, Any]], movers: set[str]) -> int:
    """Movers whose latest event (by version) says online: there must be none."""
    by_user: dict[str, dict[str, Any]] = {}
    for entry in merged.values():
        meta = entry["meta"]
        if meta.get("type") == "presence" and meta.get("username") in movers:
            best = by_user.get(meta["username"])
            if best is None or meta.get("version", 0) > best.get("version", 0):
                by_user[meta["username"]] = meta
    return sum(1 for meta in by_user.values() if meta.get("online"))


def render(results: dict[str, Any]) -> list[str]:
    churn = results["scenarios"].get("churn")
    if not churn or "error" in churn or "movers" not in churn:
        return []
    lines = [
        f"## Churn ({churn['movers']} movers at once for {churn['seconds']} s, "
        f"{churn['n']} observers)",
        "",
        "| server | events/s | deliveries/s | events | lost | last observer p50 / "
        "p95 ms | movers left online | server CPU s | generator CPU s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind in KINDS:
        if kind in churn:
            c = churn[kind]
            s = c["last_observer_ms"]
            lines.append(
                f"| {kind} | {fmt(c['events_per_s'])} | "
                f"{fmt(c['deliveries_per_s_sustained'])} | {c['events']} | "
                f"{c['lost']} | {fmt(s['p50'])} / {fmt(s['p95'])} | "
                f"{c['movers_left_online']} | {fmt(c['server_cpu_s'])} | "
                f"{fmt(c['generator_cpu_s'])} |"
            )
    if "ratio_events_per_s" in churn:
        lines.append(f"| ratio | {fmt(churn['ratio_events_per_s'])} | | | | | | | |")
    lines.append("")
    return lines
