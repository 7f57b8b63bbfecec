"""The report of a run: the targets table and the Markdown document (a header, the targets,
each scenario's section, the failures), written beside the JSON results."""

from __future__ import annotations

import datetime as dt
import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.scenarios.cells import fmt
from bench.servers import ROOT

RESULTS = ROOT / "bench" / "results"
# The scenario modules whose rows make the targets table, and whose sections make the
# document, in this order. They are imported when the report is made: the load generator's
# processes import this module too (spawn runs bench.run's imports again), and they need
# none of the scenarios.
TARGETS = (
    "fanout",
    "connect",
    "crossproc",
    "slow",
    "distinct",
    "reconnect",
    "churn_distinct",
    "login",
)
SECTIONS = (
    "connect",
    "fanout",
    "churn",
    "crossproc",
    "login",
    "slow",
    "distinct",
    "reconnect",
    "churn_distinct",
)


def part(module: str, name: str) -> Callable[[dict[str, Any]], list[Any]]:
    """``targets`` or ``render`` of scenario module ``module``."""
    function: Callable[[dict[str, Any]], list[Any]] = getattr(
        importlib.import_module(f"bench.scenarios.{module}"), name
    )
    return function


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets (BENCHMARKS.md, Summary), checked against this run's figures."""
    return [row for module in TARGETS for row in part(module, "targets")(results)]


def render_markdown(results: dict[str, Any]) -> str:
    sc = results["scenarios"]
    lines = header(results["meta"]) + targets_table(results.get("targets"))
    for module in SECTIONS:
        lines += part(module, "render")(results)
    for name, data in sc.items():
        if "error" in data:
            lines += [f"## {name}: failed", "", "```", data["error"], "```", ""]
    return "\n".join(lines)


def header(meta: dict[str, Any]) -> list[str]:
    m = meta["machine"]
    dirty = (
        " with uncommitted changes to " + ", ".join(meta["uncommitted"])
        if meta.get("uncommitted")
        else ""
    )
    return [
        f"# Benchmark run {meta['started']} {meta.get('label', '')}".rstrip(),
        "",
        f"Machine: {m['cpu_model']}, {m['cpus']} CPUs, {m['ram_gib']} GiB RAM, Linux "
        f"{m['kernel']}; Python {m['python']}, Tornado {m['tornado']}, websockets "
        f"{m['websockets']}, picows {m.get('picows')}. Commit {meta['commit']}{dirty}. "
        f"App: {meta['app']['processes']} "
        f"process(es), {meta['app']['broker']} broker, {meta['app']['database']}. "
        f"Generator: {meta['generator']['observer_processes']} observer processes + 1 "
        f"mover process on the same CPUs. Load average at start "
        f"{' '.join(f'{x:.2f}' for x in meta['loadavg_at_start'])}. "
        f"`python -m bench.run {' '.join(meta['argv'])}`",
        "",
    ]


def targets_table(targets: list[dict[str, Any]] | None) -> list[str]:
    if not targets:
        return []
    lines = [
        "## Targets (BENCHMARKS.md, Summary)",
        "",
        "| target | value | limit | met | detail |",
        "| --- | --- | --- | --- | --- |",
    ]
    for t in targets:
        met = {True: "yes", False: "**no**", None: "-"}[t["met"]]
        lines.append(
            f"| {t['target']} | {fmt(t['value'])} | {t['limit']} | {met} | {t['detail']} |"
        )
    lines.append("")
    return lines


def write_results(results: dict[str, Any], out: Path | None, label: str) -> tuple[Path, Path]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"{stamp}-{label}" if label else stamp
    json_path = out or RESULTS / f"{name}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(strip(results), indent=1, default=str))
    md_path = json_path.with_suffix(".md")
    md_path.write_text(render_markdown(results) + "\n")
    return json_path, md_path


def strip(obj: Any) -> Any:
    """JSON-ready: per-event lists shortened."""
    if isinstance(obj, dict):
        return {k: (strip(v) if k != "event_list" else v[:50]) for k, v in obj.items()}
    if isinstance(obj, list):
        return [strip(v) for v in obj]
    return obj
