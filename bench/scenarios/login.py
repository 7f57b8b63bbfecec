"""Scenario ``login``: logins/s against the app at its bcrypt cost, beside bare
``bcrypt.checkpw`` at the same cost in one process per core."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING, Any

from bench.metrics import bcrypt_checks, ratio, summary_ms
from bench.scenarios.cells import fmt
from bench.scenarios.common import target
from bench.servers import AppDeployment

if TYPE_CHECKING:
    from bench.runner import Runner


async def run(runner: Runner) -> dict[str, Any]:
    """Logins/s at the app's bcrypt cost against bare bcrypt on every core."""
    o = runner.opts
    cores = os.cpu_count() or 1
    out: dict[str, Any] = {
        "rounds": o.login_rounds,
        "seconds": o.login_seconds,
        "cores": cores,
        "concurrency": o.login_concurrency,
    }
    runner.log(f"  bare bcrypt cost {o.login_rounds} on {cores} processes")
    out["bare_checks_per_s"] = round(
        await bare_checks(cores, o.login_rounds, o.login_seconds) / o.login_seconds, 2
    )
    if "app" in o.targets:
        async with runner.deployment("app", bcrypt_rounds=o.login_rounds) as dep:
            assert isinstance(dep, AppDeployment)
            out["app"] = await app_logins(dep, o.login_seconds, o.login_concurrency)
            out["ratio_to_bare"] = ratio(out["app"]["logins_per_s"], out["bare_checks_per_s"])
            runner.log(
                f"  app: {out['app']['logins_per_s']} logins/s at cost "
                f"{o.login_rounds}; bare bcrypt {out['bare_checks_per_s']} checks/s"
            )
    return out


async def bare_checks(cores: int, rounds: int, seconds: float) -> float:
    """``bcrypt.checkpw`` calls done in ``seconds`` by one process per core."""
    import bcrypt

    hashed = bcrypt.hashpw(b"bench-password", bcrypt.gensalt(rounds))
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(cores, mp_context=multiprocessing.get_context("spawn")) as pool:
        start = time.time() + 2.0  # every process has started by then
        counts = await asyncio.gather(
            *(
                loop.run_in_executor(pool, bcrypt_checks, hashed, start, seconds)
                for _ in range(cores)
            )
        )
    return sum(counts)


async def app_logins(dep: AppDeployment, seconds: float, concurrency: int) -> dict[str, Any]:
    """``concurrency`` clients POST /login in a loop for ``seconds``."""
    from presence_app.client import PresenceClient

    await dep._signup("login-user")
    url = dep.servers[0].url
    latencies: list[float] = []
    failures = 0
    stop_at = time.monotonic() + seconds
    cpu0 = dep.cpu()

    async def worker() -> None:
        nonlocal failures
        client = PresenceClient(url)
        await client.xsrf()
        while time.monotonic() < stop_at:
            t = time.monotonic()
            response = await client.login("login-user", "bench-password", check=False)
            if response.code == 302:
                latencies.append((time.monotonic() - t) * 1e3)
            else:
                failures += 1

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.monotonic() - t0
    return {
        "logins": len(latencies),
        "failures": failures,
        "logins_per_s": round(len(latencies) / elapsed, 2),
        "latency_ms": summary_ms(latencies),
        "server_cpu_s": round(dep.cpu() - cpu0, 2),
        "elapsed_s": round(elapsed, 2),
    }


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    login = results["scenarios"].get("login", {})
    if "app" not in login:
        return []
    return [
        target(
            f"logins/s at cost {login['rounds']} vs bare bcrypt",
            login["ratio_to_bare"],
            "(no numeric target)",
            None,
            f"{login['app']['logins_per_s']} vs {login['bare_checks_per_s']} checks/s",
        )
    ]


def render(results: dict[str, Any]) -> list[str]:
    login = results["scenarios"].get("login")
    if not login or "error" in login:
        return []
    lines = [
        f"## Login throughput (bcrypt cost {login['rounds']}, {login['cores']} cores, "
        f"{login['concurrency']} concurrent clients, {login['seconds']} s)",
        "",
        "| | per second | latency p50 / p95 ms |",
        "| --- | --- | --- |",
        f"| bare bcrypt.checkpw, one process per core | {fmt(login['bare_checks_per_s'])} | |",
    ]
    if "app" in login:
        a = login["app"]
        lines.append(
            f"| app POST /login | {fmt(a['logins_per_s'])} | "
            f"{fmt(a['latency_ms']['p50'])} / {fmt(a['latency_ms']['p95'])} |"
        )
        lines.append(f"| ratio | {fmt(login['ratio_to_bare'])} | |")
    lines.append("")
    return lines
