"""The benchmark harness works end to end: ``python -m bench.run --quick`` on a few hundred
sockets starts the app and the reference servers, runs every scenario, stops everything,
and writes complete JSON and Markdown with nothing lost at this small N.

Three runs go side by side (most of a quick run is waiting for servers to start and stop):
the one-user scenarios in two against the app and the ``websockets`` reference, and the
distinct-user scenarios (distinct, reconnect, churn with distinct users online) in the
third. The ``picows`` reference is checked on its own, through its protocol."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
import websockets

ROOT = Path(__file__).resolve().parents[2]


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


def start_run(
    out: Path, scenarios: list[str], extra: list[str], mark: str
) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "bench.run", "--quick", "--n", "200", "--out", str(out), *extra]
    for name in scenarios:
        args += ["--scenario", name]
    env = {**os.environ, "BENCH_SMOKE_MARK": mark}
    return subprocess.Popen(
        args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )


def finish(run: subprocess.Popen[str], out: Path, scenarios: list[str]) -> dict[str, Any]:
    try:
        output, _ = run.communicate(timeout=110)
    except subprocess.TimeoutExpired:
        run.kill()
        output, _ = run.communicate()
        raise AssertionError("bench run timed out:\n" + output[-4000:]) from None
    assert run.returncode == 0, output[-5000:]
    assert "sockets open" in output or "opening" in output  # progress is printed
    print(output[-6000:])  # shown by pytest if an assertion below fails
    results = json.loads(out.read_text())
    assert sorted(results["scenarios"]) == sorted(set(scenarios))
    for name, data in results["scenarios"].items():
        assert "error" not in data, (name, data.get("error"))
    assert out.with_suffix(".md").read_text().startswith("# Benchmark run")
    return results


def check_classic(results: dict[str, Any]) -> None:
    sc = results["scenarios"]
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
    targets = {t["target"] for t in results["targets"]}
    assert any(t.startswith("fan-out p95") for t in targets)
    if "crossproc" in sc:
        runs = sc["crossproc"]["runs"]
        assert set(runs) == {"1-memory", "1-redis", "2-redis"}
        assert all(r["lost"] == 0 for r in runs.values())


def check_distinct(results: dict[str, Any]) -> None:
    sc = results["scenarios"]
    d = sc["distinct"]
    for key in ("one_user", "distinct"):
        storm = d[key]
        assert storm["open"] == 200 and storm["errors"] == 0, (key, storm["error_kinds"])
        # Every socket's final view checked (20 in full, the rest by counting): all online.
        assert storm["lost"] == 0 and storm["verified"] == 200, (key, storm["results"])
        assert storm["snapshot_frames"]["min"] >= 1
    distinct = d["distinct"]
    # 200 distinct users: every socket hears of the users that connected after it.
    assert distinct["presence_deliveries"] >= 200 * 199 // 2
    assert distinct["snapshot_users"]["min"] == 200
    assert distinct["fast_reads"] > 0  # the C-speed counting path was used and agreed
    assert d["ratio_seconds"] is not None
    r = sc["reconnect"]
    assert r["all_fresh"] and r["lost"] == 0 and r["seconds"] is not None, r
    assert r["seconds"] >= r["last_fresh_s"] > r["down_s"] > 0
    assert r["attempts_per_view"]["min"] >= 2  # every client reconnected at least once
    assert r["probes"] >= 200  # each after a GET /api/users, like the page
    c = sc["churn"]["distinct"]
    assert c["events"] == c["triggers"] > 0 and c["lost"] == 0, c
    assert c["stream_mismatches"] == 0 and c["events_without_trigger"] == 0
    assert c["last_viewer_ms"]["p95"] is not None
    assert c["frames_per_s_per_viewer"]["min"] > 0
    targets = {t["target"] for t in results["targets"]}
    assert any("distinct users connect" in t for t in targets)
    assert any(t.startswith("restart with") for t in targets)
    md = Path(results["_md"]).read_text()
    assert "## Distinct users connect" in md and "## Churn with 200 distinct users" in md


@pytest.mark.cluster
def test_quick_runs_write_complete_results(tmp_path: Path) -> None:
    mark = uuid.uuid4().hex
    classic = [
        "--targets",
        "app,reference",
        "--sweep",
        "100",
        "--k",
        "2",
        "--movers",
        "6",
        "--churn-seconds",
        "1",
        "--churn-modes",
        "one",
        "--login-seconds",
        "1",
        "--slow-seconds",
        "2",
        "--cross",
        "2",
    ]
    distinct = [
        "--targets",
        "app",
        "--churn-modes",
        "distinct",
        "--verify-sample",
        "20",
        "--reconnect-first",
        "0.5",
        "--backoff-base",
        "0.2",
        "--backoff-cap",
        "1",
        "--dchurn-seconds",
        "1.5",
    ]
    runs = [
        (["connect", "fanout", "churn"], classic),
        (["login", "slow"] + (["crossproc"] if redis_up() else []), classic),
        (["distinct", "reconnect", "churn"], distinct),
    ]
    outs = [tmp_path / f"run{i}.json" for i in range(len(runs))]
    started = [
        (out, names, start_run(out, names, extra, mark))
        for out, (names, extra) in zip(outs, runs, strict=True)
    ]
    results = [finish(proc, out, names) for out, names, proc in started]
    classic_results = {
        **results[0],
        "scenarios": {**results[0]["scenarios"], **results[1]["scenarios"]},
    }
    check_classic(classic_results)
    results[2]["_md"] = str(started[2][0].with_suffix(".md"))
    check_distinct(results[2])
    deadline = time.monotonic() + 5
    while children_running(mark) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not children_running(mark)


@pytest.mark.cluster
def test_picows_reference_speaks_the_protocol() -> None:
    """Snapshot first (the user listed online), presence events for others' first and last
    sockets, pong for a ping, an error for anything else, /healthz with the socket count."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "picows_server.py"), "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert "Reference server running" in (server.stdout.readline() if server.stdout else "")
        asyncio.run(_talk(f"ws://127.0.0.1:{port}/ws"))
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            assert json.loads(resp.read())["sockets"] == 0
    finally:
        server.terminate()
        server.wait(10)


