"""Debian's Chromium driven over its DevTools protocol directly, for measuring the page's
main thread as a user's browser runs it.

Playwright always enables the DevTools network domain on its pages, so the renderer reports
every WebSocket frame, payload and all, to the automation client. With 1,000 presence
frames in one burst that instrumentation costs about as much main-thread time as the
page's own work (measured: 80-160 ms stalls through Playwright, 20-75 ms without it, on this
machine). This browser is launched with the same flags as the e2e package's, and only the
Page and Runtime domains are used: nothing watches the network.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

from .helpers import CHROMIUM, LAUNCH_ARGS


class RawChromium:
    def __init__(self, user_data_dir: Path) -> None:
        self.user_data_dir = user_data_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.ws: ClientConnection | None = None
        self.exits = contextlib.ExitStack()
        self.next_id = 0

    def start(self, timeout: float = 20.0) -> RawChromium:
        self.user_data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                *LAUNCH_ARGS,
                f"--user-data-dir={self.user_data_dir}",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = self.user_data_dir / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while True:
            if port_file.exists() and port_file.read_text().strip():
                port = int(port_file.read_text().split()[0])
                try:
                    with urllib.request.urlopen(
                        f"http://127.0.0.1:{port}/json/list", timeout=2
                    ) as response:
                        targets = json.load(response)
                    page = next(t for t in targets if t["type"] == "page")
                    break
                except (OSError, StopIteration, ValueError):
                    pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{CHROMIUM} did not offer a page to debug")
            time.sleep(0.1)
        self.ws = self.exits.enter_context(
            connect(page["webSocketDebuggerUrl"], max_size=None, proxy=None)
        )
        self.call("Page.enable")
        return self

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One command; events that arrive meanwhile are dropped (none are needed)."""
        assert self.ws is not None
        self.next_id += 1
        mine = self.next_id
        self.ws.send(json.dumps({"id": mine, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=30))
            if message.get("id") == mine:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout} s waiting for {expression}")
            time.sleep(0.05)

    def open(self, url: str, cookie: str, init_script: str) -> None:
        """Loads ``url`` with a session cookie (``name=value``) and a script run first."""
        name, value = cookie.split("=", 1)
        self.call("Page.addScriptToEvaluateOnNewDocument", source=init_script)
        self.call(
            "Storage.setCookies",
            cookies=[
                {
                    "name": name,
                    "value": value,
                    "domain": "127.0.0.1",
                    "path": "/",
                    "httpOnly": True,
                    "sameSite": "Lax",
                }
            ],
        )
        self.call("Page.navigate", url=url)

    def stop(self) -> None:
        try:
            self.exits.close()
        except Exception:  # the browser may already be gone
            pass
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
