"""Scenario runner: starts the app (and the reference server), drives them with the load
generator, stops everything it started, writes JSON and a Markdown table.

    python -m bench.run --all                      # the full run (N=10,000)
    python -m bench.run --all --quick              # a smoke run: small N, under 2 minutes
    python -m bench.run --scenario fanout --n 10000 --k 10
    python -m bench.run --all --app-processes 2 --broker redis

Scenarios: connect (connect storm and idle memory), fanout, churn, crossproc, login, slow.
Results: bench/results/<time>-<label>.json and .md (gitignored); see BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import multiprocessing
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, AsyncIterator

import psutil

from bench.loadgen import LoadGen, raise_nofile_limit
from bench.metrics import analyse, bcrypt_checks, merge_events, ratio, summary_ms
from bench.scenarios import (EXTRA_SCENARIOS, HANDLED, add_arguments, finish_arguments,
                             run_extra)
from bench.scenarios import render as render_extra
from bench.scenarios import targets as extra_targets
from bench.servers import (ROOT, AppDeployment, Deployment, Probe, ReferenceDeployment,
                           busy_cpu, established_to, send_queue)

SCENARIOS = ["connect", "fanout", "churn", "crossproc", "login", "slow"] + EXTRA_SCENARIOS
KINDS = ("app", "reference", "picows")  # ratios stay relative to "reference" (websockets)
RESULTS = ROOT / "bench" / "results"
MOVER = "mover-0"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--scenario", action="append", choices=SCENARIOS + ["memory"],
                   help="scenario to run (repeatable; 'memory' is measured by 'connect')")
    p.add_argument("--all", action="store_true", help="run every scenario")
    p.add_argument("--quick", action="store_true",
                   help="small sizes and short phases (a smoke run, under 2 minutes)")
    p.add_argument("--n", type=int, help="sockets (observers) per scenario; quick: 200, "
                   "else 10000")
    p.add_argument("--sweep", help="fan-out sizes below N, comma-separated "
                   "(default: 1000,2500,5000; quick: 100)")
    p.add_argument("--k", type=int, help="fan-out cycles (each: one online and one offline "
                   "event) after one warm-up cycle; quick: 3, else 10")
    p.add_argument("--movers", type=int, help="churn: movers at once; quick: 10, else 100")
    p.add_argument("--churn-n", type=int, help="churn: observers; quick: N, else 1000")
    p.add_argument("--churn-seconds", type=float, help="churn duration; quick: 2, else 10")
    p.add_argument("--cross", default=None,
                   help="crossproc: app process counts sharing Redis (default 2,4; quick: 2)")
    p.add_argument("--targets", default="app,reference,picows",
                   help="what to run against: app, reference (websockets), picows")
    p.add_argument("--app-processes", type=int, default=1,
                   help="app processes on separate ports (observers spread over them)")
    p.add_argument("--broker", choices=["memory", "redis"], default="memory")
    p.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--pg-dsn", default="postgresql://postgres@127.0.0.1:5432",
                   help="PostgreSQL server; a database is created for the run and dropped")
    p.add_argument("--app-arg", action="append", default=[],
                   help="extra argument for run.py (repeatable: --app-arg=--log-level=WARNING)")
    p.add_argument("--gen-processes", type=int, default=0,
                   help="observer load generator processes (0: one per CPU); "
                        "plus one process for movers")
    p.add_argument("--concurrency", type=int, default=100,
                   help="handshakes in flight (all generator processes together); Tornado's "
                        "listen backlog is 128, beyond it SYNs are dropped and retried after 1 s")
    p.add_argument("--login-seconds", type=float, help="login: duration; quick: 2, else 10")
    p.add_argument("--login-concurrency", type=int, default=4)
    p.add_argument("--login-rounds", type=int, default=12, help="login: app bcrypt cost")
    p.add_argument("--slow-n", type=int, help="slow: observers; quick: 100, else 200")
    p.add_argument("--slow-seconds", type=float,
                   help="slow: longest stall phase (the baseline phase: half of it, at most "
                        "5 s); quick: 4, else 90")
    p.add_argument("--slow-limit", type=int, default=None,
                   help="slow: app --send-buffer-limit in bytes (default: the app's own "
                        "default; quick: 65536)")
    p.add_argument("--quiet-wait", type=float, default=None,
                   help="before each scenario, wait up to this many seconds until other "
                        "processes use less than --quiet-cores CPUs (default: 0 quick, else 600)")
    p.add_argument("--quiet-cores", type=float, default=0.3)
    p.add_argument("--retries", type=int, default=None,
                   help="run a scenario again (up to this many times) when other processes used "
                        "more than --quiet-cores CPUs on average during one of its measured "
                        "phases (default: 0 quick, else 2)")
    p.add_argument("--no-gc-stats", dest="gc_stats", action="store_false",
                   help="run the servers without timing their garbage-collector passes "
                        "(bench.gcprobe wraps run.py and the reference server by default)")
    p.add_argument("--profile", type=Path, default=None,
                   help="directory: record every app process with py-spy (collapsed stacks)")
    p.add_argument("--out", type=Path, help="JSON output path (default bench/results/...)")
    p.add_argument("--label", default="", help="label in file names and the report")
    p.add_argument("--keep-workdir", action="store_true", help="keep server logs")
    add_arguments(p)
    args = p.parse_args(argv)
    if not args.all and not args.scenario:
        p.error("give --scenario NAME (repeatable) or --all")
    scenarios = SCENARIOS if args.all else []
    for name in args.scenario or []:
        name = "connect" if name == "memory" else name
        if name not in scenarios:
            scenarios.append(name)
    args.scenarios = scenarios
    q = args.quick
    args.n = args.n or (200 if q else 10000)
    sweep = args.sweep if args.sweep is not None else ("100" if q else "1000,2500,5000")
    args.sizes = sorted({int(x) for x in sweep.split(",") if x.strip() and int(x) < args.n}
                        | {args.n})
    args.k = args.k or (3 if q else 10)
    args.movers = args.movers or (10 if q else 100)
    args.churn_n = args.churn_n or (args.n if q else min(args.n, 1000))
    args.churn_seconds = args.churn_seconds or (2.0 if q else 10.0)
    args.cross = [int(x) for x in (args.cross or ("2" if q else "2,4")).split(",") if x]
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    args.login_seconds = args.login_seconds or (2.0 if q else 10.0)
    args.slow_n = args.slow_n or (min(args.n, 100) if q else 200)
    args.slow_seconds = args.slow_seconds or (4.0 if q else 90.0)
    if args.quiet_wait is None:
        args.quiet_wait = 0.0 if q else 600.0
    if args.retries is None:
        args.retries = 0 if q else 2
    if args.slow_limit is None and q:
        args.slow_limit = 65536
    if args.app_processes > 1 and args.broker != "redis":
        p.error("--app-processes > 1 needs --broker redis")
    finish_arguments(args)
    return args


def machine_info() -> dict[str, Any]:
    import psutil
    import tornado
    import websockets
    model = platform.processor()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "cpu_model": model, "cpus": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(), "python": platform.python_version(),
        "tornado": tornado.version, "websockets": websockets.__version__,
        "picows": _version("picows"),
    }


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def git_dirty() -> list[str]:
    """Modified tracked files outside bench/: the code that ran may differ from the commit."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                             capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line[3:] for line in out.splitlines() if not line[3:].startswith("bench/")]


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


