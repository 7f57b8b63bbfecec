"""Where a run's figures come from: the machine, the software versions, the commit (and
whether the code outside bench/ had uncommitted changes), the run's own settings."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
from typing import Any

from bench.servers import ROOT


def run_meta(o: argparse.Namespace) -> dict[str, Any]:
    """The ``meta`` of a run's results, as it starts."""
    return {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "label": o.label,
        "quick": o.quick,
        "argv": sys.argv[1:],
        "commit": git_commit(),
        "uncommitted": git_dirty(),
        "machine": machine_info(),
        "loadavg_at_start": os.getloadavg(),
        "app": {
            "processes": o.app_processes,
            "broker": o.broker,
            "database": o.database,
            "extra_args": o.app_arg,
        },
        "generator": {
            "observer_processes": o.gen_processes or os.cpu_count(),
            "mover_processes": 1,
            "concurrency": o.concurrency,
        },
    }


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
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "tornado": tornado.version,
        "websockets": websockets.__version__,
        "picows": version_of("picows"),
    }


def version_of(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def git_dirty() -> list[str]:
    """Modified tracked files outside bench/: the code that ran may differ from the commit."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line[3:] for line in out.splitlines() if not line[3:].startswith("bench/")]


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
