"""Scenario ``slow``: one client stops reading while events flow. The others must not notice;
the app must drop it once its send buffer passes the limit (the reference never does)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from bench.metrics import ratio
from bench.scenarios import churn, fanout
from bench.scenarios.cells import fmt
from bench.scenarios.common import KINDS, target
from bench.servers import Deployment, established_to, send_queue

if TYPE_CHECKING:
    from bench.runner import Runner


async def run(runner: Runner) -> dict[str, Any]:
    """One client stops reading while events flow: the others must not notice; the app
    must drop it once its send buffer passes the limit."""
    o = runner.opts
    n, movers = o.slow_n, max(o.movers // 2, 5)
    out: dict[str, Any] = {
        "n": n,
        "movers": movers,
        "stall_max_s": o.slow_seconds,
        "app_send_buffer_limit": o.slow_limit or "app default",
    }
    stall = o.slow_seconds
    for kind in runner.targets():
        extra = ["--ping-interval", "300"]  # no ping timeout during the test
        if kind == "app" and o.slow_limit:
            extra += ["--send-buffer-limit", str(o.slow_limit)]
        async with runner.deployment(kind, extra_args=extra) as dep:
            out[kind] = await stall_one(runner, dep, n, movers, kind, stall)
        if kind == "app" and out[kind]["dropped"]:
            # The reference never drops a slow client: stall it as long as the app took.
            stall = min(stall, out[kind]["dropped_after_s"] + 5.0)
    return out


class Stalled:
    """The stalled client as the server's side of the loopback shows it: is the connection
    still there, how many bytes wait in the kernel's send queue for it."""

    def __init__(self, runner: Runner, dep: Deployment, kind: str, port: int) -> None:
        self.runner, self.dep, self.kind, self.port = runner, dep, kind, port
        self.server_port = dep.targets[0][1]
        self.started = time.monotonic()
        self.rss0 = dep.rss()
        self.samples: list[dict[str, Any]] = []
        self.dropped_after_s: float | None = None

    async def sample(self) -> bool:
        """One sample (alive, send queue, server RSS); True while the client is connected."""
        alive = bool(await asyncio.to_thread(established_to, self.server_port, [self.port]))
        queue = await asyncio.to_thread(send_queue, self.server_port, self.port) if alive else 0
        elapsed = round(time.monotonic() - self.started, 2)
        self.samples.append(
            {
                "t": elapsed,
                "rss_mib": round(self.dep.rss() / 2**20, 1),
                "kernel_send_q": queue,
                "alive": alive,
            }
        )
        if not alive and self.dropped_after_s is None:
            self.dropped_after_s = elapsed
            self.runner.log(f"  {self.kind}: the stalled client was dropped after {elapsed:.1f} s")
        return alive

    async def watch(self, task: asyncio.Future[Any]) -> None:
        """Sample while a churn phase runs; stop the churn a second after the drop."""
        lg = self.runner.loadgen
        while not task.done():
            alive = await self.sample()
            dropped = self.dropped_after_s  # set by sample() once the client is gone
            if not alive and dropped is not None and time.monotonic() - self.started > dropped + 1:
                await lg.call(lg.mover, "stop_churn")
            await asyncio.sleep(0.5)


