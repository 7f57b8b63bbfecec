"""Plot fan-out latency against N for the app and the reference server from a results file.

    python -m bench.plot [bench/results/<run>.json] [-o docs/bench-fanout.png]

Without a file: the newest result in bench/results/ that has a fan-out sweep.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STYLE = {"app": ("tab:blue", "Presence app"),
         "reference": ("tab:orange", "websockets.broadcast() reference")}


def newest_with_sweep() -> Path | None:
    for path in sorted((ROOT / "bench" / "results").glob("*.json"), reverse=True):
        try:
            fan = json.loads(path.read_text())["scenarios"]["fanout"]
        except (ValueError, KeyError):
            continue
        if len(fan.get("sizes", [])) > 1 and "app" in fan:
            return path
    return None


def plot(results: dict[str, Any], out: Path) -> None:
    fan = results["scenarios"]["fanout"]
    sizes = fan["sizes"]
    meta = results["meta"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    for kind, (color, label) in STYLE.items():
        if kind not in fan:
            continue
        rows = [fan[kind][str(n)] for n in sizes]
        p50 = [r["last_observer_ms"]["p50"] for r in rows]
        p95 = [r["last_observer_ms"]["p95"] for r in rows]
        ax.plot(sizes, p50, "o-", color=color, label=f"{label}, p50")
        ax.plot(sizes, p95, "s--", color=color, alpha=0.7, label=f"{label}, p95")
        bx.plot(sizes, [r["deliveries_per_s"] for r in rows], "o-", color=color, label=label)
    ax.set_xlabel("observers N (sockets)")
    ax.set_ylabel("ms until the last observer has the event")
    ax.set_title("Fan-out latency of one presence event")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_ylim(bottom=0)
    bx.set_xlabel("observers N (sockets)")
    bx.set_ylabel("deliveries per second")
    bx.set_title("Fan-out throughput")
    bx.grid(alpha=0.3)
    bx.legend(fontsize=8)
    bx.set_ylim(bottom=0)
    m = meta["machine"]
    app = meta["app"]
    fig.suptitle(f"{meta['started'][:10]}, {m['cpus']}-core {m['cpu_model']}, generator on the "
                 f"same machine; app: {app['processes']} process, {app['broker']} broker, "
                 f"{app['database']}; commit {meta['commit']}", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plot", description=__doc__)
    parser.add_argument("results", nargs="?", type=Path)
    parser.add_argument("-o", "--out", type=Path, default=ROOT / "docs" / "bench-fanout.png")
    args = parser.parse_args(argv)
    path = args.results or newest_with_sweep()
    if path is None:
        print("no results with a fan-out sweep in bench/results/", file=sys.stderr)
        return 2
    plot(json.loads(path.read_text()), args.out)
    print(f"wrote {args.out} from {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
