"""Processes the runner starts and always stops: app processes, the reference server, a
database created and dropped for the run, a Redis key prefix deleted at the end.

Starting, readiness and stopping are the tests' harness (tests/support), so a benchmark
runs the app exactly as the test suites do; what is here is what only bench needs
(deployments of several processes, CPU and kernel counters)."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil

from bench import gcprobe
from tests.support.apps import AppProcess
from tests.support.databases import create_database, drop_database, postgres_url, sqlite_url
from tests.support.env import ROOT
from tests.support.http import http_json
from tests.support.ports import free_port
from tests.support.processes import ServerProcess, reap
from tests.support.redis import drop_keys

REFERENCE_SERVERS = {"reference": "reference_server.py", "picows": "picows_server.py"}


async def start_all(servers: list[ServerProcess], timeout: float = 30.0) -> None:
    """Spawn the servers (here: PR_SET_PDEATHSIG is tied to the spawning thread, and this
    one lives as long as the runner) and wait until all are ready."""
    for server in servers:
        server.spawn()
    await asyncio.gather(*(asyncio.to_thread(s.wait_ready, timeout) for s in servers))


class Deployment:
    """What scenarios talk to: one or more server processes (ports) of one kind."""

    kind = ""
    servers: list[ServerProcess]
    workdir: Path
    gc_stats = False

    def gc_snapshot(self) -> list[dict[str, Any] | None]:
        """Each server's garbage-collector statistics (see bench.gcprobe), if recorded."""
        if not self.gc_stats:
            return []
        return [gcprobe.read(str(self.workdir / f"gc-{s.port}.json")) for s in self.servers]

    @property
    def targets(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", s.port) for s in self.servers]

    def rss(self) -> int:
        return sum(psutil.Process(s.pid).memory_info().rss for s in self.servers)

    def cpu(self) -> float:
        times = [psutil.Process(s.pid).cpu_times() for s in self.servers]
        return sum(t.user + t.system for t in times)

    def pids(self) -> list[int]:
        return [s.pid for s in self.servers]

    async def sockets(self) -> int:
        total = 0
        for server in self.servers:
            _, body = await asyncio.to_thread(http_json, server.url + "/healthz", 5.0)
            total += int((body or {}).get("sockets", 0))
        return total

    async def observer_headers(self) -> dict[str, str]:
        raise NotImplementedError

    async def mover_headers(self, count: int) -> list[dict[str, str]]:
        raise NotImplementedError

    async def stop(self) -> None:
        for server in self.servers:
            await asyncio.to_thread(server.stop)


class ReferenceDeployment(Deployment):
    """A reference server: ``reference`` (``websockets``) or ``picows``; same protocol."""

    def __init__(
        self,
        workdir: Path,
        extra_args: list[str] | None = None,
        gc_stats: bool = True,
        kind: str = "reference",
    ) -> None:
        self.workdir = workdir
        self.extra_args = extra_args or []
        self.gc_stats = gc_stats
        self.kind = kind
        self.servers = []

    @property
    def label(self) -> str:
        return {"reference": "websockets.broadcast() reference", "picows": "picows reference"}[
            self.kind
        ]

    async def start(self) -> ReferenceDeployment:
        port = free_port()
        script = REFERENCE_SERVERS[self.kind]
        if self.gc_stats:
            command = [
                sys.executable,
                "-m",
                "bench.gcprobe",
                str(self.workdir / f"gc-{port}.json"),
                str(ROOT / "bench" / script),
            ]
        else:
            command = [sys.executable, str(ROOT / "bench" / script)]
        server = ServerProcess(
            self.kind,
            [*command, "--port", str(port), *self.extra_args],
            self.workdir / f"{self.kind}-{port}.log",
            port,
            orphan_guard=True,
        )
        self.servers = [server]
        await start_all(self.servers)
        return self

    async def observer_headers(self) -> dict[str, str]:
        return {"Cookie": "bench_user=observer"}

    async def mover_headers(self, count: int) -> list[dict[str, str]]:
        return [{"Cookie": f"bench_user=mover-{i}"} for i in range(count)]


class AppDeployment(Deployment):
    """``python run.py`` x ``processes`` on separate ports, one database, one broker."""

    kind = "app"

    def __init__(
        self,
        workdir: Path,
        processes: int = 1,
        database: str = "sqlite",
        broker: str = "memory",
        bcrypt_rounds: int = 4,
        redis_url: str = "redis://127.0.0.1:6379/0",
        pg_dsn: str = "postgresql://postgres@127.0.0.1:5432",
        extra_args: list[str] | None = None,
        gc_stats: bool = True,
        seed: Callable[[str, str], Awaitable[None]] | None = None,
    ) -> None:
        if processes > 1 and broker != "redis":
            raise ValueError("several app processes need the Redis broker")
        self.workdir = workdir
        self.processes = processes
        self.database = database
        self.broker = broker
        self.bcrypt_rounds = bcrypt_rounds
        self.redis_url = redis_url
        self.pg_dsn = pg_dsn.rstrip("/")
        self.extra_args = extra_args or []
        self.gc_stats = gc_stats
        self.servers = []
        self.prefix = f"bench-{uuid.uuid4().hex[:10]}"
        self.pg_name = ""
        self.data_dir = Path(tempfile.mkdtemp(prefix="app-", dir=workdir))
        self.secret = "bench-cookie-secret-" + uuid.uuid4().hex
        self._observer_headers: dict[str, str] | None = None
        self._movers: list[dict[str, str]] = []
        # Called with (database URL, cookie secret) once the database exists and before any
        # app process starts, so the app loads what was seeded (bench.users).
        self.seed = seed
        self.seed_seconds: float | None = None

    @property
    def label(self) -> str:
        return f"{self.processes} proc, {self.broker} broker, {self.database}"

    async def start(self) -> AppDeployment:
        if self.database == "postgresql":
            self.pg_name = await create_database(self.pg_dsn, "presence_bench")
            database_url = postgres_url(self.pg_dsn, self.pg_name)
        else:
            database_url = sqlite_url(self.data_dir / "presence.db")
        self.database_url = database_url
        if self.seed is not None:
            t = time.monotonic()
            await self.seed(database_url, self.secret)
            self.seed_seconds = round(time.monotonic() - t, 2)
        for i in range(self.processes):
            server = self._app_process(i, database_url)
            self.servers.append(server)
            # One at a time: the first one creates the schema.
            await start_all([server])
        return self

    def _app_process(self, i: int, database_url: str) -> AppProcess:
        """App process ``i`` (under bench.gcprobe when GC statistics are recorded)."""
        port = free_port()
        stats = str(self.workdir / f"gc-{port}.json")
        interpreter = (
            [sys.executable, "-m", "bench.gcprobe", stats] if self.gc_stats else [sys.executable]
        )
        flags = [
            "--database-url",
            database_url,
            "--cookie-secret",
            self.secret,
            "--node-id",
            f"bench-{i}",
        ]
        if self.broker == "redis":
            flags += ["--redis-url", self.redis_url, "--redis-prefix", self.prefix]
        return AppProcess(
            self.workdir,
            f"app-{i}",
            *flags,
            *self.extra_args,
            port=port,
            data_dir=self.data_dir,
            bcrypt_rounds=self.bcrypt_rounds,
            interpreter=interpreter,
            log_path=self.workdir / f"app-{port}.log",
            orphan_guard=True,
        )

    async def restart(self, timeout: float = 60.0) -> dict[str, int]:
        """SIGTERM every app process at once, wait for them to exit, start them again on the
        same ports, database and cookie secret. Times are ``time.time_ns()``."""
        t_term = time.time_ns()
        for server in self.servers:
            if server.proc is not None and server.proc.poll() is None:
                server.proc.send_signal(signal.SIGTERM)
        for server in self.servers:
            if server.proc is not None:
                await asyncio.to_thread(reap, server.proc, timeout)
        t_exit = time.time_ns()
        await start_all(self.servers, timeout)
        return {"t_term": t_term, "t_exit": t_exit, "t_ready": time.time_ns()}

    async def _signup(self, username: str, password: str = "bench-password") -> dict[str, str]:
        from presence_app.client import PresenceClient

        client = PresenceClient(self.servers[0].url)
        await client.signup(username, password)
        if "presence_session" not in client.cookies:
            await client.login(username, password)
        return {"Cookie": client.cookie_header()}

    async def observer_headers(self) -> dict[str, str]:
        if self._observer_headers is None:
            self._observer_headers = await self._signup("observer")
        return self._observer_headers

    async def mover_headers(self, count: int) -> list[dict[str, str]]:
        sem = asyncio.Semaphore(8)

        async def one(i: int) -> dict[str, str]:
            async with sem:
                return await self._signup(f"mover-{i}")

        start = len(self._movers)
        if count > start:
            self._movers += await asyncio.gather(*(one(i) for i in range(start, count)))
        return self._movers[:count]

    async def login_client(self) -> Any:
        from presence_app.client import PresenceClient

        return PresenceClient(self.servers[0].url)

    async def stop(self) -> None:
        await super().stop()
        if self.broker == "redis":
            try:
                await drop_keys(self.redis_url, self.prefix)
            except Exception as exc:  # pragma: no cover - best effort
                print(f"warning: could not delete Redis keys {self.prefix}:*: {exc}")
        if self.pg_name:
            try:
                await drop_database(self.pg_dsn, self.pg_name)
            except Exception as exc:  # pragma: no cover - best effort
                print(f"warning: could not drop database {self.pg_name}: {exc}")
            self.pg_name = ""
        shutil.rmtree(self.data_dir, ignore_errors=True)


def _ss_rows(ss: str, *query: str) -> list[list[str]]:
    """The TCP sockets ``ss -Htn <query>`` lists, each split into its columns."""
    out = subprocess.run([ss, "-Htn", *query], capture_output=True, text=True, timeout=10).stdout
    return [line.split() for line in out.splitlines()]


def established_to(port: int, client_ports: list[int]) -> set[int]:
    """Which of ``client_ports`` still have an ESTABLISHED server-side socket on ``port``
    (the server has not closed its end)."""
    wanted = set(client_ports)
    found: set[int] = set()
    ss = shutil.which("ss")
    if ss:
        for parts in _ss_rows(ss, "state", "established", f"( sport = :{port} )"):
            if len(parts) >= 4:
                peer = int(parts[3].rsplit(":", 1)[1])
                if peer in wanted:
                    found.add(peer)
        return found
    for conn in psutil.net_connections("tcp4"):  # pragma: no cover - fallback
        if (
            conn.status == psutil.CONN_ESTABLISHED
            and conn.laddr
            and conn.laddr.port == port
            and conn.raddr
            and conn.raddr.port in wanted
        ):
            found.add(conn.raddr.port)
    return found


def send_queue(port: int, client_port: int) -> int:
    """Bytes in the server-side kernel send queue of one connection (0 if unknown)."""
    ss = shutil.which("ss")
    if not ss:
        return 0
    for parts in _ss_rows(ss, f"( sport = :{port} and dport = :{client_port} )"):
        if len(parts) >= 3:
            try:
                return int(parts[2])
            except ValueError:
                return 0
    return 0


def kernel_counters() -> dict[str, int]:
    """System-wide network counters that explain latency outliers on loopback: packets
    dropped from the per-CPU backlog (net.core.netdev_max_backlog), retransmission timeouts,
    listen queue overflows."""
    out: dict[str, int] = {}
    try:
        with open("/proc/net/softnet_stat") as fh:
            out["softnet_dropped"] = sum(int(line.split()[1], 16) for line in fh if line.strip())
        for path, prefix, names in (
            ("/proc/net/netstat", "TcpExt:", ("TCPTimeouts", "ListenOverflows", "TCPLossProbes")),
            ("/proc/net/snmp", "Tcp:", ("RetransSegs",)),
        ):
            with open(path) as fh:
                rows = [line.split() for line in fh if line.startswith(prefix)]
            # /proc/net/snmp and netstat: a header line, then its values line
            for header, values in zip(rows[::2], rows[1::2], strict=False):
                table = dict(zip(header[1:], values[1:], strict=False))
                for name in names:
                    if name in table:
                        out[name] = int(table[name])
    except (OSError, ValueError, IndexError):
        pass
    return out


def busy_cpu() -> float:
    """CPU seconds the whole machine spent running processes (all CPUs together; interrupt
    and softirq time, much of it our own loopback traffic, is counted apart)."""
    t = psutil.cpu_times()
    return t.user + t.system + getattr(t, "nice", 0) + getattr(t, "steal", 0)


def irq_cpu() -> float:
    t = psutil.cpu_times()
    return getattr(t, "irq", 0) + getattr(t, "softirq", 0)


class Probe:
    """CPU and kernel counters over one measured phase: the server's, the generator's, this
    runner's, and what the rest of the machine used meanwhile (other people's work)."""

    def __init__(self, dep: Deployment, gen_cpu: Any) -> None:
        self.dep = dep
        self.gen_cpu = gen_cpu
        self.start: dict[str, Any] = {}

    async def _sample(self) -> dict[str, Any]:
        me = psutil.Process().cpu_times()
        if self.dep.gc_stats:
            await asyncio.sleep(gcprobe.DUMP_INTERVAL_S * 1.5)  # a fresh dump of GC statistics
        return {
            "wall": time.monotonic(),
            "time": time.time(),
            "gc": self.dep.gc_snapshot(),
            "server": self.dep.cpu(),
            "gen": await self.gen_cpu(),
            "runner": me.user + me.system,
            "busy": busy_cpu(),
            "irq": irq_cpu(),
            "net": kernel_counters(),
        }

    async def __aenter__(self) -> Probe:
        self.start = await self._sample()
        return self

    async def __aexit__(self, *exc: object) -> None:
        end = await self._sample()
        s = self.start
        ours = sum(end[k] - s[k] for k in ("server", "gen", "runner"))
        self.result = {
            "wall_s": round(end["wall"] - s["wall"], 2),
            "server_cpu_s": round(end["server"] - s["server"], 3),
            "generator_cpu_s": round(end["gen"] - s["gen"], 3),
            "runner_cpu_s": round(end["runner"] - s["runner"], 3),
            "other_cpu_s": round(max(end["busy"] - s["busy"] - ours, 0.0), 3),
            "irq_cpu_s": round(end["irq"] - s["irq"], 3),
            "net": {k: end["net"].get(k, 0) - v for k, v in s["net"].items()},
        }
        deltas = [
            gcprobe.delta(a, b, s["time"], end["time"])
            for a, b in zip(s["gc"], end["gc"], strict=False)
        ]
        gcs = [g for g in deltas if g]
        if gcs:
            self.result["server_gc"] = {
                key: (
                    max(g[key] for g in gcs)
                    if key == "longest_ms"
                    else round(sum(g[key] for g in gcs), 2)
                )
                for key in gcs[0]
            }
