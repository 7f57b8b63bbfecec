"""Scenario ``crossproc``: the fan-out cycles with N observers spread over 1 process (memory
broker), 1 process (Redis) and 2 or more processes sharing Redis; the mover on the first."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bench.metrics import ratio
from bench.scenarios import fanout
from bench.scenarios.cells import fmt
from bench.scenarios.common import target

if TYPE_CHECKING:
    from bench.runner import Runner


async def run(runner: Runner) -> dict[str, Any]:
    o = runner.opts
    n = o.n
    configs = [(1, "memory"), (1, "redis")] + [(p, "redis") for p in o.cross if p > 1]
    out: dict[str, Any] = {"n": n, "k": o.k, "runs": {}}
    if "app" not in o.targets:
        return out
    for processes, broker in configs:
        key = f"{processes}-{broker}"
        async with runner.deployment("app", processes=processes, broker=broker) as dep:
            await runner.open_observers(dep, n)
            await runner.settle()
            r = await fanout.cycles(runner, dep, n, o.k, f"app {key}")
            r.update(
                {"processes": processes, "broker": broker, "rss_mib": round(dep.rss() / 2**20, 1)}
            )
            out["runs"][key] = r
    base = out["runs"].get("1-memory", {}).get("last_observer_ms", {})
    for r in out["runs"].values():
        r["ratio_p95_vs_1_memory"] = ratio(r["last_observer_ms"]["p95"], base.get("p95"))
        r["ratio_p50_vs_1_memory"] = ratio(r["last_observer_ms"]["p50"], base.get("p50"))
        if base.get("p50") is not None and r["last_observer_ms"]["p50"] is not None:
            r["added_p50_ms"] = round(r["last_observer_ms"]["p50"] - base["p50"], 2)
    return out


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    sc = results["scenarios"]
    cross = sc.get("crossproc", {}).get("runs", {})
    if "2-redis" not in cross or "1-memory" not in cross:
        return []
    rp = cross["2-redis"]["ratio_p95_vs_1_memory"]
    return [
        target(
            f"2 processes via Redis, p95 vs 1 process at N={sc['crossproc']['n']}",
            rp,
            "<= 1.3",
            rp is not None and rp <= 1.3,
            f"{cross['2-redis']['last_observer_ms']['p95']} ms vs "
            f"{cross['1-memory']['last_observer_ms']['p95']} ms",
        )
    ]


def render(results: dict[str, Any]) -> list[str]:
    cross = results["scenarios"].get("crossproc")
    if not cross or not cross.get("runs"):
        return []
    lines = [
        f"## Cross-process (N={cross['n']} observers spread over the processes, "
        f"the mover on the first; {2 * cross['k']} events)",
        "",
        "| processes | broker | p50 ms | p95 ms | max ms | lost | p95 vs 1 process "
        "(memory) | added p50 ms | RSS MiB (all) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in cross["runs"].values():
        s = r["last_observer_ms"]
        lines.append(
            f"| {r['processes']} | {r['broker']} | {fmt(s['p50'])} | "
            f"{fmt(s['p95'])} | {fmt(s['max'])} | {r['lost']} | "
            f"{fmt(r['ratio_p95_vs_1_memory'])} | {fmt(r.get('added_p50_ms'))} | "
            f"{fmt(r['rss_mib'])} |"
        )
    lines.append("")
    return lines
