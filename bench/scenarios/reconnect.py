"""Scenario ``reconnect``: N distinct page-like clients are connected; every app process is
restarted (SIGTERM, started again on the same port, database and cookie secret); the clients
reconnect like the page (static/js/connection.js): full-jitter exponential backoff (base
500 ms, cap 15 s), at least random 0-2 s after a 1001; before each attempt a GET of
``/api/session`` (the page's 401 probe; ``--reconnect-probe ''`` leaves it out); refused
upgrades are retried.
Measured: seconds from the SIGTERM until every client has a fresh snapshot *and*
``/api/users`` shows everyone online (issue 8's target: 15 s at N=10,000)."""
from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.scenarios.common import (counts, get_json, open_views, report, view_options,
                                    wait_settled)
from bench.users import Seeder, usernames


def policy(opts: Any) -> dict[str, Any]:
    return {"first_s": opts.reconnect_first, "base_s": opts.backoff_base,
            "cap_s": opts.backoff_cap, "stable_s": 10.0, "timeout_s": 30.0,
            "probe": opts.reconnect_probe}


async def api_all_online(url: str, cookie: str, names: set[str]) -> tuple[bool, int]:
    status, body = await asyncio.to_thread(get_json, url + "/api/users", {"Cookie": cookie})
    if status != 200 or not isinstance(body, dict):
        return False, 0
    online = {u.get("username") for u in body.get("users", []) if u.get("online")}
    return names <= online, len(online & names)


async def run(runner: Any) -> dict[str, Any]:
    o = runner.opts
    n = o.n
    names = usernames("u", n)
    out: dict[str, Any] = {"n": n, "processes": o.app_processes, "broker": o.broker,
                           "database": o.database, "compress_offered": o.compress,
                           "policy": policy(o), "app_args": list(o.app_arg)}
    if "app" not in o.targets:
        return out
    seeder = Seeder(names)
    async with runner.deployment("app", seed=seeder) as dep:
        r = await open_views(runner, dep, seeder.headers(names), names, "views",
                             view_options(o, policy(o)), timeout=o.storm_timeout)
        settled = await wait_settled(runner, "views", timeout=o.storm_timeout)
        runner.log(f"  {r['open']}/{n} clients connected, settled={settled['settled']}; "
                   "restarting the app")
        await asyncio.sleep(0.5 if o.quick else 2.0)
        times = await dep.restart()
        t0 = times["t_term"]
        runner.log(f"  app down for {(times['t_exit'] - t0) / 1e9:.2f} s, ready again after "
                   f"{(times['t_ready'] - t0) / 1e9:.2f} s")
        deadline = time.monotonic() + o.reconnect_timeout
        c: dict[str, Any] = {}
        while time.monotonic() < deadline:
            c = await counts(runner, "views", since=t0)
            if c["fresh"] >= n:
                break
            await asyncio.sleep(0.1)
        all_fresh = c.get("fresh", 0) >= n
        t_api, api_online = 0, 0
        url, cookie, wanted = dep.servers[0].url, seeder.cookies[names[0]], set(names)
        while all_fresh and time.monotonic() < deadline:
            ok, api_online = await api_all_online(url, cookie, wanted)
            if ok:
                t_api = time.time_ns()
                break
            await asyncio.sleep(0.1)
        settled = await wait_settled(runner, "views", timeout=60.0)
        rep = await report(runner, "views", names)
        server_cpu = dep.cpu()
    total = (t_api - t0) / 1e9 if t_api else None
    out.update({
        "connected_before": r["open"], "errors_before": r["errors"],
        "down_s": round((times["t_exit"] - t0) / 1e9, 3),
        "ready_s": round((times["t_ready"] - t0) / 1e9, 3),
        "fresh": c.get("fresh", 0), "all_fresh": all_fresh,
        "last_fresh_s": round((c["t_last_fresh"] - t0) / 1e9, 3) if c.get("t_last_fresh")
        else None,
        "api_all_online_s": round(total, 3) if total else None,
        "api_online_at_end": api_online, "seconds": round(total, 3) if total else None,
        "server_cpu_since_restart_s": round(server_cpu, 2), "settled": settled["settled"],
        **rep,
    })
    runner.log(f"  restart: every client fresh after {out['last_fresh_s']} s, /api/users "
               f"all online after {out['seconds']} s; lost {out['lost']}; "
               f"attempts per client max {rep['attempts_per_view']['max']}")
    return out
