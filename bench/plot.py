"""Plots from a results file: fan-out latency against N for the app and the reference
servers; distinct users against one user connecting (storm time against N) with the churn
latency of each transition when the run has them.

    python -m bench.plot [bench/results/<run>.json] [-o docs/bench-fanout.png]
                         [--distinct-out docs/bench-distinct.png]

Without a file: the newest result in bench/results/ with a fan-out sweep, and the newest
with a ``distinct`` scenario.
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
STYLE = {
    "app": ("tab:blue", "Presence app"),
    "reference": ("tab:orange", "websockets.broadcast() reference"),
    "picows": ("tab:green", "picows reference"),
}


def has_sweep(results: dict[str, Any]) -> bool:
    fan = results.get("scenarios", {}).get("fanout", {})
    return len(fan.get("sizes", [])) > 1 and "app" in fan


def has_distinct(results: dict[str, Any]) -> bool:
    return "distinct" in results.get("scenarios", {}).get("distinct", {})


def newest(test: Any) -> Path | None:
    for path in sorted((ROOT / "bench" / "results").glob("*.json"), reverse=True):
        try:
            if test(json.loads(path.read_text())):
                return path
        except ValueError:
            continue
    return None


def newest_with_sweep() -> Path | None:
    return newest(has_sweep)


def _title(fig: Any, meta: dict[str, Any]) -> None:
    m, app = meta["machine"], meta["app"]
    fig.suptitle(
        f"{meta['started'][:10]}, {m['cpus']}-core {m['cpu_model']}, generator on the "
        f"same machine; app: {app['processes']} process, {app['broker']} broker, "
        f"{app['database']}; commit {meta['commit']}",
        fontsize=8,
    )


def plot_distinct(results: dict[str, Any], out: Path) -> None:
    """Seconds until every socket has its snapshot, N distinct users against N sockets of
    one user, at each size run; beside it, churn latency per transition if measured."""
    d = results["scenarios"]["distinct"]
    churn = results["scenarios"].get("churn", {}).get("distinct", {})
    sizes = sorted(d["sizes"], key=int) if d.get("sizes") else [str(d["n"])]
    rows = [d["sizes"][n] for n in sizes] if d.get("sizes") else [d]
    panels = 2 if churn.get("series") else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.2), squeeze=False)
    _storm_panel(axes[0][0], [int(n) for n in sizes], rows)
    if panels == 2:
        _churn_panel(axes[0][1], churn)
    _title(fig, results["meta"])
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _storm_panel(ax: Any, xs: list[int], rows: list[dict[str, Any]]) -> None:
    one = [r["one_user"]["seconds"] for r in rows]
    dis = [r["distinct"]["seconds"] for r in rows]
    conv = [r["distinct"]["converged_s"] for r in rows]
    ax.plot(xs, one, "o-", color="tab:orange", label="N sockets of one user")
    ax.plot(xs, dis, "o-", color="tab:blue", label="N distinct users: every snapshot")
    ax.plot(xs, conv, "s--", color="tab:blue", alpha=0.6, label="N distinct users: every event")
    ax.plot(xs, [3 * x for x in one], ":", color="grey", label="target: 3x one user")
    for x, r in zip(xs, rows, strict=True):
        if r.get("ratio_seconds") is not None:
            ax.annotate(
                f"{r['ratio_seconds']:.2f}x",
                (x, r["distinct"]["seconds"]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=8,
            )
    ax.set_xlabel("sockets N")
    ax.set_ylabel("seconds from the first SYN")
    ax.set_title("Connect storm: distinct users vs one user")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_ylim(bottom=0)
    ax.set_xlim(left=0, right=max(xs) * 1.1)


def _churn_panel(bx: Any, churn: dict[str, Any]) -> None:
    series = churn["series"]
    bx.plot(
        series["t_s"],
        series["last_ms"],
        ".",
        markersize=3,
        color="tab:blue",
        label="each transition",
    )
    bx.axhline(250, linestyle=":", color="grey", label="target p95: 250 ms")
    p95 = churn["last_viewer_ms"]["p95"]
    if p95 is not None:
        bx.axhline(p95, linestyle="--", color="tab:red", label=f"p95 {p95:.0f} ms")
    bx.set_xlabel("seconds into the churn")
    bx.set_ylabel("ms until the last viewer has it")
    bx.set_title(f"Churn: {churn['rate']:.0f} transitions/s, {churn['n']:,} distinct users online")
    bx.grid(alpha=0.3)
    bx.legend(fontsize=8)
    bx.set_ylim(bottom=0)


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
    _title(fig, meta)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plot", description=__doc__)
    parser.add_argument("results", nargs="?", type=Path)
    parser.add_argument("-o", "--out", type=Path, default=ROOT / "docs" / "bench-fanout.png")
    parser.add_argument("--distinct-out", type=Path, default=ROOT / "docs" / "bench-distinct.png")
    args = parser.parse_args(argv)
    wrote = 0
    for test, draw, out, what in (
        (has_sweep, plot, args.out, "a fan-out sweep"),
        (has_distinct, plot_distinct, args.distinct_out, "a distinct scenario"),
    ):
        path = args.results or newest(test)
        if path is None or not test(json.loads(path.read_text())):
            print(
                f"no results with {what}" + (f" in {path}" if path else " in bench/results/"),
                file=sys.stderr,
            )
            continue
        draw(json.loads(path.read_text()), out)
        print(f"wrote {out} from {path}")
        wrote += 1
    return 0 if wrote else 2


if __name__ == "__main__":
    sys.exit(main())