async def stall_one(
    runner: Runner, dep: Deployment, n: int, movers: int, kind: str, stall: float
) -> dict[str, Any]:
    """Baseline fan-out probe; a client stops reading; churn fills its buffers until the
    kernel's send queue stops growing (the server now queues in user space); the same
    probe again with the stalled client holding everything; churn on until the server
    drops it (or ``stall`` s pass)."""
    lg, o = runner.loadgen, runner.opts
    k = o.k if o.quick else max(min(o.k, 10), 3)
    await runner.open_observers(dep, n)
    await runner.settle()
    baseline = await fanout.cycles(runner, dep, n, k, f"{kind} probe before the stall")
    stalled = await stop_reading(runner, dep, kind)
    during, lost, events = await fill(runner, stalled, n, movers, k, stall)
    if during is None:  # dropped (or out of time) before the kernel buffer filled
        during = await fanout.cycles(runner, dep, n, k, f"{kind} probe after the stall")
        during["kernel_send_q"] = None
    rss1 = max([dep.rss()] + [int(x["rss_mib"] * 2**20) for x in stalled.samples])
    resumed = await lg.call(
        lg.mover, "resume", group="stall", wait=5.0 if stalled.dropped_after_s is not None else 1.0
    )
    lost += during["lost"] + baseline["lost"]
    b95, d95 = baseline["last_observer_ms"]["p95"], during["last_observer_ms"]["p95"]
    samples = stalled.samples
    result = {
        "baseline_probe": brief(baseline),
        "stalled_probe": brief(during),
        "stall_limit_s": stall,
        "churn_events": events,
        "dropped": stalled.dropped_after_s is not None,
        "dropped_after_s": stalled.dropped_after_s,
        "kernel_send_q_max": max((x["kernel_send_q"] for x in samples), default=0),
        "rss_growth_mib": round((rss1 - stalled.rss0) / 2**20, 1),
        "stalled_client_after_resume": resumed,
        "others_p95_before_ms": b95,
        "others_p95_during_ms": d95,
        "others_p95_ratio": ratio(d95, b95),
        "others_lost": lost,
        "samples": samples[:: max(len(samples) // 40, 1)],
    }
    runner.log(
        f"  {kind}: dropped={result['dropped']} after {result['dropped_after_s']} s; "
        f"others' fan-out p95 {b95} -> {d95} ms; lost {lost}; "
        f"RSS +{result['rss_growth_mib']} MiB"
    )
    return result


async def stop_reading(runner: Runner, dep: Deployment, kind: str) -> Stalled:
    """One more client (a 4 KiB receive buffer) connects, then stops reading."""
    lg = runner.loadgen
    s = await lg.call(
        lg.mover,
        "open",
        group="stall",
        targets=dep.targets[:1],
        count=1,
        headers=[await dep.observer_headers()],
        concurrency=1,
        timeout=30.0,
        record=False,
        rcvbuf=4096,
    )
    if not s["open"]:
        raise RuntimeError(f"the stalled client could not connect: {s['errors']}")
    paused = await lg.call(lg.mover, "pause", group="stall")
    return Stalled(runner, dep, kind, paused["ports"][0])


async def fill(
    runner: Runner, stalled: Stalled, n: int, movers: int, k: int, stall: float
) -> tuple[dict[str, Any] | None, int, int]:
    """Churn in chunks until the client is dropped or ``stall`` s pass; once its kernel send
    queue stops growing, probe the others' fan-out. Returns (that probe or None, deliveries
    lost, events)."""
    dep, kind = stalled.dep, stalled.kind
    chunk = 2.0 if runner.opts.quick else 5.0
    during = None
    lost = events = 0
    top_queue = 0
    while time.monotonic() - stalled.started < stall and stalled.dropped_after_s is None:
        c = await churn.phase(
            runner,
            dep,
            n,
            movers,
            chunk,
            f"{kind} stall {time.monotonic() - stalled.started:.0f} s, filling",
            stalled.watch,
        )
        lost += c["lost"]
        events += c["events"]
        if not await stalled.sample():
            break
        queue = stalled.samples[-1]["kernel_send_q"]
        if during is None and top_queue and queue <= top_queue * 1.01:
            runner.log(
                f"  {kind}: the kernel send queue is full ({queue} bytes); probing the others"
            )
            during = await fanout.cycles(runner, dep, n, k, f"{kind} probe during the stall")
            during["kernel_send_q"] = queue
            during["rss_growth_mib"] = round((dep.rss() - stalled.rss0) / 2**20, 1)
            await stalled.sample()
        top_queue = max(top_queue, queue)
    return during, lost, events


def brief(r: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in r.items() if k != "event_list"}


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    slow = results["scenarios"].get("slow", {})
    if "app" not in slow:
        return []
    s = slow["app"]
    before, during = s["others_p95_before_ms"], s["others_p95_during_ms"]
    unaffected = before is not None and during is not None and during <= 1.3 * before + 2
    ok = s["dropped"] and s["others_lost"] == 0 and unaffected
    return [
        target(
            "stalled client dropped, others unaffected",
            s["dropped"],
            "dropped; others' fan-out p95 <= 1.3x (+2 ms), none lost",
            ok,
            f"dropped after {s['dropped_after_s']} s; others' p95 {before} -> {during} "
            f"ms; lost {s['others_lost']}; server RSS +{s['rss_growth_mib']} MiB",
        )
    ]


def render(results: dict[str, Any]) -> list[str]:
    slow = results["scenarios"].get("slow")
    if not slow or "error" in slow:
        return []
    lines = [
        f"## Slow client ({slow['n']} observers; one more client stops reading; "
        f"{slow['movers']} movers churn to fill its buffers; app send-buffer limit: "
        f"{slow['app_send_buffer_limit']})",
        "",
        "Others' fan-out: one mover's events to the other observers, measured before "
        "the stall and again once the stalled socket's kernel send queue is full.",
        "",
        "| server | dropped after s | max kernel send queue bytes | others' fan-out "
        "p95 before / during ms | others lost | server RSS growth MiB | bytes the "
        "client read after resuming |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind in KINDS:
        if kind in slow:
            s = slow[kind]
            dropped = (
                fmt(s["dropped_after_s"])
                if s["dropped"]
                else f"not dropped in {fmt(s['stall_limit_s'])} s"
            )
            lines.append(
                f"| {kind} | {dropped} | {fmt(s['kernel_send_q_max'])} | "
                f"{fmt(s['others_p95_before_ms'])} / {fmt(s['others_p95_during_ms'])} | "
                f"{s['others_lost']} | {fmt(s['rss_growth_mib'])} | "
                f"{fmt(s['stalled_client_after_resume']['bytes_read_after_resume'])} |"
            )
    lines.append("")
    return lines
