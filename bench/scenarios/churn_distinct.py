"""Scenario ``churn`` with N distinct users online: movers (other distinct users) go online
and offline at M transitions/s for a while; every viewer must receive every transition.

Per-delivery timing without looking at every frame: every viewer of a deployment receives
the same stream of events in the same order (one broker), so a viewer that has counted
j+1 presence frames since the start of the phase has event j. Views note (kernel receive
time, count) per read; the full views (a sample that parses every frame) give the stream
itself, which is matched with the movers' triggers. The target (BENCHMARKS.md, Summary):
p95 of the time until the last viewer has a transition <= 250 ms at 200/s for 30 s with
10,000 viewers."""

from __future__ import annotations

import bisect
import json
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.scenarios.cells import fmt, pair, setup, setup_fields
from bench.scenarios.common import dist, open_views, report, target, view_options, wait_settled
from bench.servers import Deployment, Probe
from bench.users import Seeder, usernames
from bench.views import HIST_EDGES

if TYPE_CHECKING:
    from bench.runner import Runner


def match_triggers(
    stream: list[bytes], first_kts: np.ndarray, triggers: list[tuple[str, bool, int]]
) -> np.ndarray:
    """Trigger time of each event: the mover's latest connect (or close) before the event
    first reached anyone; 0 when there is none."""
    by_key: dict[tuple[str, bool], list[int]] = {}
    for name, online, t in triggers:
        by_key.setdefault((name, bool(online)), []).append(t)
    for times in by_key.values():
        times.sort()
    out = np.zeros(len(stream), dtype=np.int64)
    for j, payload in enumerate(stream):
        event = json.loads(payload)
        times = by_key.get((event.get("username"), bool(event.get("online"))), [])
        i = bisect.bisect_right(times, int(first_kts[j])) - 1
        if i >= 0:
            out[j] = times[i]
    return out


def hist_percentile(hist: np.ndarray, q: float) -> float | None:
    total = int(hist.sum())
    if not total:
        return None
    k = int(np.searchsorted(np.cumsum(hist), q / 100 * total))
    return round(float(HIST_EDGES[min(k + 1, len(HIST_EDGES) - 1)]), 2)


def summary(values: np.ndarray) -> dict[str, Any]:
    if not values.size:
        return {"p50": None, "p95": None, "p99": None, "max": None, "n": 0}
    return {
        **{f"p{q}": round(float(np.percentile(values, q)), 2) for q in (50, 95, 99)},
        "max": round(float(values.max()), 2),
        "n": int(values.size),
    }


async def run(runner: Runner) -> dict[str, Any]:
    o = runner.opts
    n, movers, rate, seconds = o.dchurn_n, o.dchurn_movers, o.dchurn_rate, o.dchurn_seconds
    viewers, mover_names = usernames("u", n), usernames("m", movers)
    out: dict[str, Any] = {
        "n": n,
        "movers": movers,
        "rate": rate,
        "seconds": seconds,
        **setup_fields(o),
    }
    seeder = Seeder(viewers + mover_names)
    async with runner.deployment("app", seed=seeder) as dep:
        m = await measure(runner, dep, seeder, viewers, mover_names)
    out.update(figures(m))
    out["lost"] += out["final_view"]["lost"] + out["final_view"]["closed"]
    s = out["last_viewer_ms"]
    runner.log(
        f"  {out['events']} transitions to {m['open']['open']} distinct viewers: last "
        f"viewer p50 {s['p50']} / p95 {s['p95']} / p99 {s['p99']} ms; lost "
        f"{out['lost']}; {out['frames_per_s_per_viewer']['mean']} frames/s and "
        f"{out['bytes_per_s_per_viewer']['mean']} B/s per viewer"
    )
    return out


async def measure(
    runner: Runner, dep: Deployment, seeder: Seeder, viewers: list[str], mover_names: list[str]
) -> dict[str, Any]:
    """The viewers connect and settle; the movers churn; what each worker saw, merged into
    one stream of events with their triggers, and each worker's latencies against it."""
    o, lg = runner.opts, runner.loadgen
    r = await open_views(
        runner,
        dep,
        seeder.headers(viewers),
        viewers,
        "views",
        view_options(o),
        timeout=o.storm_timeout,
    )
    await wait_settled(runner, "views", timeout=o.storm_timeout)
    runner.log(
        f"  {r['open']}/{o.dchurn_n} distinct viewers online; {o.dchurn_movers} movers "
        f"churn at {o.dchurn_rate}/s for {o.dchurn_seconds} s"
    )
    await lg.call_observers("viewcmds:mark", group="views")
    probe = Probe(dep, runner.gen_cpu)
    async with probe:
        c = await lg.call(
            lg.mover,
            "viewcmds:churn",
            group="movers",
            targets=dep.targets,
            headers=seeder.headers(mover_names),
            labels=mover_names,
            rate=o.dchurn_rate,
            duration=o.dchurn_seconds,
            options=view_options(o),
        )
        settled = await wait_settled(runner, "views", timeout=120.0)
    span = (c["t_end"] - c["t_start"]) / 1e9
    stream, mismatched, first = merge_streams(
        await lg.call_observers("viewcmds:stream", group="views")
    )
    trig = match_triggers(stream, first, c["triggers"])
    parts = await lg.call_observers(
        "viewcmds:latency", group="views", events=len(stream), triggers=trig.tobytes(), seconds=span
    )
    rep = await report(runner, "views", viewers, mover_names, check_counts=False)
    return {
        "open": r,
        "churn": c,
        "settled": settled,
        "probe": probe.result,
        "span": span,
        "stream": stream,
        "mismatched": mismatched,
        "trig": trig,
        "parts": parts,
        "report": rep,
    }


