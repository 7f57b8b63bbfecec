"""The shipped deploy/nginx.conf inside Debian's stock nginx layout, installed as
docs/DEPLOY.md says (``conf.d/presence.conf``), with the default site still enabled.

/etc/nginx (as ``apt-get install nginx`` leaves it) is copied to a temp dir; only what must
change to run as a test changes: the pid and log files, the include paths, the ports (the
default site and our port-80 block share one free port, as they share port 80), temp dirs
and a throwaway certificate. Before the fix, the default site's ``default_server`` took every
request ("Welcome to nginx!") and there was no TLS server at all."""

from __future__ import annotations

import asyncio
import http.client
import re
import shutil
import signal
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest

from presence_app.client import PresenceClient
from tests.conftest import PASSWORD, REDIS_URL, unavailable
from tests.support.nginx import (
    SERVER_NAME,
    nginx_binary,
    site_config,
    throwaway_cert,
    user_line,
)
from tests.support.ports import free_port
from tests.support.processes import stop_process
from tests.support.waiting import wait_until

STOCK = Path("/etc/nginx")
WELCOME = b"Welcome to nginx!"


def _sub(pattern: str, new: str, text: str) -> str:
    text, count = re.subn(pattern, new, text, flags=re.M)
    assert count >= 1, f"Debian's layout changed: {pattern!r}"
    return text


def debian_copy(workdir: Path, http_port: int) -> Path:
    """/etc/nginx copied to ``workdir/etc``; returns the copy's nginx.conf."""
    etc = workdir / "etc"
    shutil.copytree(STOCK, etc, symlinks=True)
    default = etc / "sites-enabled" / "default"
    assert default.is_symlink(), "the stock default site is not enabled"
    default.unlink()  # the copy's link must point into the copy, never at the real /etc
    default.symlink_to(etc / "sites-available" / "default")
    site = etc / "sites-available" / "default"
    text = _sub(
        r"^\s*listen 80 default_server;",
        f"\tlisten 127.0.0.1:{http_port} default_server;",
        site.read_text(),
    )
    site.write_text(_sub(r"^\s*listen \[::\]:80 default_server;\n", "", text))
    conf = etc / "nginx.conf"
    text = conf.read_text()
    text = _sub(r"^user www-data;", user_line(), text)
    text = _sub(r"^pid /run/nginx.pid;", f"pid {workdir}/nginx.pid;", text)
    text = _sub(r"^error_log /var/log/nginx/error.log;", f"error_log {workdir}/error.log;", text)
    text = _sub(r"access_log /var/log/nginx/access.log;", f"access_log {workdir}/access.log;", text)
    conf.write_text(_sub(r"include /etc/nginx/", f"include {etc}/", text))
    temp = workdir / "nginx-temp"
    (etc / "conf.d" / "00-test-temp.conf").write_text(
        "".join(
            f"{kind}_temp_path {temp}/{kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
    )
    temp.mkdir()
    return conf


class TLSClient(PresenceClient):
    """A PresenceClient that trusts the throwaway certificate (and checks it is served)."""

    def __init__(self, base_url: str, ca_certs: Path) -> None:
        super().__init__(base_url)
        self.ca_certs = str(ca_certs)

    async def request(
        self, method: str, path: str, body: Any = None, headers: Any = None, **kwargs: Any
    ) -> Any:
        return await super().request(method, path, body, headers, ca_certs=self.ca_certs, **kwargs)


def tls_context(workdir: Path) -> ssl.SSLContext:
    """Verifies nginx's certificate against the throwaway one site_config put in."""
    return ssl.create_default_context(cafile=str(throwaway_cert(workdir)[0]))


def fetch(
    port: int, path: str, host: str, tls: ssl.SSLContext | None = None, source: str = "127.0.0.1"
) -> Any:
    """One GET (over TLS with a context), redirects not followed: (status, headers, body)."""
    if tls is not None:
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            "127.0.0.1", port, timeout=5, source_address=(source, 0), context=tls
        )
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source, 0))
    try:
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


