"""Scenario runner: starts the app (and the reference server), drives them with the load
generator, stops everything it started, writes JSON and a Markdown table.

    python -m bench.run --all                      # the full run (N=10,000)
    python -m bench.run --all --quick              # a smoke run: small N, under 2 minutes
    python -m bench.run --scenario fanout --n 10000 --k 10
    python -m bench.run --all --app-processes 2 --broker redis

Scenarios: connect (connect storm and idle memory), fanout, churn, crossproc, login, slow,
distinct, reconnect (one module each in bench/scenarios/).
Results: bench/results/<time>-<label>.json and .md (gitignored); see BENCHMARKS.md.

The flags are in ``bench.cli``, the runner in ``bench.runner``, the report in
``bench.report``.
"""

from __future__ import annotations

import asyncio
import sys

from bench.cli import parse_args
from bench.report import render_markdown, write_results
from bench.runner import Runner

__all__ = ["main", "parse_args"]


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    runner = Runner(opts)
    runner.log(
        f"scenarios: {', '.join(opts.scenarios)}; N={opts.n}; targets: "
        f"{', '.join(opts.targets)}; workdir {runner.workdir}"
    )
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
