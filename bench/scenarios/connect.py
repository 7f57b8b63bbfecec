"""Scenario ``connect``: the connect storm (N sockets of one user: seconds until all have
their snapshot, errors) and the idle memory per connection, against every target."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from bench.metrics import ratio
from bench.scenarios.cells import fmt, gc_ms
from bench.scenarios.common import KINDS, target
from bench.servers import Deployment, Probe

if TYPE_CHECKING:
    from bench.runner import Runner


async def run(runner: Runner) -> dict[str, Any]:
    """Connect storm (N sockets: seconds to all connected, errors) and idle memory."""
    n = runner.opts.n
    out: dict[str, Any] = {"n": n, "concurrency": runner.opts.concurrency}
    for kind in runner.targets():
        async with runner.deployment(kind) as dep:
            out[kind] = await storm(runner, dep, kind, n)
    if "app" in out and "reference" in out:
        out["ratio_seconds"] = ratio(out["app"]["seconds"], out["reference"]["seconds"])
        out["ratio_kib"] = ratio(
            out["app"]["kib_per_connection"], out["reference"]["kib_per_connection"]
        )
    return out


async def storm(runner: Runner, dep: Deployment, kind: str, n: int) -> dict[str, Any]:
    """Open ``n`` sockets, let them idle, measure, close them all."""
    await dep.observer_headers()
    await asyncio.sleep(0.5 if runner.opts.quick else 2.0)
    rss0 = dep.rss()
    async with Probe(dep, runner.gen_cpu) as probe:
        r = await runner.open_observers(dep, n)
    seconds = (r["t_last_open"] - r["t_first_send"]) / 1e9
    runner.log(f"  {kind}: {r['open']}/{n} open in {seconds:.2f} s")
    # Idle: let timers, batched writes and the allocator settle.
    await asyncio.sleep(1.0 if runner.opts.quick else 5.0)
    rss1 = dep.rss()
    server_count = await dep.sockets()
    t = time.monotonic()
    closed = await runner.loadgen.call_observers("close", group="obs", timeout=30.0)
    close_s = time.monotonic() - t
    slow_handshakes = sum(1 for w in r["handshake_ms_by_worker"] if (w.get("max") or 0) > 1000)
    out = {
        "open": r["open"],
        "errors": sum(r["errors"].values()),
        "error_kinds": r["errors"],
        "seconds": round(seconds, 3),
        "connects_per_s": round(r["open"] / seconds) if seconds else None,
        "handshake_ms_by_worker": r["handshake_ms_by_worker"],
        "workers_with_handshake_over_1s": slow_handshakes,
        "server_cpu_s": probe.result["server_cpu_s"],
        "generator_cpu_s": probe.result["generator_cpu_s"],
        "probe": probe.result,
        "server_sockets_reported": server_count,
        "rss_before_mib": round(rss0 / 2**20, 1),
        "rss_idle_mib": round(rss1 / 2**20, 1),
        "kib_per_connection": round((rss1 - rss0) / 1024 / max(r["open"], 1), 2),
        "close_seconds": round(close_s, 2),
        "aborted_on_close": sum(c["aborted"] for c in closed),
    }
    runner.log(
        f"  {kind}: {out['kib_per_connection']} KiB per idle connection, server CPU "
        f"{out['server_cpu_s']} s, generator CPU {out['generator_cpu_s']} s"
    )
    return out


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    con = results["scenarios"].get("connect", {})
    out = []
    if "app" in con and "reference" in con:
        rs = con.get("ratio_seconds")
        out.append(
            target(
                f"connect {con['n']} sockets vs reference",
                rs,
                "<= 2 and no error",
                rs is not None and rs <= 2 and con["app"]["errors"] == 0,
                f"{con['app']['seconds']} s vs {con['reference']['seconds']} s; "
                f"errors {con['app']['errors']}",
            )
        )
    if "app" in con:
        kib = con["app"]["kib_per_connection"]
        out.append(
            target(
                f"idle memory per connection at N={con['n']}",
                kib,
                "<= 24 KiB",
                kib <= 24,
                f"reference {con.get('reference', {}).get('kib_per_connection')} KiB",
            )
        )
    return out


def render(results: dict[str, Any]) -> list[str]:
    con = results["scenarios"].get("connect")
    if not con or "error" in con:
        return []
    lines = [
        f"## Connect storm and idle memory (N={con['n']}, {con['concurrency']} "
        "handshakes in flight)",
        "",
        "| | seconds to all connected | connects/s | errors | server CPU s | "
        "generator CPU s | server GC ms (full passes) | KiB per idle connection | "
        "RSS idle MiB | seconds to close all |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind in KINDS:
        if kind in con:
            c = con[kind]
            lines.append(
                f"| {kind} | {fmt(c['seconds'])} | {fmt(c['connects_per_s'])} | "
                f"{c['errors']} | {fmt(c['server_cpu_s'])} | "
                f"{fmt(c['generator_cpu_s'])} | {gc_ms(c['probe'])} | "
                f"{fmt(c['kib_per_connection'])} | {fmt(c['rss_idle_mib'])} | "
                f"{fmt(c['close_seconds'])} |"
            )
    if "ratio_seconds" in con:
        lines.append(
            f"| ratio | {fmt(con['ratio_seconds'])} | | | | | | {fmt(con['ratio_kib'])} | | |"
        )
    lines.append("")
    return lines
