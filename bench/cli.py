"""The command line of ``python -m bench.run``: every flag, and the defaults that depend on
``--quick`` (a smoke run) or on other flags."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from bench.scenarios import SCENARIOS

# The first line of bench.run's docstring, as ``--help`` has always shown it.
DESCRIPTION = (
    "Scenario runner: starts the app (and the reference server), drives them with the load"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_scenario_arguments(p)
    add_deployment_arguments(p)
    add_phase_arguments(p)
    add_run_arguments(p)
    g = p.add_argument_group(
        "distinct users (BENCHMARKS.md, Method, Distinct users): distinct, reconnect, churn"
    )
    add_distinct_arguments(g)
    add_dchurn_arguments(g)
    args = p.parse_args(argv)
    if not args.all and not args.scenario:
        p.error("give --scenario NAME (repeatable) or --all")
    scenarios = list(SCENARIOS) if args.all else []
    for name in args.scenario or []:
        name = "connect" if name == "memory" else name
        if name not in scenarios:
            scenarios.append(name)
    args.scenarios = scenarios
    apply_defaults(args)
    if args.app_processes > 1 and args.broker != "redis":
        p.error("--app-processes > 1 needs --broker redis")
    apply_distinct_defaults(args)
    return args


def add_scenario_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--scenario",
        action="append",
        choices=SCENARIOS + ["memory"],
        help="scenario to run (repeatable; 'memory' is measured by 'connect')",
    )
    p.add_argument("--all", action="store_true", help="run every scenario")
    p.add_argument(
        "--quick",
        action="store_true",
        help="small sizes and short phases (a smoke run, under 2 minutes)",
    )
    p.add_argument("--n", type=int, help="sockets (observers) per scenario; quick: 200, else 10000")
    p.add_argument(
        "--sweep",
        help="fan-out sizes below N, comma-separated (default: 1000,2500,5000; quick: 100)",
    )
    p.add_argument(
        "--k",
        type=int,
        help="fan-out cycles (each: one online and one offline "
        "event) after one warm-up cycle; quick: 3, else 10",
    )
    p.add_argument("--movers", type=int, help="churn: movers at once; quick: 10, else 100")
    p.add_argument("--churn-n", type=int, help="churn: observers; quick: N, else 1000")
    p.add_argument("--churn-seconds", type=float, help="churn duration; quick: 2, else 10")
    p.add_argument(
        "--cross",
        default=None,
        help="crossproc: app process counts sharing Redis (default 2,4; quick: 2)",
    )
    p.add_argument(
        "--targets",
        default="app,reference,picows",
        help="what to run against: app, reference (websockets), picows",
    )


def add_deployment_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--app-processes",
        type=int,
        default=1,
        help="app processes on separate ports (observers spread over them)",
    )
    p.add_argument("--broker", choices=["memory", "redis"], default="memory")
    p.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument(
        "--pg-dsn",
        default="postgresql://postgres@127.0.0.1:5432",
        help="PostgreSQL server; a database is created for the run and dropped",
    )
    p.add_argument(
        "--app-arg",
        action="append",
        default=[],
        help="extra argument for run.py (repeatable: --app-arg=--log-level=WARNING)",
    )
    p.add_argument(
        "--gen-processes",
        type=int,
        default=0,
        help="observer load generator processes (0: one per CPU); plus one process for movers",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=100,
        help="handshakes in flight (all generator processes together); Tornado's "
        "listen backlog is 128, beyond it SYNs are dropped and retried after 1 s",
    )


def add_phase_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--login-seconds", type=float, help="login: duration; quick: 2, else 10")
    p.add_argument("--login-concurrency", type=int, default=4)
    p.add_argument("--login-rounds", type=int, default=12, help="login: app bcrypt cost")
    p.add_argument("--slow-n", type=int, help="slow: observers; quick: 100, else 200")
    p.add_argument(
        "--slow-seconds",
        type=float,
        help="slow: longest stall phase (the baseline phase: half of it, at most "
        "5 s); quick: 4, else 90",
    )
    p.add_argument(
        "--slow-limit",
        type=int,
        default=None,
        help="slow: app --send-buffer-limit in bytes (default: the app's own "
        "default; quick: 65536)",
    )


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=None,
        help="before each scenario, wait up to this many seconds until other "
        "processes use less than --quiet-cores CPUs (default: 0 quick, else 600)",
    )
    p.add_argument("--quiet-cores", type=float, default=0.3)
    p.add_argument(
        "--retries",
        type=int,
        default=None,
        help="run a scenario again (up to this many times) when other processes used "
        "more than --quiet-cores CPUs on average during one of its measured "
        "phases (default: 0 quick, else 2)",
    )
    p.add_argument(
        "--no-gc-stats",
        dest="gc_stats",
        action="store_false",
        help="run the servers without timing their garbage-collector passes "
        "(bench.gcprobe wraps run.py and the reference server by default)",
    )
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="directory: record every app process with py-spy (collapsed stacks)",
    )
    p.add_argument("--out", type=Path, help="JSON output path (default bench/results/...)")
    p.add_argument("--label", default="", help="label in file names and the report")
    p.add_argument("--keep-workdir", action="store_true", help="keep server logs")


def add_distinct_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--no-compress",
        dest="compress",
        action="store_false",
        help="page-like clients do not offer permessage-deflate (browsers do)",
    )
    g.add_argument(
        "--verify-sample",
        type=int,
        default=None,
        help="views checked in full (snapshot decoded, every event applied); the "
        "others are counted at C speed (default 200; quick: 20)",
    )
    g.add_argument(
        "--snapshot-budget-mib",
        type=int,
        default=3072,
        help="memory for keeping the other views' snapshots until they are "
        "checked after the storm (beyond it a view is reported unverified)",
    )
    g.add_argument(
        "--distinct-sweep",
        default="",
        help="distinct: smaller sizes to run as well, comma-separated (e.g. "
        "1000,2500,5000; for the plot)",
    )
    g.add_argument(
        "--baseline-seeded",
        action="store_true",
        help="distinct: the one-user storm runs with the N accounts in the "
        "database too (its snapshots list N+1 users)",
    )
    g.add_argument(
        "--storm-timeout",
        type=float,
        default=None,
        help="seconds for a storm of distinct users to open and settle (default 600; quick 60)",
    )
    g.add_argument(
        "--reconnect-first",
        type=float,
        default=2.0,
        help="reconnect: after a 1001 a retry waits random 0..at least this s",
    )
    g.add_argument(
        "--reconnect-probe",
        default="/api/session",
        help="reconnect: GET this path before each attempt, like the page does ('' for none)",
    )
    g.add_argument("--backoff-base", type=float, default=0.5)
    g.add_argument("--backoff-cap", type=float, default=15.0)
    g.add_argument(
        "--reconnect-timeout",
        type=float,
        default=None,
        help="reconnect: give up this many s after the SIGTERM (default 180; quick 40)",
    )


def add_dchurn_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--churn-modes",
        default="one,distinct",
        help="churn: 'one' (the one-user churn: BENCHMARKS.md, Method, churn; all "
        "targets) and/or 'distinct' (N distinct viewers, the app)",
    )
    g.add_argument("--dchurn-n", type=int, help="distinct churn: viewers (default N)")
    g.add_argument(
        "--dchurn-movers", type=int, help="distinct churn: mover accounts (default 200; quick 10)"
    )
    g.add_argument(
        "--dchurn-rate", type=float, help="distinct churn: transitions/s (default 200; quick 20)"
    )
    g.add_argument(
        "--dchurn-seconds", type=float, help="distinct churn: duration (default 30; quick 2)"
    )


def apply_defaults(args: argparse.Namespace) -> None:
    """The defaults that depend on ``--quick`` or on other flags."""
    q = args.quick
    args.n = args.n or (200 if q else 10000)
    sweep = args.sweep if args.sweep is not None else ("100" if q else "1000,2500,5000")
    args.sizes = sorted(
        {int(x) for x in sweep.split(",") if x.strip() and int(x) < args.n} | {args.n}
    )
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


def apply_distinct_defaults(args: argparse.Namespace) -> None:
    q = args.quick
    if args.verify_sample is None:
        args.verify_sample = 20 if q else 200
    if args.storm_timeout is None:
        args.storm_timeout = 60.0 if q else 600.0
    if args.reconnect_timeout is None:
        args.reconnect_timeout = 40.0 if q else 180.0
    args.distinct_sizes = sorted(
        {int(x) for x in args.distinct_sweep.split(",") if x.strip() and int(x) < args.n} | {args.n}
    )
    args.churn_modes = [m.strip() for m in args.churn_modes.split(",") if m.strip()]
    args.dchurn_n = args.dchurn_n or args.n
    args.dchurn_movers = args.dchurn_movers or (10 if q else 200)
    args.dchurn_rate = args.dchurn_rate or (20.0 if q else 200.0)
    args.dchurn_seconds = args.dchurn_seconds or (2.0 if q else 30.0)
    args.gen_processes_effective = args.gen_processes or os.cpu_count() or 2
