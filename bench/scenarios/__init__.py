"""Issue 8's scenarios with many distinct users, kept out of bench/run.py: ``distinct``
(N distinct users connect, beside N sockets of one user), ``reconnect`` (a restart with N
page-like clients) and the distinct part of ``churn`` (N distinct users online, movers at M
transitions/s). The runner calls ``add_arguments``/``finish_arguments`` for their options,
``run_extra`` to run them, ``targets`` and ``render`` for the report."""
from __future__ import annotations

import argparse
import os
from typing import Any

from bench.scenarios.report import render, targets

EXTRA_SCENARIOS = ["distinct", "reconnect"]
HANDLED = set(EXTRA_SCENARIOS) | {"churn"}
__all__ = ["EXTRA_SCENARIOS", "HANDLED", "add_arguments", "finish_arguments", "run_extra",
           "render", "targets"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("distinct users (issue 8): distinct, reconnect, churn")
    g.add_argument("--no-compress", dest="compress", action="store_false",
                   help="page-like clients do not offer permessage-deflate (browsers do)")
    g.add_argument("--verify-sample", type=int, default=None,
                   help="views checked in full (snapshot decoded, every event applied); the "
                        "others are counted at C speed (default 200; quick: 20)")
    g.add_argument("--snapshot-budget-mib", type=int, default=3072,
                   help="memory for keeping the other views' snapshots until they are "
                        "checked after the storm (beyond it a view is reported unverified)")
    g.add_argument("--distinct-sweep", default="",
                   help="distinct: smaller sizes to run as well, comma-separated (e.g. "
                        "1000,2500,5000; for the plot)")
    g.add_argument("--baseline-seeded", action="store_true",
                   help="distinct: the one-user storm runs with the N accounts in the "
                        "database too (its snapshots list N+1 users)")
    g.add_argument("--storm-timeout", type=float, default=None,
                   help="seconds for a storm of distinct users to open and settle "
                        "(default 600; quick 60)")
    g.add_argument("--reconnect-first", type=float, default=2.0,
                   help="reconnect: after a 1001 a retry waits random 0..at least this s")
    g.add_argument("--reconnect-probe", default="/api/session",
                   help="reconnect: GET this path before each attempt, like the page does "
                        "('' for none)")
    g.add_argument("--backoff-base", type=float, default=0.5)
    g.add_argument("--backoff-cap", type=float, default=15.0)
    g.add_argument("--reconnect-timeout", type=float, default=None,
                   help="reconnect: give up this many s after the SIGTERM (default 180; "
                        "quick 40)")
    g.add_argument("--churn-modes", default="one,distinct",
                   help="churn: 'one' (the one-user churn of issue 5, all targets) and/or "
                        "'distinct' (N distinct viewers, the app)")
    g.add_argument("--dchurn-n", type=int, help="distinct churn: viewers (default N)")
    g.add_argument("--dchurn-movers", type=int,
                   help="distinct churn: mover accounts (default 200; quick 10)")
    g.add_argument("--dchurn-rate", type=float,
                   help="distinct churn: transitions/s (default 200; quick 20)")
    g.add_argument("--dchurn-seconds", type=float,
                   help="distinct churn: duration (default 30; quick 2)")


def finish_arguments(args: argparse.Namespace) -> None:
    q = args.quick
    if args.verify_sample is None:
        args.verify_sample = 20 if q else 200
    if args.storm_timeout is None:
        args.storm_timeout = 60.0 if q else 600.0
    if args.reconnect_timeout is None:
        args.reconnect_timeout = 40.0 if q else 180.0
    args.distinct_sizes = sorted({int(x) for x in args.distinct_sweep.split(",")
                                  if x.strip() and int(x) < args.n} | {args.n})
    args.churn_modes = [m.strip() for m in args.churn_modes.split(",") if m.strip()]
    args.dchurn_n = args.dchurn_n or args.n
    args.dchurn_movers = args.dchurn_movers or (10 if q else 200)
    args.dchurn_rate = args.dchurn_rate or (20.0 if q else 200.0)
    args.dchurn_seconds = args.dchurn_seconds or (2.0 if q else 30.0)
    args.gen_processes_effective = args.gen_processes or os.cpu_count() or 2


async def run_extra(runner: Any, name: str) -> dict[str, Any]:
    from bench.scenarios import churn, distinct, reconnect
    if name == "distinct":
        return await distinct.run(runner)
    if name == "reconnect":
        return await reconnect.run(runner)
    out: dict[str, Any] = {}
    if "one" in runner.opts.churn_modes:
        out = await runner.sc_churn()
    if "distinct" in runner.opts.churn_modes and "app" in runner.opts.targets:
        out["distinct"] = await churn.run_distinct(runner)
    return out