class Runner:
    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        self.started = time.monotonic()
        self.workdir = Path(tempfile.mkdtemp(prefix="presence-bench-"))
        self.lg: LoadGen | None = None
        self._progress: dict[int, tuple[int, int]] = {}
        self._last_progress = 0.0

    # -- plumbing -------------------------------------------------------------------------
    def log(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:7.1f}s] {message}", flush=True)

    def on_progress(self, note: dict[str, Any]) -> None:
        if note.get("progress") != "open":
            return
        self._progress[note["worker"]] = (note["open"], note["of"])
        if time.monotonic() - self._last_progress >= 2.0:
            self._last_progress = time.monotonic()
            done = sum(v[0] for v in self._progress.values())
            total = sum(v[1] for v in self._progress.values())
            self.log(f"  ... {done}/{total} sockets open")

    @contextlib.asynccontextmanager
    async def deployment(self, kind: str, **kwargs: Any) -> AsyncIterator[Deployment]:
        o = self.opts
        dep: Deployment
        if kind == "app":
            settings = {"processes": o.app_processes, "broker": o.broker,
                        "database": o.database, "redis_url": o.redis_url, "pg_dsn": o.pg_dsn,
                        "gc_stats": o.gc_stats,
                        "extra_args": list(o.app_arg) + list(kwargs.pop("extra_args", []))}
            settings.update(kwargs)
            dep = AppDeployment(self.workdir, **settings)
        else:
            dep = ReferenceDeployment(self.workdir, extra_args=kwargs.get("extra_args"),
                                      gc_stats=o.gc_stats, kind=kind)
        self.log(f"starting {kind} ({dep.label})")  # type: ignore[attr-defined]
        spies: list[subprocess.Popen[bytes]] = []
        try:
            await dep.start()  # type: ignore[attr-defined]
            if o.profile and kind == "app":
                spies = self.start_profilers(dep)
            yield dep
        finally:
            for spy in spies:
                spy.send_signal(signal.SIGINT)
            for spy in spies:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    spy.wait(30)
            self._progress = {}
            if self.lg is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.reset_generators(), 30)
            await dep.stop()
            self.log(f"stopped {kind}")

    async def wait_quiet(self) -> dict[str, Any]:
        """Wait until the rest of the machine is (nearly) idle: a benchmark on 2 shared
        cores measures whoever else is running too."""
        o = self.opts
        deadline = time.monotonic() + o.quiet_wait
        waited = time.monotonic()
        announced = False
        while True:
            me = psutil.Process()
            procs = [me] + [psutil.Process(p.pid) for p in (self.lg.procs if self.lg else [])]

            def ours() -> float:
                total = 0.0
                for proc in procs:
                    with contextlib.suppress(psutil.Error):
                        t = proc.cpu_times()
                        total += t.user + t.system
                return total
            window = 2.0 if o.quiet_wait else 0.5
            b0, o0 = busy_cpu(), ours()
            await asyncio.sleep(window)
            other = max(busy_cpu() - b0 - (ours() - o0), 0.0) / window  # in CPUs
            if other < o.quiet_cores or time.monotonic() >= deadline:
                spent = time.monotonic() - waited - window
                return {"other_cores": round(other, 2), "waited_s": round(spent, 1),
                        "loadavg": os.getloadavg()}
            if not announced:
                self.log(f"  the machine is busy ({other:.2f} CPUs used by other processes); "
                         f"waiting up to {o.quiet_wait:.0f} s for it to calm down")
                announced = True

    def start_profilers(self, dep: Deployment) -> list[subprocess.Popen[bytes]]:
        spy = shutil.which("py-spy")
        if not spy:
            self.log("  --profile: py-spy is not installed (pip install py-spy)")
            return []
        self.opts.profile.mkdir(parents=True, exist_ok=True)
        self._profiles = getattr(self, "_profiles", 0) + 1
        procs = []
        for server in dep.servers:
            out = self.opts.profile / f"{self._profiles:02d}-{server.name}-{server.pid}.txt"
            procs.append(subprocess.Popen(
                [spy, "record", "-p", str(server.pid), "-o", str(out), "--format", "raw",
                 "-r", "250"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            self.log(f"  profiling {server.name} into {out}")
        return procs

    async def settle(self) -> None:
        """A pause after opening sockets, before measuring."""
        await asyncio.sleep(0.3 if self.opts.quick else 1.0)

    async def reset_generators(self) -> None:
        assert self.lg is not None
        await asyncio.gather(*(self.lg.call(i, "reset") for i in range(len(self.lg.pipes))))

    async def gen_cpu(self) -> float:
        assert self.lg is not None
        return sum(await self.lg.cpu())

    def targets(self) -> list[str]:
        return [t for t in KINDS if t in self.opts.targets]

    async def open_observers(self, dep: Deployment, count: int,
                             group: str = "obs") -> dict[str, Any]:
        assert self.lg is not None
        headers = await dep.observer_headers()
        self.log(f"  opening {count} observer sockets")
        result = await self.lg.open_observers(group, dep.targets, count, headers,
                                              self.opts.concurrency, timeout=60.0)
        if result["errors"]:
            self.log(f"  connect errors: {result['errors']}")
        return result

    # -- scenarios ------------------------------------------------------------------------
    async def sc_connect(self) -> dict[str, Any]:
        """Connect storm (N sockets: seconds to all connected, errors) and idle memory."""
        n = self.opts.n
        out: dict[str, Any] = {"n": n, "concurrency": self.opts.concurrency}
        for kind in self.targets():
            async with self.deployment(kind) as dep:
                await dep.observer_headers()
                await asyncio.sleep(0.5 if self.opts.quick else 2.0)
                rss0 = dep.rss()
                async with Probe(dep, self.gen_cpu) as probe:
                    r = await self.open_observers(dep, n)
                seconds = (r["t_last_open"] - r["t_first_send"]) / 1e9
                self.log(f"  {kind}: {r['open']}/{n} open in {seconds:.2f} s")
                # Idle: let timers, batched writes and the allocator settle.
                await asyncio.sleep(1.0 if self.opts.quick else 5.0)
                rss1 = dep.rss()
                server_count = await dep.sockets()
                t = time.monotonic()
                assert self.lg is not None
                closed = await self.lg.call_observers("close", group="obs", timeout=30.0)
                close_s = time.monotonic() - t
                slow_handshakes = sum(1 for w in r["handshake_ms_by_worker"]
                                      if (w.get("max") or 0) > 1000)
                out[kind] = {
                    "open": r["open"], "errors": sum(r["errors"].values()),
                    "error_kinds": r["errors"], "seconds": round(seconds, 3),
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
                self.log(f"  {kind}: {out[kind]['kib_per_connection']} KiB per idle "
                         f"connection, server CPU {out[kind]['server_cpu_s']} s, generator "
                         f"CPU {out[kind]['generator_cpu_s']} s")
        if "app" in out and "reference" in out:
            out["ratio_seconds"] = ratio(out["app"]["seconds"], out["reference"]["seconds"])
            out["ratio_kib"] = ratio(out["app"]["kib_per_connection"],
                                     out["reference"]["kib_per_connection"])
        return out

    async def fanout_cycles(self, dep: Deployment, observers: int, k: int,
                            label: str) -> dict[str, Any]:
        """One warm-up cycle and ``k`` measured ones: the mover connects (an online event),
        every observer has it; the mover closes (offline), every observer has it."""
        assert self.lg is not None
        lg = self.lg
        mover = (await dep.mover_headers(1))[0]
        triggers: list[tuple[str, bool, int]] = []
        timeouts = 0
        measured_from = 0
        probe = Probe(dep, self.gen_cpu)
        for cycle in range(k + 1):
            if cycle == 1:
                await probe.__aenter__()
            m = await lg.call(lg.mover, "open", group="mov", targets=dep.targets[:1], count=1,
                              headers=[mover], concurrency=1, timeout=30.0, record=False)
            if not m["open"]:
                raise RuntimeError(f"the mover could not connect: {m['errors']}")
            t_on = m["t_send"][0]
            if cycle == 1:
                measured_from = t_on
            triggers.append((MOVER, True, t_on))
            waits = await lg.call_observers("wait_event", group="obs", username=MOVER,
                                            online=True, not_before=t_on, timeout=30.0)
            timeouts += sum(1 for w in waits if not w["complete"])
            await asyncio.sleep(0.05)
            c = await lg.call(lg.mover, "close", group="mov", timeout=10.0)
            triggers.append((MOVER, False, c["t_close"]))
            waits = await lg.call_observers("wait_event", group="obs", username=MOVER,
                                            online=False, not_before=c["t_close"],
                                            timeout=30.0)
            timeouts += sum(1 for w in waits if not w["complete"])
            await asyncio.sleep(0.05)
        await probe.__aexit__(None, None, None)
        parts = await lg.call_observers("events", group="obs", reset=True)
        result = analyse(merge_events(parts), observers, triggers, {MOVER},
                         skip_before=measured_from)
        events = max(result["events"], 1)
        result.update({
            "n": observers, "k": k, "wait_timeouts": timeouts,
            "server_cpu_ms_per_event": round(probe.result["server_cpu_s"] * 1e3 / events, 2),
            "generator_cpu_ms_per_event": round(probe.result["generator_cpu_s"] * 1e3 / events,
                                                2),
            "probe": probe.result,
        })
        s = result["last_observer_ms"]
        self.log(f"  {label} N={observers}: last observer p50 {s['p50']} ms, p95 {s['p95']} "
                 f"ms, max {s['max']} ms; {result['deliveries_per_s']} deliveries/s; "
                 f"lost {result['lost']}")
        return result

    async def fanout_sweep(self, dep: Deployment, sizes: list[int], k: int,
                           label: str) -> dict[str, Any]:
        results: dict[str, Any] = {}
        have = 0
        for size in sizes:
            r = await self.open_observers(dep, size - have)
            have += r["open"]
            if have < size:
                self.log(f"  only {have} of {size} observers open")
            await self.settle()
            results[str(size)] = await self.fanout_cycles(dep, have, k, label)
        return results

    async def sc_fanout(self) -> dict[str, Any]:
        o = self.opts
        out: dict[str, Any] = {"sizes": o.sizes, "k": o.k}
        for kind in self.targets():
            async with self.deployment(kind) as dep:
                out[kind] = await self.fanout_sweep(dep, o.sizes, o.k, kind)
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

    async def churn_phase(self, dep: Deployment, observers: int, movers: int, seconds: float,
                          label: str, watch: Any = None) -> dict[str, Any]:
        """``movers`` users connect, wait for their snapshot, close, and again, at once."""
        assert self.lg is not None
        lg = self.lg
        headers = await dep.mover_headers(movers)
        labels = [f"mover-{i}" for i in range(movers)]
        probe = Probe(dep, self.gen_cpu)
        await probe.__aenter__()
        task = asyncio.ensure_future(lg.call(lg.mover, "churn", group="churn",
                                             targets=dep.targets[:1], headers=headers,
                                             labels=labels, duration=seconds))
        watched = None
        if watch is not None:
            watched = await watch(task)
        r = await task
        # Let the last events reach everyone: until deliveries stop growing (at most 60 s).
        last, still = -1, 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            counts = await lg.call_observers("counts", group="obs")
            total = sum(c["deliveries"] for c in counts)
            still = still + 1 if total == last else 0
            if still >= (2 if self.opts.quick else 4):
                break
            last = total
            await asyncio.sleep(0.25)
        await probe.__aexit__(None, None, None)
        parts = await lg.call_observers("events", group="obs", reset=True)
        merged = merge_events(parts)
        result = analyse(merged, observers, r["triggers"], set(labels))
        ends = [e["t_last"] for e in result["event_list"] if e.get("t_last")]
        span = (max(ends) - r["t_start"]) / 1e9 if ends else seconds
        by_user: dict[str, dict[str, Any]] = {}
        mover_names = set(labels)
        for entry in merged.values():
            meta = entry["meta"]
            if meta.get("type") == "presence" and meta.get("username") in mover_names:
                best = by_user.get(meta["username"])
                if best is None or meta.get("version", 0) > best.get("version", 0):
                    by_user[meta["username"]] = meta
        final_wrong = sum(1 for meta in by_user.values() if meta.get("online"))
        result.update({
            "n": observers, "movers": movers, "seconds": seconds, "cycles": r["cycles"],
            "mover_errors": r["errors"], "triggers": len(r["triggers"]),
            "events_per_s": round(result["events"] / span, 1) if span else None,
            "deliveries_per_s_sustained": round(result["deliveries"] / span) if span else None,
            "movers_left_online": final_wrong, "span_s": round(span, 2),
            "server_cpu_s": probe.result["server_cpu_s"],
            "generator_cpu_s": probe.result["generator_cpu_s"], "probe": probe.result,
        })
        if watched is not None:
            result["watch"] = watched
        s = result["last_observer_ms"]
        self.log(f"  {label}: {result['events']} events in {span:.1f} s = "
                 f"{result['events_per_s']} events/s to {observers} observers; last observer "
                 f"p95 {s['p95']} ms; lost {result['lost']}")
        return result

    async def sc_churn(self) -> dict[str, Any]:
        o = self.opts
        out: dict[str, Any] = {"n": o.churn_n, "movers": o.movers, "seconds": o.churn_seconds}
        for kind in self.targets():
            async with self.deployment(kind) as dep:
                await self.open_observers(dep, o.churn_n)
                await self.settle()
                out[kind] = await self.churn_phase(dep, o.churn_n, o.movers, o.churn_seconds,
                                                   kind)
        if "app" in out and "reference" in out:
            out["ratio_events_per_s"] = ratio(out["app"]["events_per_s"],
                                              out["reference"]["events_per_s"])
        return out

    async def sc_crossproc(self) -> dict[str, Any]:
        o = self.opts
        n = o.n
        configs = [(1, "memory"), (1, "redis")] + [(p, "redis") for p in o.cross if p > 1]
        out: dict[str, Any] = {"n": n, "k": o.k, "runs": {}}
        if "app" not in o.targets:
            return out
        for processes, broker in configs:
            key = f"{processes}-{broker}"
            async with self.deployment("app", processes=processes, broker=broker) as dep:
                await self.open_observers(dep, n)
                await self.settle()
                r = await self.fanout_cycles(dep, n, o.k, f"app {key}")
                r.update({"processes": processes, "broker": broker,
                          "rss_mib": round(dep.rss() / 2**20, 1)})
                out["runs"][key] = r
        base = out["runs"].get("1-memory", {}).get("last_observer_ms", {})
        for key, r in out["runs"].items():
            r["ratio_p95_vs_1_memory"] = ratio(r["last_observer_ms"]["p95"], base.get("p95"))
            r["ratio_p50_vs_1_memory"] = ratio(r["last_observer_ms"]["p50"], base.get("p50"))
            if base.get("p50") is not None and r["last_observer_ms"]["p50"] is not None:
                r["added_p50_ms"] = round(r["last_observer_ms"]["p50"] - base["p50"], 2)
        return out

    async def sc_login(self) -> dict[str, Any]:
        """Logins/s at the app's bcrypt cost against bare bcrypt on every core."""
        import bcrypt
        o = self.opts
        cores = os.cpu_count() or 1
        out: dict[str, Any] = {"rounds": o.login_rounds, "seconds": o.login_seconds,
                               "cores": cores, "concurrency": o.login_concurrency}
        hashed = bcrypt.hashpw(b"bench-password", bcrypt.gensalt(o.login_rounds))
        self.log(f"  bare bcrypt cost {o.login_rounds} on {cores} processes")
        loop = asyncio.get_running_loop()
        with ProcessPoolExecutor(cores, mp_context=multiprocessing.get_context("spawn")) as pool:
            start = time.time() + 2.0  # every process has started by then
            counts = await asyncio.gather(*(loop.run_in_executor(
                pool, bcrypt_checks, hashed, start, o.login_seconds) for _ in range(cores)))
        out["bare_checks_per_s"] = round(sum(counts) / o.login_seconds, 2)
        if "app" in o.targets:
            async with self.deployment("app", bcrypt_rounds=o.login_rounds) as dep:
                from presence_app.client import PresenceClient
                assert isinstance(dep, AppDeployment)
                await dep._signup("login-user")
                url = dep.servers[0].url
                latencies: list[float] = []
                failures = 0
                stop_at = time.monotonic() + o.login_seconds
                cpu0 = dep.cpu()

                async def worker() -> None:
                    nonlocal failures
                    client = PresenceClient(url)
                    await client.xsrf()
                    while time.monotonic() < stop_at:
                        t = time.monotonic()
                        response = await client.login("login-user", "bench-password",
                                                      check=False)
                        if response.code == 302:
                            latencies.append((time.monotonic() - t) * 1e3)
                        else:
                            failures += 1
                t0 = time.monotonic()
                await asyncio.gather(*(worker() for _ in range(o.login_concurrency)))
                elapsed = time.monotonic() - t0
                out["app"] = {
                    "logins": len(latencies), "failures": failures,
                    "logins_per_s": round(len(latencies) / elapsed, 2),
                    "latency_ms": summary_ms(latencies), "server_cpu_s": round(dep.cpu() - cpu0, 2),
                    "elapsed_s": round(elapsed, 2),
                }
                out["ratio_to_bare"] = ratio(out["app"]["logins_per_s"], out["bare_checks_per_s"])
                self.log(f"  app: {out['app']['logins_per_s']} logins/s at cost "
                         f"{o.login_rounds}; bare bcrypt {out['bare_checks_per_s']} checks/s")
        return out

    async def sc_slow(self) -> dict[str, Any]:
        """One client stops reading while events flow: the others must not notice; the app
        must drop it once its send buffer passes the limit."""
        o = self.opts
        n, movers = o.slow_n, max(o.movers // 2, 5)
        out: dict[str, Any] = {"n": n, "movers": movers, "stall_max_s": o.slow_seconds,
                               "app_send_buffer_limit": o.slow_limit or "app default"}
        stall = o.slow_seconds
        for kind in self.targets():
            extra = ["--ping-interval", "300"]  # no ping timeout during the test
            if kind == "app" and o.slow_limit:
                extra += ["--send-buffer-limit", str(o.slow_limit)]
            async with self.deployment(kind, extra_args=extra) as dep:
                out[kind] = await self.slow_one(dep, n, movers, kind, stall)
            if kind == "app" and out[kind]["dropped"]:
                # The reference never drops a slow client: stall it as long as the app took.
                stall = min(stall, out[kind]["dropped_after_s"] + 5.0)
        return out

    async def slow_one(self, dep: Deployment, n: int, movers: int, kind: str,
                       stall: float) -> dict[str, Any]:
        """Baseline fan-out probe; a client stops reading; churn fills its buffers until the
        kernel's send queue stops growing (the server now queues in user space); the same
        probe again with the stalled client holding everything; churn on until the server
        drops it (or ``stall`` s pass)."""
        assert self.lg is not None
        lg, o = self.lg, self.opts
        k = o.k if o.quick else max(min(o.k, 10), 3)
        await self.open_observers(dep, n)
        await self.settle()
        baseline = await self.fanout_cycles(dep, n, k, f"{kind} probe before the stall")
        s = await lg.call(lg.mover, "open", group="stall", targets=dep.targets[:1], count=1,
                          headers=[await dep.observer_headers()], concurrency=1, timeout=30.0,
                          record=False, rcvbuf=4096)
        if not s["open"]:
            raise RuntimeError(f"the stalled client could not connect: {s['errors']}")
        paused = await lg.call(lg.mover, "pause", group="stall")
        stall_port, server_port = paused["ports"][0], dep.targets[0][1]
        started = time.monotonic()
        rss0 = dep.rss()
        samples: list[dict[str, Any]] = []
        state: dict[str, Any] = {"dropped_after_s": None}

        async def sample() -> bool:
            alive = bool(await asyncio.to_thread(established_to, server_port, [stall_port]))
            queue = await asyncio.to_thread(send_queue, server_port, stall_port) if alive else 0
            elapsed = round(time.monotonic() - started, 2)
            samples.append({"t": elapsed, "rss_mib": round(dep.rss() / 2**20, 1),
                            "kernel_send_q": queue, "alive": alive})
            if not alive and state["dropped_after_s"] is None:
                state["dropped_after_s"] = elapsed
                self.log(f"  {kind}: the stalled client was dropped after {elapsed:.1f} s")
            return alive

        async def watch(task: asyncio.Future[Any]) -> None:
            while not task.done():
                if not await sample() and \
                        time.monotonic() - started > state["dropped_after_s"] + 1.0:
                    await lg.call(lg.mover, "stop_churn")
                await asyncio.sleep(0.5)

        chunk = 2.0 if o.quick else 5.0
        during = None
        lost = events = 0
        top_queue = 0
        while time.monotonic() - started < stall and state["dropped_after_s"] is None:
            c = await self.churn_phase(dep, n, movers, chunk, f"{kind} stall "
                                       f"{time.monotonic() - started:.0f} s, filling", watch)
            lost += c["lost"]
            events += c["events"]
            if not await sample():
                break
            queue = samples[-1]["kernel_send_q"]
            if during is None and top_queue and queue <= top_queue * 1.01:
                self.log(f"  {kind}: the kernel send queue is full ({queue} bytes); "
                         "probing the others")
                during = await self.fanout_cycles(dep, n, k, f"{kind} probe during the stall")
                during["kernel_send_q"] = queue
                during["rss_growth_mib"] = round((dep.rss() - rss0) / 2**20, 1)
                await sample()
            top_queue = max(top_queue, queue)
        if during is None:  # dropped (or out of time) before the kernel buffer filled
            during = await self.fanout_cycles(dep, n, k, f"{kind} probe after the stall")
            during["kernel_send_q"] = None
        rss1 = max([dep.rss()] + [int(x["rss_mib"] * 2**20) for x in samples])
        resumed = await lg.call(lg.mover, "resume", group="stall",
                                wait=5.0 if state["dropped_after_s"] is not None else 1.0)
        lost += during["lost"] + baseline["lost"]
        b95, d95 = baseline["last_observer_ms"]["p95"], during["last_observer_ms"]["p95"]
        result = {
            "baseline_probe": _brief(baseline), "stalled_probe": _brief(during),
            "stall_limit_s": stall, "churn_events": events,
            "dropped": state["dropped_after_s"] is not None,
            "dropped_after_s": state["dropped_after_s"],
            "kernel_send_q_max": max((x["kernel_send_q"] for x in samples), default=0),
            "rss_growth_mib": round((rss1 - rss0) / 2**20, 1),
            "stalled_client_after_resume": resumed,
            "others_p95_before_ms": b95, "others_p95_during_ms": d95,
            "others_p95_ratio": ratio(d95, b95), "others_lost": lost,
            "samples": samples[::max(len(samples) // 40, 1)],
        }
        self.log(f"  {kind}: dropped={result['dropped']} after {result['dropped_after_s']} s; "
                 f"others' fan-out p95 {b95} -> {d95} ms; lost {lost}; "
                 f"RSS +{result['rss_growth_mib']} MiB")
        return result

    # -- the run --------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        o = self.opts
        raise_nofile_limit()
        results: dict[str, Any] = {
            "meta": {
                "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "label": o.label, "quick": o.quick, "argv": sys.argv[1:],
                "commit": git_commit(), "uncommitted": git_dirty(), "machine": machine_info(),
                "loadavg_at_start": os.getloadavg(),
                "app": {"processes": o.app_processes, "broker": o.broker,
                        "database": o.database, "extra_args": o.app_arg},
                "generator": {"observer_processes": o.gen_processes or os.cpu_count(),
                              "mover_processes": 1, "concurrency": o.concurrency},
            },
            "scenarios": {},
        }
        main_task = asyncio.current_task()
        if main_task is not None:  # SIGTERM: stop like Ctrl+C, cleaning up on the way out
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
        self.lg = await LoadGen(o.gen_processes, progress=self.on_progress).start()
        try:
            for name in o.scenarios:
                attempts = []
                for attempt in range(o.retries + 1):
                    quiet = await self.wait_quiet()
                    self.log(f"scenario {name}" + (f" (attempt {attempt + 1})" if attempt else ""))
                    t = time.monotonic()
                    try:
                        data = await (run_extra(self, name) if name in HANDLED
                                      else getattr(self, "sc_" + name)())
                    except (RuntimeError, OSError) as exc:
                        self.log(f"scenario {name} failed: {exc}")
                        data = {"error": str(exc)[:2000]}
                    data["duration_s"] = round(time.monotonic() - t, 1)
                    data["machine_before"] = quiet
                    data["disturbance_cores"] = disturbance(data)
                    attempts.append(data)
                    if "error" in data or data["disturbance_cores"] <= o.quiet_cores:
                        break
                    self.log(f"  other processes used {data['disturbance_cores']} CPUs during a "
                             f"measured phase of {name}")
                best = min(attempts, key=lambda d: d.get("disturbance_cores", 0))
                best["attempts"] = len(attempts)
                results["scenarios"][name] = best
        finally:
            await self.lg.stop()
            if not o.keep_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
            else:
                self.log(f"server logs kept in {self.workdir}")
        results["meta"]["duration_s"] = round(time.monotonic() - self.started, 1)
        results["meta"]["loadavg_at_end"] = os.getloadavg()
        results["targets"] = evaluate_targets(results)
        return results


def disturbance(data: Any) -> float:
    """The most CPUs (on average) other processes used during one measured phase."""
    worst = 0.0
    if isinstance(data, dict):
        probe = data.get("probe")
        if isinstance(probe, dict) and probe.get("wall_s"):
            worst = probe["other_cpu_s"] / probe["wall_s"]
        for value in data.values():
            worst = max(worst, disturbance(value))
    elif isinstance(data, list):
        for value in data:
            worst = max(worst, disturbance(value))
    return round(worst, 2)


def _brief(r: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in r.items() if k != "event_list"}


def _strip(obj: Any) -> Any:
    """JSON-ready: per-event lists shortened."""
    if isinstance(obj, dict):
        return {k: (_strip(v) if k != "event_list" else v[:50]) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 5's targets, checked against this run's figures."""
    sc = results["scenarios"]
    targets: list[dict[str, Any]] = []

    def add(name: str, value: Any, limit: str, met: bool | None, detail: str = "") -> None:
        targets.append({"target": name, "value": value, "limit": limit, "met": met,
                        "detail": detail})

    fan = sc.get("fanout", {})
    if "app" in fan and "reference" in fan:
        size = str(max(fan["sizes"]))
        a, r = fan["app"][size], fan["reference"][size]
        p95 = ratio(a["last_observer_ms"]["p95"], r["last_observer_ms"]["p95"])
        add(f"fan-out p95 at N={size} vs reference", p95, "<= 1.3 and nothing lost",
            p95 is not None and p95 <= 1.3 and a["lost"] == 0,
            f"{a['last_observer_ms']['p95']} ms vs {r['last_observer_ms']['p95']} ms; "
            f"lost {a['lost']}")
        dps = ratio(a["deliveries_per_s"], r["deliveries_per_s"])
        add(f"deliveries/s at N={size} vs reference", dps, ">= 0.8",
            dps is not None and dps >= 0.8,
            f"{a['deliveries_per_s']} vs {r['deliveries_per_s']}")
    con = sc.get("connect", {})
    if "app" in con and "reference" in con:
        rs = con.get("ratio_seconds")
        add(f"connect {con['n']} sockets vs reference", rs, "<= 2 and no error",
            rs is not None and rs <= 2 and con["app"]["errors"] == 0,
            f"{con['app']['seconds']} s vs {con['reference']['seconds']} s; "
            f"errors {con['app']['errors']}")
    if "app" in con:
        kib = con["app"]["kib_per_connection"]
        add(f"idle memory per connection at N={con['n']}", kib, "<= 24 KiB", kib <= 24,
            f"reference {con.get('reference', {}).get('kib_per_connection')} KiB")
    cross = sc.get("crossproc", {}).get("runs", {})
    if "2-redis" in cross and "1-memory" in cross:
        rp = cross["2-redis"]["ratio_p95_vs_1_memory"]
        add(f"2 processes via Redis, p95 vs 1 process at N={sc['crossproc']['n']}", rp,
            "<= 1.3", rp is not None and rp <= 1.3,
            f"{cross['2-redis']['last_observer_ms']['p95']} ms vs "
            f"{cross['1-memory']['last_observer_ms']['p95']} ms")
    slow = sc.get("slow", {})
    if "app" in slow:
        s = slow["app"]
        before, during = s["others_p95_before_ms"], s["others_p95_during_ms"]
        unaffected = before is not None and during is not None and during <= 1.3 * before + 2
        ok = s["dropped"] and s["others_lost"] == 0 and unaffected
        add("stalled client dropped, others unaffected", s["dropped"],
            "dropped; others' fan-out p95 <= 1.3x (+2 ms), none lost", ok,
            f"dropped after {s['dropped_after_s']} s; others' p95 {before} -> {during} ms; "
            f"lost {s['others_lost']}; server RSS +{s['rss_growth_mib']} MiB")
    targets += extra_targets(results)
    login = sc.get("login", {})
    if "app" in login:
        add(f"logins/s at cost {login['rounds']} vs bare bcrypt", login["ratio_to_bare"],
            "(no numeric target)", None,
            f"{login['app']['logins_per_s']} vs {login['bare_checks_per_s']} checks/s")
    return targets


def _f(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        value = f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    elif isinstance(value, int) and not isinstance(value, bool):
        value = f"{value:,}"
    return f"{value}{unit}"


def _gc(probe: dict[str, Any]) -> str:
    g = probe.get("server_gc")
    if not g:
        return "-"
    total = g["gen0_ms"] + g["gen1_ms"] + g["gen2_ms"]
    return f"{total:,.0f} ({g['gen2_passes']}, longest {g['longest_ms']:,.0f})"


def _net(probe: dict[str, Any]) -> str:
    net = probe.get("net", {})
    return f"{net.get('softnet_dropped', 0)}/{net.get('TCPTimeouts', 0)}"


def render_markdown(results: dict[str, Any]) -> str:
    meta, sc = results["meta"], results["scenarios"]
    m = meta["machine"]
    dirty = (" with uncommitted changes to " + ", ".join(meta["uncommitted"])
             if meta.get("uncommitted") else "")
    lines = [f"# Benchmark run {meta['started']} {meta.get('label', '')}".rstrip(), "",
             f"Machine: {m['cpu_model']}, {m['cpus']} CPUs, {m['ram_gib']} GiB RAM, Linux "
             f"{m['kernel']}; Python {m['python']}, Tornado {m['tornado']}, websockets "
             f"{m['websockets']}, picows {m.get('picows')}. Commit {meta['commit']}{dirty}. "
             f"App: {meta['app']['processes']} "
             f"process(es), {meta['app']['broker']} broker, {meta['app']['database']}. "
             f"Generator: {meta['generator']['observer_processes']} observer processes + 1 "
             f"mover process on the same CPUs. Load average at start "
             f"{' '.join(f'{x:.2f}' for x in meta['loadavg_at_start'])}. "
             f"`python -m bench.run {' '.join(meta['argv'])}`", ""]
    if results.get("targets"):
        lines += ["## Targets (issues 5 and 8)", "", "| target | value | limit | met | detail |",
                  "| --- | --- | --- | --- | --- |"]
        for t in results["targets"]:
            met = {True: "yes", False: "**no**", None: "-"}[t["met"]]
            lines.append(f"| {t['target']} | {_f(t['value'])} | {t['limit']} | {met} | "
                         f"{t['detail']} |")
        lines.append("")
    con = sc.get("connect")
    if con and "error" not in con:
        lines += [f"## Connect storm and idle memory (N={con['n']}, {con['concurrency']} "
                  "handshakes in flight)", "",
                  "| | seconds to all connected | connects/s | errors | server CPU s | "
                  "generator CPU s | server GC ms (full passes) | KiB per idle connection | "
                  "RSS idle MiB | seconds to close all |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for kind in KINDS:
            if kind in con:
                c = con[kind]
                lines.append(f"| {kind} | {_f(c['seconds'])} | {_f(c['connects_per_s'])} | "
                             f"{c['errors']} | {_f(c['server_cpu_s'])} | "
                             f"{_f(c['generator_cpu_s'])} | {_gc(c['probe'])} | "
                             f"{_f(c['kib_per_connection'])} | {_f(c['rss_idle_mib'])} | "
                             f"{_f(c['close_seconds'])} |")
        if "ratio_seconds" in con:
            lines.append(f"| ratio | {_f(con['ratio_seconds'])} | | | | | | "
                         f"{_f(con['ratio_kib'])} | | |")
        lines.append("")
    fan = sc.get("fanout")
    if fan and "error" not in fan:
        lines += [f"## Fan-out (one mover, {fan['k']} connect/disconnect cycles = "
                  f"{2 * fan['k']} events per size, after a warm-up cycle)", "",
                  "Time until the last observer has the event (kernel receive timestamps; "
                  "user-space read time in brackets), per-delivery p99, deliveries/s, lost.",
                  "Other CPU: what other processes used meanwhile. Drops/RTO: packets dropped "
                  "from the loopback backlog and TCP retransmission timeouts during the phase "
                  "(each costs >= 200 ms). Server GC: time in the server's cyclic garbage "
                  "collector (bench.gcprobe).",
                  "", "| N | server | p50 ms | p95 ms | max ms | delivery p99 ms | "
                  "deliveries/s | lost | server CPU ms/event | generator CPU ms/event | "
                  "other CPU s | drops/RTO | server GC ms (full passes, longest) |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for size in map(str, fan["sizes"]):
            for kind in KINDS:
                if kind not in fan:
                    continue
                r = fan[kind][size]
                s, u = r["last_observer_ms"], r["last_observer_user_ms"]
                lines.append(
                    f"| {size} | {kind} | {_f(s['p50'])} ({_f(u['p50'])}) | {_f(s['p95'])} "
                    f"({_f(u['p95'])}) | {_f(s['max'])} | {_f(r['per_delivery_ms']['p99'])} | "
                    f"{_f(r['deliveries_per_s'])} | {r['lost']} | "
                    f"{_f(r['server_cpu_ms_per_event'])} | {_f(r['generator_cpu_ms_per_event'])} "
                    f"| {_f(r['probe']['other_cpu_s'])} | {_net(r['probe'])} | {_gc(r['probe'])} |")
            if "ratios" in fan:
                q = fan["ratios"][size]
                lines.append(f"| {size} | ratio | {_f(q['p50'])} | {_f(q['p95'])} | | | "
                             f"{_f(q['deliveries_per_s'])} | | | | | | |")
        lines.append("")
    churn = sc.get("churn")
    if churn and "error" not in churn and "movers" in churn:
        lines += [f"## Churn ({churn['movers']} movers at once for {churn['seconds']} s, "
                  f"{churn['n']} observers)", "",
                  "| server | events/s | deliveries/s | events | lost | last observer p50 / "
                  "p95 ms | movers left online | server CPU s | generator CPU s |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for kind in KINDS:
            if kind in churn:
                c = churn[kind]
                s = c["last_observer_ms"]
                lines.append(f"| {kind} | {_f(c['events_per_s'])} | "
                             f"{_f(c['deliveries_per_s_sustained'])} | {c['events']} | "
                             f"{c['lost']} | {_f(s['p50'])} / {_f(s['p95'])} | "
                             f"{c['movers_left_online']} | {_f(c['server_cpu_s'])} | "
                             f"{_f(c['generator_cpu_s'])} |")
        if "ratio_events_per_s" in churn:
            lines.append(f"| ratio | {_f(churn['ratio_events_per_s'])} | | | | | | | |")
        lines.append("")
    cross = sc.get("crossproc")
    if cross and cross.get("runs"):
        lines += [f"## Cross-process (N={cross['n']} observers spread over the processes, "
                  f"the mover on the first; {2 * cross['k']} events)", "",
                  "| processes | broker | p50 ms | p95 ms | max ms | lost | p95 vs 1 process "
                  "(memory) | added p50 ms | RSS MiB (all) |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in cross["runs"].values():
            s = r["last_observer_ms"]
            lines.append(f"| {r['processes']} | {r['broker']} | {_f(s['p50'])} | "
                         f"{_f(s['p95'])} | {_f(s['max'])} | {r['lost']} | "
                         f"{_f(r['ratio_p95_vs_1_memory'])} | {_f(r.get('added_p50_ms'))} | "
                         f"{_f(r['rss_mib'])} |")
        lines.append("")
    login = sc.get("login")
    if login and "error" not in login:
        lines += [f"## Login throughput (bcrypt cost {login['rounds']}, {login['cores']} cores, "
                  f"{login['concurrency']} concurrent clients, {login['seconds']} s)", "",
                  "| | per second | latency p50 / p95 ms |", "| --- | --- | --- |",
                  f"| bare bcrypt.checkpw, one process per core | "
                  f"{_f(login['bare_checks_per_s'])} | |"]
        if "app" in login:
            a = login["app"]
            lines.append(f"| app POST /login | {_f(a['logins_per_s'])} | "
                         f"{_f(a['latency_ms']['p50'])} / {_f(a['latency_ms']['p95'])} |")
            lines.append(f"| ratio | {_f(login['ratio_to_bare'])} | |")
        lines.append("")
    slow = sc.get("slow")
    if slow and "error" not in slow:
        lines += [f"## Slow client ({slow['n']} observers; one more client stops reading; "
                  f"{slow['movers']} movers churn to fill its buffers; app send-buffer limit: "
                  f"{slow['app_send_buffer_limit']})", "",
                  "Others' fan-out: one mover's events to the other observers, measured before "
                  "the stall and again once the stalled socket's kernel send queue is full.", "",
                  "| server | dropped after s | max kernel send queue bytes | others' fan-out "
                  "p95 before / during ms | others lost | server RSS growth MiB | bytes the "
                  "client read after resuming |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for kind in KINDS:
            if kind in slow:
                s = slow[kind]
                dropped = _f(s["dropped_after_s"]) if s["dropped"] else \
                    f"not dropped in {_f(s['stall_limit_s'])} s"
                lines.append(
                    f"| {kind} | {dropped} | {_f(s['kernel_send_q_max'])} | "
                    f"{_f(s['others_p95_before_ms'])} / {_f(s['others_p95_during_ms'])} | "
                    f"{s['others_lost']} | {_f(s['rss_growth_mib'])} | "
                    f"{_f(s['stalled_client_after_resume']['bytes_read_after_resume'])} |")
        lines.append("")
    lines += render_extra(results)
    for name, data in sc.items():
        if "error" in data:
            lines += [f"## {name}: failed", "", "```", data["error"], "```", ""]
    return "\n".join(lines)


def write_results(results: dict[str, Any], out: Path | None, label: str) -> tuple[Path, Path]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"{stamp}-{label}" if label else stamp
    json_path = out or RESULTS / f"{name}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(_strip(results), indent=1, default=str))
    md_path = json_path.with_suffix(".md")
    md_path.write_text(render_markdown(results) + "\n")
    return json_path, md_path


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    runner = Runner(opts)
    runner.log(f"scenarios: {', '.join(opts.scenarios)}; N={opts.n}; targets: "
               f"{', '.join(opts.targets)}; workdir {runner.workdir}")
    try:
        results = asyncio.run(runner.run())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted: everything started was stopped", file=sys.stderr)
        return 130
    json_path, md_path = write_results(results, opts.out, opts.label)
    print()
    print(render_markdown(results))
    print()
    runner.log(f"wrote {json_path} and {md_path}")
    failed = [name for name, data in results["scenarios"].items() if "error" in data]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