async def _talk(url: str) -> None:
    async with websockets.connect(url, additional_headers={"Cookie": "bench_user=ann"}) as a:
        snap = json.loads(await a.recv())
        assert snap["type"] == "snapshot" and snap["me"] == "ann"
        assert [(u["username"], u["online"]) for u in snap["users"]] == [("ann", True)]
        async with websockets.connect(url, additional_headers={"Cookie": "bench_user=bob"}) as b:
            assert json.loads(await b.recv())["type"] == "snapshot"
            event = json.loads(await a.recv())
            assert (event["type"], event["username"], event["online"]) == ("presence", "bob", True)
            await b.send('{"type":"ping"}')
            assert json.loads(await b.recv()) == {"type": "pong"}
            await b.send("not json")
            assert json.loads(await b.recv())["type"] == "error"
        event = json.loads(await a.recv())
        assert (event["username"], event["online"]) == ("bob", False) and event["last_seen"]


def _server_frame(payload: bytes, opcode: int = 0x1, rsv1: bool = False) -> bytes:
    first = 0x80 | opcode | (0x40 if rsv1 else 0)
    size = len(payload)
    if size < 126:
        return bytes([first, size]) + payload
    if size < 65536:
        return bytes([first, 126]) + size.to_bytes(2, "big") + payload
    return bytes([first, 127]) + size.to_bytes(8, "big") + payload


@pytest.mark.parametrize("compress,seed", [(True, 1), (False, 2), (True, 3)])
def test_views_count_every_presence_frame(compress: bool, seed: int) -> None:
    """The generator's C-speed count (bench.views) agrees with what a server sent: frames
    coalesced and cut at random places, pings, other messages and 16-bit lengths among
    them, a compressed snapshot (raw deflate, RSV1); a ping gets a pong; the final view is
    checked."""
    import random
    import zlib

    from bench import views

    rng = random.Random(seed)
    names = [f"u{i:05d}" for i in range(1200)]
    snapshot = json.dumps(
        {
            "users": [
                {"username": n, "online": i < 200, "last_seen": None} for i, n in enumerate(names)
            ],
            "type": "snapshot",
            "me": names[0],
        }
    ).encode()  # keys reordered
    if compress:
        deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
        body = deflate.compress(snapshot) + deflate.flush(zlib.Z_SYNC_FLUSH)
        first = _server_frame(body[:-4], rsv1=True)
    else:
        first = _server_frame(snapshot)
    frames = [first]
    for i, name in enumerate(names[200:]):
        extra = "x" * (200 if i % 250 == 0 else 0)  # now and then a 16-bit length
        frames.append(
            _server_frame(
                json.dumps(
                    {
                        "type": "presence",
                        "username": name,
                        "online": True,
                        "version": i + 1,
                        "last_seen": "2026-11-24T14:03:12.123Z",
                        "note": extra,
                    },
                    separators=(",", ":"),
                ).encode()
            )
        )
        if i % 300 == 0:
            frames.append(_server_frame(b"", opcode=0x9))
        if i % 200 == 0:
            frames.append(_server_frame(b'{"type":"pong"}'))
    wire = b"".join(frames)
    header = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    if compress:
        header += (
            "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover;"
            " client_no_context_takeover\r\n"
        )
    wire = (header + "\r\n").encode() + wire
    got_from_client: list[bytes] = []
    done = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        pos = 0
        while pos < len(wire):  # paced, so that reads see cuts anywhere and whole runs
            step = rng.choice([1, 2, 7, 60, 130, 400, 1500, 5000, 70000])
            writer.write(wire[pos : pos + step])
            await writer.drain()
            pos += step
            await asyncio.sleep(0.002)
        try:
            got_from_client.append(await asyncio.wait_for(reader.read(65536), 2))
        except TimeoutError:
            pass
        await done.wait()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        group = views.ViewGroup("t", {"compress": compress, "snapshot_budget": 1 << 20})
        counted = views.View(group, loop, ("127.0.0.1", port), {}, names[0], False)
        full = views.View(group, loop, ("127.0.0.1", port), {}, names[0], True)
        group.conns += [full, counted]
        assert await full.connect(5) and await counted.connect(5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and min(full.presence, counted.presence) < 1000:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        assert full.presence == counted.presence == 1000
        assert counted.snap_compressed is compress and full.snap_frames == 1
        expect = {n: True for n in names}
        status, details = full.check(expect, len(names), None)
        assert status == "ok" and details["online_marker"] == b'"online": true', details
        for marker in (details["online_marker"], None):  # a byte count, or a JSON decode
            status, details = counted.check(expect, len(names), marker)
            assert status == "ok", details
        assert group.fast_reads > 0  # the byte count ran (and agreed, above)
        done.set()
        await asyncio.sleep(0.05)
        group.stop()
        server.close()
        await server.wait_closed()

    asyncio.run(main())
    assert got_from_client and got_from_client[0][0] == 0x8A  # a masked pong came back
