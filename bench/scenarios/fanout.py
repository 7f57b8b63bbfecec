"""Scenario ``fanout``: one mover connects and disconnects while N observers (sockets of one
user) wait for each event; observers grow through the sizes of ``--sweep`` in one server.
The cycles are also the probe of ``crossproc`` and ``slow``."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from bench.metrics import analyse, merge_events, ratio
from bench.scenarios.cells import drops, fmt, gc_ms
from bench.scenarios.common import KINDS, target
from bench.servers import Deployment, Probe

if TYPE_CHECKING:
    from bench.runner import Runner

MOVER = "mover-0"


async def run(runner: Runner) -> dict[str, Any]:
    o = runner.opts
    out: dict[str, Any] = {"sizes": o.sizes, "k": o.k}
    for kind in runner.targets():
        async with runner.deployment(kind) as dep:
            out[kind] = await sweep(runner, dep, o.sizes, o.k, kind)
    if "app" in out and "reference" in out:
        out["ratios"] = {}
        for size in map(str, o.sizes):
            a, r = out["app"][size], out["reference"][size]
            out["ratios"][size] = {
                "p50": ratio(a["last_observer_ms"]["p50"], r["last_observer_ms"]["p50"]),
                "p95": ratio(a["last_observer_ms"]["p95"], r["last_observer_ms"]["p95"]),
                "deliveries_per_s": ratio(a["deliveries_per_s"], r["deliveries_per_s"]),
            }
    return out


async def sweep(
    runner: Runner, dep: Deployment, sizes: list[int], k: int, label: str
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    have = 0
    for size in sizes:
        r = await runner.open_observers(dep, size - have)
        have += r["open"]
        if have < size:
            runner.log(f"  only {have} of {size} observers open")
        await runner.settle()
        results[str(size)] = await cycles(runner, dep, have, k, label)
    return results


async def cycles(
    runner: Runner, dep: Deployment, observers: int, k: int, label: str
) -> dict[str, Any]:
    """One warm-up cycle and ``k`` measured ones: the mover connects (an online event),
    every observer has it; the mover closes (offline), every observer has it."""
    mover = (await dep.mover_headers(1))[0]
    triggers: list[tuple[str, bool, int]] = []
    timeouts = 0
    measured_from = 0
    probe = Probe(dep, runner.gen_cpu)
    for cycle in range(k + 1):
        if cycle == 1:
            await probe.__aenter__()
        t_on, missed = await one_cycle(runner, dep, mover, triggers)
        if cycle == 1:
            measured_from = t_on
        timeouts += missed
    await probe.__aexit__(None, None, None)
    parts = await runner.loadgen.call_observers("events", group="obs", reset=True)
    result = analyse(merge_events(parts), observers, triggers, {MOVER}, skip_before=measured_from)
    events = max(result["events"], 1)
    result.update(
        {
            "n": observers,
            "k": k,
            "wait_timeouts": timeouts,
            "server_cpu_ms_per_event": round(probe.result["server_cpu_s"] * 1e3 / events, 2),
            "generator_cpu_ms_per_event": round(probe.result["generator_cpu_s"] * 1e3 / events, 2),
            "probe": probe.result,
        }
    )
    s = result["last_observer_ms"]
    runner.log(
        f"  {label} N={observers}: last observer p50 {s['p50']} ms, p95 {s['p95']} "
        f"ms, max {s['max']} ms; {result['deliveries_per_s']} deliveries/s; "
        f"lost {result['lost']}"
    )
    return result


async def one_cycle(
    runner: Runner, dep: Deployment, mover: dict[str, str], triggers: list[tuple[str, bool, int]]
) -> tuple[int, int]:
    """The mover connects and every observer has its online event; it closes and every
    observer has its offline event. Returns the connect time and the observers' timeouts."""
    lg = runner.loadgen
    m = await lg.call(
        lg.mover,
        "open",
        group="mov",
        targets=dep.targets[:1],
        count=1,
        headers=[mover],
        concurrency=1,
        timeout=30.0,
        record=False,
    )
    if not m["open"]:
        raise RuntimeError(f"the mover could not connect: {m['errors']}")
    t_on = m["t_send"][0]
    triggers.append((MOVER, True, t_on))
    waits = await lg.call_observers(
        "wait_event", group="obs", username=MOVER, online=True, not_before=t_on, timeout=30.0
    )
    timeouts = sum(1 for w in waits if not w["complete"])
    await asyncio.sleep(0.05)
    c = await lg.call(lg.mover, "close", group="mov", timeout=10.0)
    triggers.append((MOVER, False, c["t_close"]))
    waits = await lg.call_observers(
        "wait_event",
        group="obs",
        username=MOVER,
        online=False,
        not_before=c["t_close"],
        timeout=30.0,
    )
    timeouts += sum(1 for w in waits if not w["complete"])
    await asyncio.sleep(0.05)
    return t_on, timeouts


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    fan = results["scenarios"].get("fanout", {})
    if "app" not in fan or "reference" not in fan:
        return []
    size = str(max(fan["sizes"]))
    a, r = fan["app"][size], fan["reference"][size]
    p95 = ratio(a["last_observer_ms"]["p95"], r["last_observer_ms"]["p95"])
    dps = ratio(a["deliveries_per_s"], r["deliveries_per_s"])
    return [
        target(
            f"fan-out p95 at N={size} vs reference",
            p95,
            "<= 1.3 and nothing lost",
            p95 is not None and p95 <= 1.3 and a["lost"] == 0,
            f"{a['last_observer_ms']['p95']} ms vs {r['last_observer_ms']['p95']} ms; "
            f"lost {a['lost']}",
        ),
        target(
            f"deliveries/s at N={size} vs reference",
            dps,
            ">= 0.8",
            dps is not None and dps >= 0.8,
            f"{a['deliveries_per_s']} vs {r['deliveries_per_s']}",
        ),
    ]


