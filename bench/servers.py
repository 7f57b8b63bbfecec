"""Processes the runner starts and always stops: app processes, the reference server, a
database created and dropped for the run, a Redis key prefix deleted at the end."""
from __future__ import annotations

import asyncio
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable

import psutil

from bench import gcprobe

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(rb"(Presence is running|Reference server running) at (http://\S+?)/? ")
REFERENCE_SERVERS = {"reference": "reference_server.py", "picows": "picows_server.py"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """PR_SET_PDEATHSIG: the child gets SIGTERM if the runner dies without cleaning up."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:
        pass


def http_json(url: str, timeout: float = 3.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"null")
        except ValueError:
            return exc.code, None


class ServerProcess:
    """One server process with its output in a log file; ready when it prints its banner."""

    def __init__(self, name: str, args: list[str], log_path: Path) -> None:
        self.name = name
        self.args = args
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    async def start(self, timeout: float = 30.0) -> "ServerProcess":
        # A restart appends to the same log: look for the banner after what is there already.
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=ROOT, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n"
                                   f"{self.log_tail()}")
            if READY.search(self.log_path.read_bytes()[offset:]):
                try:  # a server busy with a reconnect storm may answer late: ask again
                    status, _ = await asyncio.to_thread(http_json, self.url + "/healthz", 2.0)
                except (OSError, ValueError):
                    status = 0
                if status == 200:
                    return self
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready within {timeout} s:\n{self.log_tail()}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def rss(self) -> int:
        return psutil.Process(self.pid).memory_info().rss

    def cpu(self) -> float:
        times = psutil.Process(self.pid).cpu_times()
        return times.user + times.system

    def wait_exit(self, timeout: float) -> None:
        """Wait for a signalled process to exit (SIGKILL after ``timeout``)."""
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


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
        return sum(s.rss() for s in self.servers)

    def cpu(self) -> float:
        return sum(s.cpu() for s in self.servers)

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

    def __init__(self, workdir: Path, extra_args: list[str] | None = None,
                 gc_stats: bool = True, kind: str = "reference") -> None:
        self.workdir = workdir
        self.extra_args = extra_args or []
        self.gc_stats = gc_stats
        self.kind = kind
        self.servers = []

    @property
    def label(self) -> str:
        return {"reference": "websockets.broadcast() reference",
                "picows": "picows reference"}[self.kind]

    async def start(self) -> "ReferenceDeployment":
        port = free_port()
        script = REFERENCE_SERVERS[self.kind]
        if self.gc_stats:
            command = [sys.executable, "-m", "bench.gcprobe", str(self.workdir / f"gc-{port}.json"),
                       str(ROOT / "bench" / script)]
        else:
            command = [sys.executable, str(ROOT / "bench" / script)]
        server = ServerProcess(self.kind, [*command, "--port", str(port), *self.extra_args],
                               self.workdir / f"{self.kind}-{port}.log")
        server.port = port
        self.servers = [server]
        await server.start()
        return self

    async def observer_headers(self) -> dict[str, str]:
        return {"Cookie": "bench_user=observer"}

    async def mover_headers(self, count: int) -> list[dict[str, str]]:
        return [{"Cookie": f"bench_user=mover-{i}"} for i in range(count)]


class AppDeployment(Deployment):
    """``python run.py`` x ``processes`` on separate ports, one database, one broker."""

    kind = "app"

    def __init__(self, workdir: Path, processes: int = 1, database: str = "sqlite",
                 broker: str = "memory", bcrypt_rounds: int = 4,
                 redis_url: str = "redis://127.0.0.1:6379/0",
                 pg_dsn: str = "postgresql://postgres@127.0.0.1:5432",
                 extra_args: list[str] | None = None, gc_stats: bool = True,
                 seed: Callable[[str, str], Awaitable[None]] | None = None) -> None:
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

    async def start(self) -> "AppDeployment":
        if self.database == "postgresql":
            import asyncpg
            self.pg_name = f"presence_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
            conn = await asyncpg.connect(self.pg_dsn + "/postgres", timeout=5)
            try:
                await conn.execute(f'CREATE DATABASE "{self.pg_name}"')
            finally:
                await conn.close()
            database_url = "postgresql+asyncpg://" + self.pg_dsn.split("://", 1)[1] + \
                "/" + self.pg_name
        else:
            database_url = f"sqlite+aiosqlite:///{self.data_dir / 'presence.db'}"
        self.database_url = database_url
        if self.seed is not None:
            t = time.monotonic()
            await self.seed(database_url, self.secret)
            self.seed_seconds = round(time.monotonic() - t, 2)
        for i in range(self.processes):
            port = free_port()
            stats = str(self.workdir / f"gc-{port}.json")
            wrapper = [sys.executable, "-m", "bench.gcprobe", stats] if self.gc_stats \
                else [sys.executable]
            args = [*wrapper, str(ROOT / "run.py"), "--port", str(port),
                    "--data-dir", str(self.data_dir), "--database-url", database_url,
                    "--bcrypt-rounds", str(self.bcrypt_rounds), "--cookie-secret", self.secret,
                    "--node-id", f"bench-{i}"]
            if self.broker == "redis":
                args += ["--redis-url", self.redis_url, "--redis-prefix", self.prefix]
            args += self.extra_args
            server = ServerProcess(f"app-{i}", args, self.workdir / f"app-{port}.log")
            server.port = port
            self.servers.append(server)
            # One at a time: the first one creates the schema.
            await server.start()
        return self

    async def restart(self, timeout: float = 60.0) -> dict[str, int]:
        """SIGTERM every app process at once, wait for them to exit, start them again on the
        same ports, database and cookie secret. Times are ``time.time_ns()``."""
        t_term = time.time_ns()
        for server in self.servers:
            if server.proc is not None and server.proc.poll() is None:
                server.proc.send_signal(signal.SIGTERM)
        for server in self.servers:
            await asyncio.to_thread(server.wait_exit, timeout)
        t_exit = time.time_ns()
        await asyncio.gather(*(server.start(timeout) for server in self.servers))
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
                import redis.asyncio as aioredis
                client = aioredis.from_url(self.redis_url)
                try:
                    pattern = f"{self.prefix}:*"
                    keys = [k async for k in client.scan_iter(match=pattern, count=1000)]
                    if keys:
                        await client.delete(*keys)
                finally:
                    await client.aclose()
            except Exception as exc:  # pragma: no cover - best effort
                print(f"warning: could not delete Redis keys {self.prefix}:*: {exc}")
        if self.pg_name:
            import asyncpg
            try:
                conn = await asyncpg.connect(self.pg_dsn + "/postgres", timeout=5)
                try:
                    await conn.execute(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')
                finally:
                    await conn.close()
            except Exception as exc:  # pragma: no cover - best effort
                print(f"warning: could not drop database {self.pg_name}: {exc}")
            self.pg_name = ""
        shutil.rmtree(self.data_dir, ignore_errors=True)


def established_to(port: int, client_ports: list[int]) -> set[int]:
    """Which of ``client_ports`` still have an ESTABLISHED server-side socket on ``port``
    (the server has not closed its end)."""
    wanted = set(client_ports)
    found: set[int] = set()
    ss = shutil.which("ss")
    if ss:
        out = subprocess.run([ss, "-Htn", "state", "established", f"( sport = :{port} )"],
                             capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 4:
                peer = int(parts[3].rsplit(":", 1)[1])
                if peer in wanted:
                    found.add(peer)
        return found
    for conn in psutil.net_connections("tcp4"):  # pragma: no cover - fallback
        if conn.status == psutil.CONN_ESTABLISHED and conn.laddr and conn.laddr.port == port \
                and conn.raddr and conn.raddr.port in wanted:
            found.add(conn.raddr.port)
    return found


def send_queue(port: int, client_port: int) -> int:
    """Bytes in the server-side kernel send queue of one connection (0 if unknown)."""
    ss = shutil.which("ss")
    if not ss:
        return 0
    out = subprocess.run([ss, "-Htn", f"( sport = :{port} and dport = :{client_port} )"],
                         capture_output=True, text=True, timeout=10).stdout
    for line in out.splitlines():
        parts = line.split()
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
                ("/proc/net/netstat", "TcpExt:", ("TCPTimeouts", "ListenOverflows",
                                                  "TCPLossProbes")),
                ("/proc/net/snmp", "Tcp:", ("RetransSegs",))):
            with open(path) as fh:
                rows = [line.split() for line in fh if line.startswith(prefix)]
            for header, values in zip(rows[::2], rows[1::2]):
                table = dict(zip(header[1:], values[1:]))
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

    def __init__(self, dep: "Deployment", gen_cpu: Any) -> None:
        self.dep = dep
        self.gen_cpu = gen_cpu
        self.start: dict[str, Any] = {}

    async def _sample(self) -> dict[str, Any]:
        me = psutil.Process().cpu_times()
        if self.dep.gc_stats:
            await asyncio.sleep(gcprobe.DUMP_INTERVAL_S * 1.5)  # a fresh dump of GC statistics
        return {"wall": time.monotonic(), "time": time.time(), "gc": self.dep.gc_snapshot(),
                "server": self.dep.cpu(), "gen": await self.gen_cpu(),
                "runner": me.user + me.system, "busy": busy_cpu(), "irq": irq_cpu(),
                "net": kernel_counters()}

    async def __aenter__(self) -> "Probe":
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
        gcs = [gcprobe.delta(a, b, s["time"], end["time"]) for a, b in zip(s["gc"], end["gc"])]
        gcs = [g for g in gcs if g]
        if gcs:
            self.result["server_gc"] = {
                key: (max(g[key] for g in gcs) if key == "longest_ms"
                      else round(sum(g[key] for g in gcs), 2)) for key in gcs[0]}
