"""The shipped ``deploy/nginx.conf``, made runnable in a test: only ports, the upstream
servers and the certificate paths change (a throwaway self-signed certificate), so what the
tests run is what is deployed. Used by the cluster harness, the e2e tests and the test of
Debian's stock nginx layout."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "deploy" / "nginx.conf"
SERVER_NAME = "presence.example.com"
CERT = f"/etc/letsencrypt/live/{SERVER_NAME}/fullchain.pem"
KEY = f"/etc/letsencrypt/live/{SERVER_NAME}/privkey.pem"


def _swap(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"deploy/nginx.conf changed shape: {old!r}"
    return text.replace(old, new)


def throwaway_cert(workdir: Path) -> tuple[Path, Path]:
    """A self-signed certificate for the server name and 127.0.0.1 (made once per dir)."""
    cert, key = workdir / "tls-cert.pem", workdir / "tls-key.pem"
    if not cert.exists():
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", f"/CN={SERVER_NAME}",
             "-addext", f"subjectAltName=DNS:{SERVER_NAME},IP:127.0.0.1",
             "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def site_config(upstream_ports: list[int], https_port: int, http_port: int, workdir: Path,
                tls: bool = True, template: str | None = None) -> str:
    """deploy/nginx.conf on 127.0.0.1: the redirect block on ``http_port``, the app block on
    ``https_port`` (TLS with a throwaway certificate; ``tls=False`` serves that same block
    without TLS, for tests of the proxying that are not about TLS)."""
    site = SITE.read_text() if template is None else template
    servers = "".join(f"    server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;\n"
                      for p in upstream_ports)
    site, count = re.subn(r"(?m)^    server 127\.0\.0\.1:\d+ .*\n", "", site)
    assert count >= 1, "deploy/nginx.conf changed shape: no upstream servers"
    site = _swap(site, "    keepalive 32;", servers + "    keepalive 32;")
    site = _swap(site, "    listen [::]:80;\n", "")
    site = _swap(site, "    listen [::]:443 ssl default_server;\n", "")
    site = _swap(site, "listen 80;", f"listen 127.0.0.1:{http_port};")
    site = _swap(site, "listen 443 ssl default_server;",
                 f"listen 127.0.0.1:{https_port}{' ssl' if tls else ''} default_server;")
    cert, key = throwaway_cert(workdir)
    site = _swap(site, CERT, str(cert))
    return _swap(site, KEY, str(key))


def user_line() -> str:
    """Workers of an nginx started as root run as nobody, who cannot write the temp dirs
    (under the test's private tmp) that large responses spill to."""
    return "user root;" if os.geteuid() == 0 else ""
