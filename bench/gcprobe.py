"""Run a Python program with every pass of the cyclic garbage collector timed.

    python -m bench.gcprobe STATS.json run.py --port 8888 ...

The program runs unchanged (``runpy``); ``gc.callbacks`` time each collection, and a JSON
file is rewritten five times a second with, per generation, the number of passes, their total
and longest duration, and the recent long passes with their wall-clock time, so a
benchmark can tell how much of a phase went to the collector walking long-lived objects.
"""

from __future__ import annotations

import gc
import json
import os
import runpy
import sys
import threading
import time
from typing import Any

LONG_PASS_S = 0.005
DUMP_INTERVAL_S = 0.2


class GcStats:
    def __init__(self, path: str) -> None:
        self.path = path
        self.gens = {g: {"count": 0, "total_ms": 0.0, "max_ms": 0.0} for g in ("0", "1", "2")}
        self.long: list[tuple[float, int, float]] = []  # (time.time(), generation, ms)
        self._t0 = 0.0
        self._lock = threading.Lock()

    def callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
            return
        took = time.perf_counter() - self._t0
        gen = int(info.get("generation", 0))
        with self._lock:
            entry = self.gens[str(gen)]
            entry["count"] += 1
            entry["total_ms"] += took * 1e3
            entry["max_ms"] = max(entry["max_ms"], took * 1e3)
            if took >= LONG_PASS_S:
                self.long.append((time.time(), gen, round(took * 1e3, 3)))
                del self.long[:-500]

    def dump(self) -> None:
        with self._lock:
            data = {
                "pid": os.getpid(),
                "time": time.time(),
                "gens": {g: dict(v) for g, v in self.gens.items()},
                "long_passes": list(self.long),
                "tracked": None,
            }
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, self.path)

    def run_dumper(self) -> None:
        while True:
            time.sleep(DUMP_INTERVAL_S)
            try:
                self.dump()
            except OSError:
                pass


def read(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def delta(
    before: dict[str, Any] | None, after: dict[str, Any] | None, since: float, until: float
) -> dict[str, Any] | None:
    """GC activity between two dumps; long passes between the wall-clock times given."""
    if not before or not after:
        return None
    out: dict[str, Any] = {}
    for gen in ("0", "1", "2"):
        a, b = before["gens"][gen], after["gens"][gen]
        out[f"gen{gen}_passes"] = b["count"] - a["count"]
        out[f"gen{gen}_ms"] = round(b["total_ms"] - a["total_ms"], 2)
    passes = [p for p in after.get("long_passes", []) if since <= p[0] <= until]
    out["longest_ms"] = max((p[2] for p in passes), default=0.0)
    out["long_passes"] = len(passes)
    return out


def main() -> None:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    stats = GcStats(sys.argv[1])
    gc.callbacks.append(stats.callback)
    threading.Thread(target=stats.run_dumper, name="gcprobe", daemon=True).start()
    script = sys.argv[2]
    sys.argv = sys.argv[2:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        stats.dump()


if __name__ == "__main__":
    main()
