"""The benchmark harness works end to end: ``python -m bench.run --all --quick`` on a few
hundred sockets starts the app and the reference server, runs every scenario, stops
everything, and writes complete JSON and Markdown with nothing lost at this small N."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent


def redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def children_running(mark: str) -> list[str]:
    """Processes started by our bench run (they inherit its environment) still alive; a
    developer may be benchmarking meanwhile, their processes do not count."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if proc.environ().get("BENCH_SMOKE_MARK") == mark:
                found.append(" ".join(proc.info["cmdline"] or [])[:200])
        except psutil.Error:
            continue
    return found


@pytest.mark.cluster
def test_quick_run_writes_complete_results(tmp_path: Path) -> None:
    out = tmp_path / "quick.json"
    scenarios = ["connect", "fanout", "churn", "login", "slow"]
    if redis_up():
        scenarios.append("crossproc")
    args = [sys.executable, "-m", "bench.run", "--quick", "--n", "200", "--sweep", "100",
            "--k", "2", "--movers", "6", "--churn-seconds", "1", "--login-seconds", "1",
            "--slow-seconds", "2", "--cross", "2", "--out", str(out)]
    for name in scenarios:
        args += ["--scenario", name]
    mark = uuid.uuid4().hex
    env = {**os.environ, "BENCH_SMOKE_MARK": mark}
    run = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "sockets open" in run.stdout or "opening" in run.stdout  # progress is printed

    print(run.stdout[-6000:])  # shown by pytest if an assertion below fails
    results = json.loads(out.read_text())
    sc = results["scenarios"]
    assert sorted(sc) == sorted(scenarios)
    for name, data in sc.items():
        assert "error" not in data, (name, data.get("error"))
    assert results["meta"]["machine"]["cpus"] >= 1

    for kind in ("app", "reference"):
        connect = sc["connect"][kind]
        assert connect["open"] == 200 and connect["errors"] == 0
        assert connect["kib_per_connection"] > 0
        for size in ("100", "200"):
            fan = sc["fanout"][kind][size]
            assert fan["events"] == 4 and fan["lost"] == 0, (kind, size, fan["lost"])
            assert fan["last_observer_ms"]["p95"] is not None
            assert fan["deliveries_per_s"] > 0
        churn = sc["churn"][kind]
        assert churn["events"] > 0 and churn["lost"] == 0 and churn["movers_left_online"] == 0
        slow = sc["slow"][kind]
        assert slow["others_lost"] == 0
        assert slow["stalled_client_after_resume"]["sockets"] == 1
    assert sc["fanout"]["ratios"]["200"]["p95"] is not None
    assert "gen2_passes" in sc["fanout"]["app"]["200"]["probe"]["server_gc"]  # bench.gcprobe
    assert sc["login"]["app"]["logins"] > 0 and sc["login"]["bare_checks_per_s"] > 0
    if "crossproc" in sc:
        runs = sc["crossproc"]["runs"]
        assert set(runs) == {"1-memory", "1-redis", "2-redis"}
        assert all(r["lost"] == 0 for r in runs.values())

    targets = {t["target"] for t in results["targets"]}
    assert any(t.startswith("fan-out p95") for t in targets)
    assert out.with_suffix(".md").read_text().startswith("# Benchmark run")
    assert not children_running(mark)