def render(results: dict[str, Any]) -> list[str]:
    fan = results["scenarios"].get("fanout")
    if not fan or "error" in fan:
        return []
    lines = [
        f"## Fan-out (one mover, {fan['k']} connect/disconnect cycles = "
        f"{2 * fan['k']} events per size, after a warm-up cycle)",
        "",
        "Time until the last observer has the event (kernel receive timestamps; "
        "user-space read time in brackets), per-delivery p99, deliveries/s, lost.",
        "Other CPU: what other processes used meanwhile. Drops/RTO: packets dropped "
        "from the loopback backlog and TCP retransmission timeouts during the phase "
        "(each costs >= 200 ms). Server GC: time in the server's cyclic garbage "
        "collector (bench.gcprobe).",
        "",
        "| N | server | p50 ms | p95 ms | max ms | delivery p99 ms | "
        "deliveries/s | lost | server CPU ms/event | generator CPU ms/event | "
        "other CPU s | drops/RTO | server GC ms (full passes, longest) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for size in map(str, fan["sizes"]):
        for kind in KINDS:
            if kind in fan:
                lines.append(row(size, kind, fan[kind][size]))
        if "ratios" in fan:
            q = fan["ratios"][size]
            lines.append(
                f"| {size} | ratio | {fmt(q['p50'])} | {fmt(q['p95'])} | | | "
                f"{fmt(q['deliveries_per_s'])} | | | | | | |"
            )
    lines.append("")
    return lines


def row(size: str, kind: str, r: dict[str, Any]) -> str:
    s, u = r["last_observer_ms"], r["last_observer_user_ms"]
    return (
        f"| {size} | {kind} | {fmt(s['p50'])} ({fmt(u['p50'])}) | {fmt(s['p95'])} "
        f"({fmt(u['p95'])}) | {fmt(s['max'])} | {fmt(r['per_delivery_ms']['p99'])} | "
        f"{fmt(r['deliveries_per_s'])} | {r['lost']} | "
        f"{fmt(r['server_cpu_ms_per_event'])} | {fmt(r['generator_cpu_ms_per_event'])} "
        f"| {fmt(r['probe']['other_cpu_s'])} | {drops(r['probe'])} | {gc_ms(r['probe'])} |"
    )
