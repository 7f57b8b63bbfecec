"""Real processes for cluster tests: app servers, a private redis-server, nginx.

Everything binds 127.0.0.1 on free ports and is stopped by the fixture that started it.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.cluster.nginx_site import site_config, user_line

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_json(url: str, timeout: float = 3.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"null")
        except ValueError:  # e.g. nginx's own HTML error page
            return exc.code, None


def stop_process(proc: "subprocess.Popen[bytes] | None", sig: int = signal.SIGTERM,
                 timeout: float = 5.0) -> bool:
    """Signal ``proc`` and wait; kill it after ``timeout``. True if it stopped by itself."""
    if proc is None or proc.poll() is not None:
        return True
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        return False


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it is truthy; the timeout error says what it last saw."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except (OSError, ValueError) as exc:
            value = exc
        if value and not isinstance(value, Exception):
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what} "
                               f"(last: {value!r})")
        time.sleep(interval)


class AppProcess:
    """``python run.py`` as a subprocess; output goes to a log file next to the data dir."""

    def __init__(self, workdir: Path, name: str, database_url: str, redis_url: str,
                 prefix: str, *extra: str, port: int | None = None) -> None:
        self.name = name
        self.port = port or free_port()
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self.args = [sys.executable, str(ROOT / "run.py"), "--port", str(self.port),
                     "--data-dir", str(workdir / "data"), "--database-url", database_url,
                     "--bcrypt-rounds", "4", "--node-id", name, "--heartbeat-timeout", "2",
                     "--cookie-secret", "cluster-test-secret-0123456789", "--xheaders",
                     "--flush-interval", "0.1"]
        if redis_url:
            self.args += ["--redis-url", redis_url, "--redis-prefix", prefix]
        self.args += list(extra)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> "AppProcess":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log()}")
            return http_json(self.url + "/healthz", timeout=1)[0] == 200
        wait_until(ready, timeout, f"{self.name} to be healthy")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def health(self) -> tuple[int, Any]:
        return http_json(self.url + "/healthz")

    def terminate(self, timeout: float = 10.0) -> float:
        """SIGTERM; returns seconds until exit."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout)
        return time.monotonic() - started

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.terminate(10)
            except subprocess.TimeoutExpired:
                self.kill()


class RedisServer:
    """A private redis-server for tests that stop or restart Redis."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.extra = list(extra)  # e.g. "--replicaof", "127.0.0.1", "6379"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        binary = shutil.which("redis-server")
        assert binary, "redis-server not installed"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._pings, 10, "redis-server to answer")
        return self

    def _pings(self) -> bool:
        return redis_pings(self.port)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def redis_pings(port: int) -> bool:
    """A Redis (or Sentinel) on ``port`` answers PING."""
    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")


class RedisSentinel:
    """A Redis Sentinel (``redis-server <conf> --sentinel``) watching one primary as
    ``service``; tuned to notice a dead primary after ``down_after_ms``."""

    def __init__(self, workdir: Path, name: str, primary_port: int, service: str,
                 down_after_ms: int = 1000, quorum: int = 2) -> None:
        self.port = free_port()
        self.conf = workdir / f"{name}.conf"
        self.conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {workdir}\n"
            f"logfile {workdir / (name + '.log')}\n"
            f"sentinel monitor {service} 127.0.0.1 {primary_port} {quorum}\n"
            f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
            f"sentinel failover-timeout {service} 10000\n"
            f"sentinel parallel-syncs {service} 1\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "RedisSentinel":
        binary = shutil.which("redis-server")
        assert binary, "redis-server not installed"
        self.proc = subprocess.Popen([binary, str(self.conf), "--sentinel"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._pings, 10, "redis-sentinel to answer")
        return self

    def _pings(self) -> bool:
        return redis_pings(self.port)

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGKILL)


def nginx_config(listen_port: int, upstream_ports: list[int], workdir: Path,
                 tls: bool = False, http_port: int | None = None) -> str:
    """A runnable nginx.conf around the shipped deploy/nginx.conf (``site_config``): the
    app's server block on ``listen_port``, its port-80 redirect block on ``http_port``."""
    site = site_config(upstream_ports, listen_port, http_port or free_port(), workdir, tls)
    temp = workdir / "nginx-tmp"
    temp.mkdir(exist_ok=True)
    return f"""daemon off;
{user_line()}
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {workdir}/nginx-access.log;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
{site}
}}
"""


class Nginx:
    def __init__(self, workdir: Path, upstream_ports: list[int]) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.conf = workdir / "nginx.conf"
        self.conf.write_text(nginx_config(self.port, upstream_ports, workdir))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, binary: str) -> "Nginx":
        check = subprocess.run([binary, "-t", "-c", str(self.conf), "-p", str(self.workdir)],
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        self.proc = subprocess.Popen([binary, "-c", str(self.conf), "-p", str(self.workdir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: http_json(self.url + "/healthz")[0] == 200, 10, "nginx")
        return self

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGQUIT)


def env_flag() -> bool:
    return os.environ.get("CI", "").lower() == "true"