def merge_streams(streams: list[dict[str, Any]]) -> tuple[list[bytes], int, np.ndarray]:
    """The longest worker's stream; how many streams differ from it; per event, the first
    time any full view had it."""
    stream = max((s["stream"] for s in streams), key=len)
    mismatched = sum(s["mismatched"] for s in streams) + sum(
        1 for s in streams if s["stream"] and s["stream"] != stream
    )
    first = np.full(len(stream), np.iinfo(np.int64).max, dtype=np.int64)
    for s in streams:
        if len(s["stream"]) == len(stream) and s["first_kts"]:
            first = np.minimum(first, np.frombuffer(s["first_kts"], dtype=np.int64))
    return stream, mismatched, first


def figures(m: dict[str, Any]) -> dict[str, Any]:
    """The scenario's figures from what ``measure`` collected."""
    r, c, parts, trig, stream, span = (
        m["open"],
        m["churn"],
        m["parts"],
        m["trig"],
        m["stream"],
        m["span"],
    )
    last = (
        np.max([np.frombuffer(p["last"], dtype=np.int64) for p in parts], axis=0)
        if stream
        else np.zeros(0, dtype=np.int64)
    )
    have = (
        np.sum([np.frombuffer(p["have"], dtype=np.int64) for p in parts], axis=0)
        if stream
        else np.zeros(0, dtype=np.int64)
    )
    hist = np.sum([np.frombuffer(p["hist"], dtype=np.int64) for p in parts], axis=0)
    timed = (trig > 0) & (have > 0)
    last_ms = (last[timed] - trig[timed]) / 1e6
    when = (trig[timed] - c["t_start"]) / 1e9
    order = np.argsort(when)
    rep, probe = m["report"], m["probe"]
    return {
        "viewers_open": r["open"],
        "viewer_errors": r["errors"],
        "triggers": len(c["triggers"]),
        "events": len(stream),
        "events_per_s": round(len(stream) / span, 1) if span else None,
        "mover_errors": c["errors"],
        "skipped_ticks": c["skipped"],
        "stream_mismatches": m["mismatched"],
        "events_without_trigger": int((trig == 0).sum()),
        "last_viewer_ms": summary(last_ms),
        "per_delivery_ms": {f"p{q}": hist_percentile(hist, q) for q in (50, 95, 99)},
        "lost": sum(p["lost"] for p in parts),
        "extra_deliveries": sum(p["extra"] for p in parts),
        "incomplete_events": int((have < r["open"]).sum()),
        "bytes_per_s_per_viewer": dist([x for p in parts for x in p["bytes_per_s"]]),
        "frames_per_s_per_viewer": dist([x for p in parts for x in p["frames_per_s"]]),
        "final_view": {
            "verified": rep["verified"],
            "lost": rep["results"].get("lost", 0),
            "closed": rep["results"].get("closed", 0),
        },
        "server_cpu_s": probe["server_cpu_s"],
        "generator_cpu_s": probe["generator_cpu_s"],
        "probe": probe,
        "settled": m["settled"]["settled"],
        "span_s": round(span, 2),
        # Per event, in trigger order: for the plot (bench.plot).
        "series": {
            "t_s": [round(float(x), 3) for x in when[order]],
            "last_ms": [round(float(x), 2) for x in last_ms[order]],
        },
    }


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    c = results["scenarios"].get("churn", {}).get("distinct", {})
    if "last_viewer_ms" not in c:
        return []
    p95 = c["last_viewer_ms"]["p95"]
    complete = c["events"] >= 0.95 * c["rate"] * c["seconds"]
    return [
        target(
            f"churn {c['rate']:.0f}/s for {c['seconds']:.0f} s with {c['n']} distinct "
            "users online: fan-out p95",
            p95,
            "<= 250 ms, every socket gets every transition",
            p95 is not None and p95 <= 250 and c["lost"] == 0 and complete,
            f"{c['events']} transitions ({c['events_per_s']}/s); lost {c['lost']}",
        )
    ]


def render(results: dict[str, Any]) -> list[str]:
    c = results["scenarios"].get("churn", {}).get("distinct", {})
    if "last_viewer_ms" not in c:
        return []
    s, p = c["last_viewer_ms"], c["per_delivery_ms"]
    return [
        f"## Churn with {c['n']} distinct users online ({setup(c)}; {c['movers']} "
        f"movers, {c['rate']:.0f} transitions/s for {c['seconds']:.0f} s)",
        "",
        "Latency: from the mover's connect (or close) until the last viewer has the "
        "event (kernel receive time); per delivery: every viewer. Lost: deliveries "
        "missing, plus viewers whose final view is wrong.",
        "",
        "| events | events/s | last viewer p50 / p95 / p99 / max ms | per delivery "
        "p50 / p95 / p99 ms | lost | frames/s per viewer mean / max | bytes/s per "
        "viewer mean / max | server CPU s | generator CPU s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {fmt(c['events'])} | {fmt(c['events_per_s'])} | {fmt(s['p50'])} / "
        f"**{fmt(s['p95'])}** / {fmt(s['p99'])} / {fmt(s['max'])} | {fmt(p['p50'])} / "
        f"{fmt(p['p95'])} / {fmt(p['p99'])} | {c['lost']} | "
        f"{pair(c['frames_per_s_per_viewer'])} | "
        f"{pair(c['bytes_per_s_per_viewer'])} | {fmt(c['server_cpu_s'])} | "
        f"{fmt(c['generator_cpu_s'])} |",
        "",
    ]
