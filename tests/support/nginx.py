"""nginx in tests, running the shipped ``deploy/nginx.conf``.

Only what must change to run it as a test changes: ports, the upstream servers and the
certificate paths (a throwaway self-signed certificate), so what the tests run is what is
deployed. ``site_config`` renders the site (also dropped into Debian's stock layout by
tests/cluster/test_debian_nginx.py); ``nginx_config`` wraps it in a runnable nginx.conf;
``Nginx`` runs that in front of app processes.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

from tests.support.env import ROOT
from tests.support.http import http_json
from tests.support.ports import free_port
from tests.support.processes import stop_process
from tests.support.waiting import wait_until

SITE = ROOT / "deploy" / "nginx.conf"
SERVER_NAME = "presence.example.com"
CERT = f"/etc/letsencrypt/live/{SERVER_NAME}/fullchain.pem"
KEY = f"/etc/letsencrypt/live/{SERVER_NAME}/privkey.pem"


def nginx_binary() -> str | None:
    """The nginx to run (Debian puts it in /usr/sbin, not always on a user's PATH)."""
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
    )


def _swap(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"deploy/nginx.conf changed shape: {old!r}"
    return text.replace(old, new)


def throwaway_cert(workdir: Path) -> tuple[Path, Path]:
    """A self-signed certificate for the server name and 127.0.0.1 (made once per dir)."""
    cert, key = workdir / "tls-cert.pem", workdir / "tls-key.pem"
    if not cert.exists():
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                f"/CN={SERVER_NAME}",
                "-addext",
                f"subjectAltName=DNS:{SERVER_NAME},IP:127.0.0.1",
                "-keyout",
                str(key),
                "-out",
                str(cert),
            ],
            check=True,
            capture_output=True,
        )
    return cert, key


def site_config(
    upstream_ports: list[int],
    https_port: int,
    http_port: int,
    workdir: Path,
    tls: bool = True,
    template: str | None = None,
) -> str:
    """deploy/nginx.conf on 127.0.0.1: the redirect block on ``http_port``, the app block on
    ``https_port`` (TLS with a throwaway certificate; ``tls=False`` serves that same block
    without TLS, for tests of the proxying that are not about TLS)."""
    site = SITE.read_text() if template is None else template
    servers = "".join(
        f"    server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;\n" for p in upstream_ports
    )
    site, count = re.subn(r"(?m)^    server 127\.0\.0\.1:\d+ .*\n", "", site)
    assert count >= 1, "deploy/nginx.conf changed shape: no upstream servers"
    site = _swap(site, "    keepalive 32;", servers + "    keepalive 32;")
    site = _swap(site, "    listen [::]:80;\n", "")
    site = _swap(site, "    listen [::]:443 ssl default_server;\n", "")
    site = _swap(site, "listen 80;", f"listen 127.0.0.1:{http_port};")
    site = _swap(
        site,
        "listen 443 ssl default_server;",
        f"listen 127.0.0.1:{https_port}{' ssl' if tls else ''} default_server;",
    )
    cert, key = throwaway_cert(workdir)
    site = _swap(site, CERT, str(cert))
    return _swap(site, KEY, str(key))


def user_line() -> str:
    """Workers of an nginx started as root run as nobody, who cannot write the temp dirs
    (under the test's private tmp) that large responses spill to."""
    return "user root;" if os.geteuid() == 0 else ""


def nginx_config(
    listen_port: int,
    upstream_ports: list[int],
    workdir: Path,
    tls: bool = False,
    http_port: int | None = None,
) -> str:
    """A runnable nginx.conf around the shipped site (``site_config``): the app's server
    block on ``listen_port``, its port-80 redirect block on ``http_port``; pid, logs and
    temp dirs in ``workdir``."""
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
    """A private nginx running the shipped site (plain HTTP) in front of app processes on
    ``upstream_ports`` (its least_conn spreads the sockets over them); its files live in
    ``workdir/nginx``."""

    def __init__(
        self,
        workdir: Path,
        upstream_ports: list[int],
        binary: str | None = None,
    ) -> None:
        found = binary or nginx_binary()
        assert found, "nginx is not installed"
        self.binary = found
        self.dir = workdir / "nginx"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.conf = self.dir / "nginx.conf"
        self.conf.write_text(nginx_config(self.port, upstream_ports, self.dir))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _args(self) -> list[str]:
        # -e: the error log from the first moment, before the config's error_log applies.
        return [
            self.binary,
            "-c",
            str(self.conf),
            "-p",
            str(self.dir),
            "-e",
            str(self.dir / "nginx-error.log"),
        ]

    def start(self, timeout: float = 15.0) -> Nginx:
        """Check the config (``nginx -t``), start, return once it proxies ``/healthz``."""
        check = subprocess.run([*self._args(), "-t"], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        with open(self.dir / "stdout.log", "ab") as out:
            self.proc = subprocess.Popen(self._args(), stdout=out, stderr=subprocess.STDOUT)

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode}:\n{self.log()}")
            return http_json(self.url + "/healthz", timeout=1)[0] == 200

        wait_until(ready, timeout, "nginx to proxy /healthz")
        return self

    def stop(self) -> None:
        """SIGQUIT: a graceful stop (SIGKILL after 5 s)."""
        stop_process(self.proc, signal.SIGQUIT)

    def log(self) -> str:
        """The ends of nginx's output and error log."""
        text = ""
        for name in ("stdout.log", "nginx-error.log"):
            try:
                text += (self.dir / name).read_text(errors="replace")[-3000:]
            except OSError:
                pass
        return text