@pytest.fixture
def debian_nginx(tmp_path: Path) -> Any:
    binary = nginx_binary()
    if binary is None or not (STOCK / "sites-enabled" / "default").exists():
        unavailable(
            "Debian's nginx with its default site is not installed (apt-get install -y nginx)"
        )
    procs: list[subprocess.Popen[bytes]] = []

    def start(upstream_ports: list[int]) -> tuple[Path, int, int, subprocess.Popen[bytes]]:
        """Returns the copy's nginx.conf, the HTTP and HTTPS ports and the master process."""
        http_port, https_port = free_port(), free_port()
        conf = debian_copy(tmp_path, http_port)
        # The install step of docs/DEPLOY.md: the shipped file as conf.d/presence.conf.
        (conf.parent / "conf.d" / "presence.conf").write_text(
            site_config(upstream_ports, https_port, http_port, tmp_path)
        )
        args = [
            str(binary),
            "-c",
            str(conf),
            "-p",
            str(tmp_path),
            "-e",
            str(tmp_path / "error.log"),
        ]
        check = subprocess.run([*args, "-t"], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        proc = subprocess.Popen(
            [*args, "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        procs.append(proc)
        tls = tls_context(tmp_path)
        wait_until(
            lambda: fetch(https_port, "/healthz", SERVER_NAME, tls)[0] == 200,
            10,
            "nginx to proxy /healthz over TLS",
        )
        return conf, http_port, https_port, proc

    yield start
    for proc in procs:
        stop_process(proc, signal.SIGQUIT)


def test_shipped_site_wins_in_debian_layout_with_default_site(
    start_app: Any, debian_nginx: Any, sqlite_url: str, prefix: str
) -> None:
    a = start_app("node-a", sqlite_url, REDIS_URL, prefix)
    b = start_app("node-b", sqlite_url, REDIS_URL, prefix)
    conf, http_port, https_port, proc = debian_nginx([a.port, b.port])
    tls = tls_context(conf.parent.parent)

    # HTTPS: the app answers (any name: our TLS server is the default one), with HSTS.
    for host in (SERVER_NAME, f"127.0.0.1:{https_port}"):
        status, headers, body = fetch(https_port, "/login", host, tls)
        assert status == 200 and WELCOME not in body and b'name="username"' in body
        assert headers["Strict-Transport-Security"] == "max-age=31536000"
    assert fetch(https_port, "/healthz", SERVER_NAME, tls)[0] == 200
    # /metrics only from this host: 403 from another address (127.0.0.2 is loopback too).
    assert fetch(https_port, "/metrics", SERVER_NAME, tls, source="127.0.0.2")[0] == 403
    assert fetch(https_port, "/metrics", SERVER_NAME, tls)[0] != 403
    # HTTP for our name: a redirect to HTTPS although the default site is still enabled.
    status, headers, _ = fetch(http_port, "/login?next=%2F", SERVER_NAME)
    assert status == 301 and headers["Location"] == f"https://{SERVER_NAME}/login?next=%2F"
    # Other names still reach the default site: that is why DEPLOY.md removes it.
    assert WELCOME in fetch(http_port, "/", "127.0.0.1")[2]

    async def scenario() -> None:
        url = f"https://127.0.0.1:{https_port}"
        cert = throwaway_cert(conf.parent.parent)[0]
        alice, bob = TLSClient(url, cert), TLSClient(url, cert)
        signed = await alice.signup("alice", PASSWORD)
        assert all("secure" in c.lower() for c in signed.headers.get_list("Set-Cookie"))
        await bob.signup("bob", PASSWORD)
        watcher = await alice.connect(origin=url, ssl=tls)  # wss:// through nginx
        bob_sock = await bob.connect(origin=url, ssl=tls)
        await watcher.wait_status("bob", True, timeout=5)
        await bob_sock.close()
        await watcher.wait_status("bob", False, timeout=5)
        await watcher.close()

    asyncio.run(scenario())
    assert a.health()[1]["status"] == "ok" and b.health()[1]["status"] == "ok"

    # DEPLOY.md's step: remove the default site; then every name is redirected.
    (conf.parent / "sites-enabled" / "default").unlink()
    proc.send_signal(signal.SIGHUP)
    wait_until(
        lambda: fetch(http_port, "/", "127.0.0.1")[0] == 301,
        10,
        "nginx to reload without the default site",
    )
    status, headers, _ = fetch(http_port, "/login", "127.0.0.1")
    assert headers["Location"] == "https://127.0.0.1/login"
