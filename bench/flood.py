"""A client that floods ``{"type":"ping"}`` and never reads: when is it dropped, what does it
cost the server (RSS), and how long does ``/healthz`` wait meanwhile.

    python -m bench.flood      # starts its own app on a free port (SQLite in a temp dir)
    python -m bench.flood --client-message-rate 0   # extra flags go to the app: here the
                                                    # rate limit off, the send-buffer bound alone
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

from presence_app.client import PresenceClient

ROOT = Path(__file__).resolve().parent.parent
SECONDS = 20.0


def ping_frame() -> bytes:
    data, mask = b'{"type":"ping"}', b"\x01\x02\x03\x04"
    return (
        bytes([0x81, 0x80 | len(data)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    )


def start_app(data_dir: str, extra: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    app = subprocess.Popen(
        [
            sys.executable,
            "run.py",
            "--port",
            str(port),
            "--data-dir",
            data_dir,
            "--bcrypt-rounds",
            "4",
            "--log-level",
            "WARNING",
            *extra,
        ],
        cwd=ROOT,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            break
        except OSError:
            time.sleep(0.1)
    return app, port


def upgrade(port: int, cookie: str) -> socket.socket:
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and never read
    raw.connect(("127.0.0.1", port))
    raw.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: 13\r\nCookie: {cookie}\r\n\r\n"
        ).encode()
    )
    head = raw.recv(4096)
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"upgrade refused: {head[:80]!r}")
    raw.setblocking(False)
    return raw


async def main() -> None:
    app, port = start_app(tempfile.mkdtemp(), sys.argv[1:])
    try:
        client = PresenceClient(f"http://127.0.0.1:{port}")
        await client.signup("flooder", "s3cret-pass")
        proc = psutil.Process(app.pid)
        rss0 = peak = proc.memory_info().rss
        raw = upgrade(port, client.cookie_header())
        await asyncio.sleep(0.3)  # after the snapshot: a flood before it is cut at 64 replies
        burst = ping_frame() * 1000
        started = next_probe = time.time()
        sent, closed_after, waits = 0, None, []
        while time.time() - started < SECONDS:
            try:
                sent += raw.send(burst)
            except BlockingIOError:
                await asyncio.sleep(0.001)
            except OSError:
                closed_after = time.time() - started
                break
            if time.time() >= next_probe:
                next_probe += 1.0
                peak = max(peak, proc.memory_info().rss)
                asked = time.time()
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10).read()
                waits.append((time.time() - asked) * 1000)
        peak = max(peak, proc.memory_info().rss)
        print(
            f"pings sent {sent // len(ping_frame()):,}; closed by the server after "
            f"{closed_after if closed_after is None else round(closed_after, 2)} s; server RSS "
            f"{rss0 / 2**20:.0f} -> peak {peak / 2**20:.0f} MiB; /healthz waits ms "
            f"{[round(w) for w in waits]}"
        )
    finally:
        stopped = time.time()
        app.terminate()
        app.wait()
        print(f"exit after SIGTERM {time.time() - stopped:.2f} s, code {app.returncode}")


if __name__ == "__main__":
    asyncio.run(main())
