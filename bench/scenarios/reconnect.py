"""Scenario ``reconnect``: N distinct page-like clients are connected; every app process is
restarted (SIGTERM, started again on the same port, database and cookie secret); the clients
reconnect like the page (static/js/connection.js): full-jitter exponential backoff (base
500 ms, cap 15 s), at least random 0-2 s after a 1001; before each attempt a GET of
``/api/session`` (the page's 401 probe; ``--reconnect-probe ''`` leaves it out); refused
upgrades are retried.
Measured: seconds from the SIGTERM until every client has a fresh snapshot *and*
``/api/users`` shows everyone online (the target, BENCHMARKS.md, Summary: 15 s at
N=10,000)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from bench.scenarios.cells import fmt, pair, setup, setup_fields
from bench.scenarios.common import (
    counts,
    get_json,
    open_views,
    report,
    target,
    view_options,
    wait_settled,
)
from bench.servers import AppDeployment
from bench.users import Seeder, usernames

if TYPE_CHECKING:
    from bench.runner import Runner


def policy(opts: Any) -> dict[str, Any]:
    return {
        "first_s": opts.reconnect_first,
        "base_s": opts.backoff_base,
        "cap_s": opts.backoff_cap,
        "stable_s": 10.0,
        "timeout_s": 30.0,
        "probe": opts.reconnect_probe,
    }


async def api_all_online(url: str, cookie: str, names: set[str]) -> tuple[bool, int]:
    status, body = await asyncio.to_thread(get_json, url + "/api/users", {"Cookie": cookie})
    if status != 200 or not isinstance(body, dict):
        return False, 0
    online = {u.get("username") for u in body.get("users", []) if u.get("online")}
    return names <= online, len(online & names)


async def run(runner: Runner) -> dict[str, Any]:
    o = runner.opts
    names = usernames("u", o.n)
    out: dict[str, Any] = {
        "n": o.n,
        **setup_fields(o),
        "compress_offered": o.compress,
        "policy": policy(o),
        "app_args": list(o.app_arg),
    }
    if "app" not in o.targets:
        return out
    seeder = Seeder(names)
    async with runner.deployment("app", seed=seeder) as dep:
        assert isinstance(dep, AppDeployment)
        out.update(await restart(runner, dep, seeder, names))
    rep = out["attempts_per_view"]
    runner.log(
        f"  restart: every client fresh after {out['last_fresh_s']} s, /api/users "
        f"all online after {out['seconds']} s; lost {out['lost']}; "
        f"attempts per client max {rep['max']}"
    )
    return out


async def restart(
    runner: Runner, dep: AppDeployment, seeder: Seeder, names: list[str]
) -> dict[str, Any]:
    """Connect every client, restart the app, wait until every client is back."""
    o, n = runner.opts, len(names)
    r = await open_views(
        runner,
        dep,
        seeder.headers(names),
        names,
        "views",
        view_options(o, policy(o)),
        timeout=o.storm_timeout,
    )
    settled = await wait_settled(runner, "views", timeout=o.storm_timeout)
    runner.log(
        f"  {r['open']}/{n} clients connected, settled={settled['settled']}; restarting the app"
    )
    await asyncio.sleep(0.5 if o.quick else 2.0)
    times = await dep.restart()
    t0 = times["t_term"]
    runner.log(
        f"  app down for {(times['t_exit'] - t0) / 1e9:.2f} s, ready again after "
        f"{(times['t_ready'] - t0) / 1e9:.2f} s"
    )
    deadline = time.monotonic() + o.reconnect_timeout
    c = await wait_fresh(runner, n, t0, deadline)
    all_fresh = c.get("fresh", 0) >= n
    t_api, api_online = 0, 0
    if all_fresh:
        t_api, api_online = await wait_api(
            dep.servers[0].url, seeder.cookies[names[0]], set(names), deadline
        )
    settled = await wait_settled(runner, "views", timeout=60.0)
    rep = await report(runner, "views", names)
    total = (t_api - t0) / 1e9 if t_api else None
    return {
        "connected_before": r["open"],
        "errors_before": r["errors"],
        "down_s": round((times["t_exit"] - t0) / 1e9, 3),
        "ready_s": round((times["t_ready"] - t0) / 1e9, 3),
        "fresh": c.get("fresh", 0),
        "all_fresh": all_fresh,
        "last_fresh_s": round((c["t_last_fresh"] - t0) / 1e9, 3) if c.get("t_last_fresh") else None,
        "api_all_online_s": round(total, 3) if total else None,
        "api_online_at_end": api_online,
        "seconds": round(total, 3) if total else None,
        "server_cpu_since_restart_s": round(dep.cpu(), 2),
        "settled": settled["settled"],
        **rep,
    }


async def wait_fresh(runner: Runner, n: int, since: int, deadline: float) -> dict[str, Any]:
    """Until ``n`` views have a snapshot on a connection opened after ``since`` (or the
    deadline): the views' counts at that moment."""
    c: dict[str, Any] = {}
    while time.monotonic() < deadline:
        c = await counts(runner, "views", since=since)
        if c["fresh"] >= n:
            break
        await asyncio.sleep(0.1)
    return c


async def wait_api(url: str, cookie: str, names: set[str], deadline: float) -> tuple[int, int]:
    """Until ``/api/users`` shows every one of ``names`` online (or the deadline): the time
    it did (0: never) and how many it showed online last."""
    api_online = 0
    while time.monotonic() < deadline:
        ok, api_online = await api_all_online(url, cookie, names)
        if ok:
            return time.time_ns(), api_online
        await asyncio.sleep(0.1)
    return 0, api_online


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    r = results["scenarios"].get("reconnect", {})
    if "lost" not in r:
        return []
    s = r.get("seconds")
    return [
        target(
            f"restart with {r['n']} distinct clients: fresh snapshots and /api/users true",
            s,
            "<= 15 s, nothing lost",
            s is not None and s <= 15 and r["lost"] == 0,
            f"every client fresh after {r['last_fresh_s']} s; lost {r['lost']}",
        )
    ]


def render(results: dict[str, Any]) -> list[str]:
    r = results["scenarios"].get("reconnect", {})
    if "lost" not in r:
        return []
    return [
        f"## Restart with N={r['n']} distinct page-like clients ({setup(r)}; app "
        f"args {' '.join(r['app_args']) or 'none'})",
        "",
        "Seconds from the SIGTERM. Clients reconnect like the page: full-jitter "
        f"backoff (base {r['policy']['base_s']} s, cap {r['policy']['cap_s']} s), "
        f"at least random 0-{r['policy']['first_s']} s after a 1001; before each "
        f"attempt GET {r['policy']['probe'] or '(nothing)'}.",
        "",
        "| processes exited | ready again | every client has a fresh snapshot | "
        "/api/users shows everyone online | lost | attempts per client mean / max | "
        "refused attempts | probes (failed) | snapshot bytes on the wire p50 | "
        "bytes per client mean | server CPU s since the restart |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {fmt(r['down_s'])} | {fmt(r['ready_s'])} | {fmt(r['last_fresh_s'])} | "
        f"**{fmt(r['seconds'])}** | {r['lost']} | {pair(r['attempts_per_view'])} | "
        f"{fmt(r['refused'])} | {fmt(r['probes'])} ({fmt(r['probe_failures'])}) | "
        f"{fmt(r['snapshot_wire_bytes']['p50'])} | "
        f"{fmt(r['bytes_per_view']['mean'])} | "
        f"{fmt(r['server_cpu_since_restart_s'])} |",
        "",
    ]
