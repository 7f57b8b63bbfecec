"""Scenario ``distinct``: N distinct users connect (every connect is a transition every other
socket must receive, and every snapshot lists every user), beside N sockets of ONE user in
the same run; the ratio of the two storm times is the target (BENCHMARKS.md, Summary: <= 3
at N=10,000)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from bench.metrics import ratio
from bench.scenarios.cells import fmt, pair, setup, setup_fields
from bench.scenarios.common import open_views, report, target, view_options, wait_settled
from bench.servers import AppDeployment, Deployment, Probe
from bench.users import Seeder, usernames

if TYPE_CHECKING:
    from bench.runner import Runner


async def storm(
    runner: Runner,
    dep: Deployment,
    headers: list[dict[str, str]],
    labels: list[str],
    expect: list[str],
    label: str,
) -> dict[str, Any]:
    """Open every view (until its snapshot), then wait until the presence traffic stops;
    check every view's final state."""
    o = runner.opts
    n = len(headers)
    await asyncio.sleep(0.5 if o.quick else 2.0)
    runner.log(f"  {label}: opening {n} page-like sockets")
    rss0 = dep.rss()
    probe = Probe(dep, runner.gen_cpu)
    async with probe:
        r = await open_views(
            runner, dep, headers, labels, "views", view_options(o), timeout=o.storm_timeout
        )
        settled = await wait_settled(runner, "views", timeout=o.storm_timeout)
    seconds = (r["t_last_open"] - r["t_first_send"]) / 1e9 if r["open"] else None
    converged = (
        (max(settled["t_last_presence"], r["t_last_open"]) - r["t_first_send"]) / 1e9
        if r["open"]
        else None
    )
    rss1 = dep.rss()
    rep = await report(runner, "views", expect)
    out = {
        "n": n,
        "open": r["open"],
        "errors": sum(r["errors"].values()),
        "error_kinds": r["errors"],
        "seconds": round(seconds, 3) if seconds else None,
        "connects_per_s": round(r["open"] / seconds) if seconds else None,
        "converged_s": round(converged, 3) if converged else None,
        "settled": settled["settled"],
        "deflate_negotiated": r["deflate"],
        "handshake_ms_by_worker": r["handshake_ms_by_worker"],
        "server_cpu_s": probe.result["server_cpu_s"],
        "generator_cpu_s": probe.result["generator_cpu_s"],
        "probe": probe.result,
        "presence_deliveries": settled["presence"],
        "bytes_received": settled["bytes"],
        "rss_mib": round(rss1 / 2**20, 1),
        "kib_per_socket": round((rss1 - rss0) / 1024 / max(r["open"], 1), 2),
        **rep,
    }
    runner.log(
        f"  {label}: {r['open']}/{n} with their snapshot in {out['seconds']} s, "
        f"all events in {out['converged_s']} s; lost {out['lost']} "
        f"(verified {out['verified']}, {rep['full']} in full); snapshot "
        f"{rep['snapshot_wire_bytes']['p50']} B on the wire "
        f"({rep['compressed']} compressed)"
    )
    return out


async def one_size(runner: Runner, n: int) -> dict[str, Any]:
    """The one-user storm and the distinct storm of ``n`` sockets, each on a fresh app."""
    o = runner.opts
    names = usernames("u", n)
    out: dict[str, Any] = {"n": n}
    baseline_seed = Seeder(names) if o.baseline_seeded else None
    async with runner.deployment("app", seed=baseline_seed) as dep:
        headers = await dep.observer_headers()
        out["one_user"] = await storm(
            runner, dep, [headers] * n, ["observer"] * n, ["observer"], f"one user, N={n}"
        )
    seeder = Seeder(names)
    async with runner.deployment("app", seed=seeder) as dep:
        assert isinstance(dep, AppDeployment)
        runner.log(f"  seeded {n} accounts with a session each in {dep.seed_seconds} s")
        out["distinct"] = await storm(
            runner, dep, seeder.headers(names), names, names, f"distinct users, N={n}"
        )
        out["distinct"]["seed_seconds"] = dep.seed_seconds
    out["ratio_seconds"] = ratio(out["distinct"]["seconds"], out["one_user"]["seconds"])
    out["ratio_converged"] = ratio(out["distinct"]["converged_s"], out["one_user"]["seconds"])
    return out


