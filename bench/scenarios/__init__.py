"""The scenarios of ``python -m bench.run``, one module each (BENCHMARKS.md, Method, says
what each measures): ``connect``, ``fanout``, ``churn`` (with ``churn_distinct``),
``crossproc``, ``login``, ``slow``, ``distinct``, ``reconnect``.

Each module has ``async def run(runner) -> dict`` (the scenario's figures, for the JSON),
and ``targets(results)`` and ``render(results)``: its rows of the report's targets table and
its Markdown section (``bench.report`` puts them in order). ``common`` holds what they share,
``cells`` how the tables show a value."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.runner import Runner

SCENARIOS = ["connect", "fanout", "churn", "crossproc", "login", "slow", "distinct", "reconnect"]


async def run(runner: Runner, name: str) -> dict[str, Any]:
    """Run scenario ``name`` (its module is imported only now)."""
    module = importlib.import_module(f"bench.scenarios.{name}")
    result: dict[str, Any] = await module.run(runner)
    return result
