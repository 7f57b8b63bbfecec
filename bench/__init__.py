"""Benchmarks of the presence app: a lean load generator, a reference server, a scenario runner.

``python -m bench.run --help``; results and the method are in BENCHMARKS.md.
"""