async def run(runner: Runner) -> dict[str, Any]:
    o = runner.opts
    out: dict[str, Any] = {
        "n": o.n,
        **setup_fields(o),
        "compress_offered": o.compress,
        "verify_sample": o.verify_sample,
        "baseline_seeded": o.baseline_seeded,
        "sizes": {},
    }
    if "app" not in o.targets:
        return out
    for n in o.distinct_sizes:
        out["sizes"][str(n)] = await one_size(runner, n)
    out.update({k: v for k, v in out["sizes"][str(o.n)].items() if k != "n"})
    return out


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    d = results["scenarios"].get("distinct", {})
    if "distinct" not in d or "one_user" not in d:
        return []
    a, b = d["distinct"], d["one_user"]
    rs = d.get("ratio_seconds")
    return [
        target(
            f"{d['n']} distinct users connect vs {d['n']} sockets of one user",
            rs,
            "<= 3, nothing lost",
            rs is not None and rs <= 3 and a["lost"] == 0 and a["errors"] == 0,
            f"{a['seconds']} s vs {b['seconds']} s; all events after "
            f"{a['converged_s']} s; lost {a['lost']} (verified {a['verified']}); "
            f"errors {a['errors']}",
        )
    ]


def render(results: dict[str, Any]) -> list[str]:
    d = results["scenarios"].get("distinct", {})
    if "distinct" not in d:
        return []
    lines = [
        f"## Distinct users connect (N={d['n']}, {setup(d)}; page-like clients, "
        f"permessage-deflate offered: {'yes' if d['compress_offered'] else 'no'})",
        "",
        "Seconds from the first SYN until every socket has its snapshot; then until "
        "the presence traffic stops (every socket has every event). Lost: sockets "
        "whose final view is not everyone online, or closed (verified: checked; "
        f"{d['verify_sample']} in full, the others by counting). Bytes and frames per "
        "socket: everything it received (snapshot included).",
        "",
        "| workload | seconds to all snapshots | connects/s | seconds to all events "
        "| errors | lost (verified) | snapshot bytes on the wire p50 / max | "
        "snapshot bytes uncompressed p50 | snapshot frames | compressed snapshots | "
        "bytes per socket mean / max | frames per socket mean / max | server CPU s | "
        "generator CPU s | server KiB per socket |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
        "| --- | --- |",
    ]
    for key, name in (
        ("one_user", f"{d['n']} sockets of one user"),
        ("distinct", f"{d['n']} distinct users"),
    ):
        if d.get(key):
            lines.append(storm_row(name, d[key]))
    lines += [
        f"| ratio | **{fmt(d.get('ratio_seconds'))}** | | "
        f"{fmt(d.get('ratio_converged'))} | | | | | | | | | | | |",
        "",
    ]
    if len(d.get("sizes", {})) > 1:
        lines += sizes_table(d["sizes"])
    return lines


def storm_row(name: str, s: dict[str, Any]) -> str:
    return (
        f"| {name} | {fmt(s['seconds'])} | {fmt(s['connects_per_s'])} | "
        f"{fmt(s['converged_s'])} | {s['errors']} | {s['lost']} ({s['verified']}) | "
        f"{pair(s['snapshot_wire_bytes'], 'p50')} | "
        f"{fmt(s['snapshot_raw_bytes']['p50'])} | {fmt(s['snapshot_frames']['max'])} | "
        f"{s['compressed']} | {pair(s['bytes_per_view'])} | "
        f"{pair(s['frames_per_view'])} | {fmt(s['server_cpu_s'])} | "
        f"{fmt(s['generator_cpu_s'])} | {fmt(s.get('kib_per_socket'))} |"
    )


def sizes_table(sizes: dict[str, Any]) -> list[str]:
    lines = [
        "Sizes (each storm on a fresh app):",
        "",
        "| N | one user s | distinct s | distinct, all events s | ratio | lost | "
        "snapshot bytes on the wire p50 | bytes per socket mean |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for size, row in sizes.items():
        a, b = row["distinct"], row["one_user"]
        lines.append(
            f"| {fmt(int(size))} | {fmt(b['seconds'])} | {fmt(a['seconds'])} | "
            f"{fmt(a['converged_s'])} | {fmt(row['ratio_seconds'])} | "
            f"{a['lost']} | {fmt(a['snapshot_wire_bytes']['p50'])} | "
            f"{fmt(a['bytes_per_view']['mean'])} |"
        )
    lines.append("")
    return lines
