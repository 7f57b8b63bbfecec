"""Server subprocesses: started with their output in a log file, ready once they print
their banner and answer ``/healthz``, stopped with SIGTERM (and SIGKILL if that is not
enough). The app (``apps.AppProcess``) and bench's reference servers are both one of these.
"""

from __future__ import annotations

import ctypes
import re
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from tests.support.env import ROOT
from tests.support.http import http_json
from tests.support.waiting import wait_until

#: The line a server prints (and flushes) once it listens: run.py, and bench's reference
#: servers (``websockets`` and picows).
READY = re.compile(r"(?:Presence is running|Reference server running) at (http://\S+/)")


def stop_process(
    proc: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM, timeout: float = 5.0
) -> bool:
    """Signal ``proc`` and wait; kill it after ``timeout``. True if it stopped by itself
    (or was not running)."""
    if proc is None or proc.poll() is not None:
        return True
    proc.send_signal(sig)
    return reap(proc, timeout)


def reap(proc: subprocess.Popen[Any], timeout: float) -> bool:
    """Wait for a signalled ``proc`` to exit; SIGKILL after ``timeout``. True if it exited
    by itself."""
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        return False


def die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """PR_SET_PDEATHSIG: the child gets SIGTERM if its parent dies without cleaning up."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:
        pass


class ServerProcess:
    """One server subprocess, stdout and stderr appended to ``log_path``.

    ``start()`` may be called again after the process exited (a restart): it looks for the
    banner only in what the new process writes.
    """

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        log_path: Path,
        port: int,
        env: Mapping[str, str] | None = None,
        cwd: Path = ROOT,
        orphan_guard: bool = False,
    ) -> None:
        self.name = name
        self.args = list(args)
        self.log_path = log_path
        self.port = port
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.orphan_guard = orphan_guard  # SIGTERM if the parent dies (die_with_parent)
        self.proc: subprocess.Popen[bytes] | None = None
        self.banner = ""  # the ready line of the latest start
        self._offset = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    def spawn(self) -> None:
        """Start the process without waiting for it (see ``wait_ready``)."""
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.banner = ""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.args,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=self.env,
                preexec_fn=die_with_parent if self.orphan_guard else None,
            )

    def start(self, timeout: float = 30.0, wait: bool = True) -> Self:
        """Spawn, and unless ``wait=False``, return once ready."""
        self.spawn()
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait for the banner, then for ``/healthz`` to answer 200 (with ``--processes``
        the banner comes before the workers listen; a server busy with a reconnect storm
        may answer late). Raises ``RuntimeError`` with the log if the process exits."""

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.log(4000)}"
                )
            if not self.banner:
                found = READY.search(self._new_output())
                if found is None:
                    return False
                line_end = found.string.find("\n", found.start())
                self.banner = found.string[found.start() : line_end if line_end >= 0 else None]
            return self.health(timeout=2.0)[0] == 200

        wait_until(ready, timeout, f"{self.name} to be ready")

    def _new_output(self) -> str:
        with open(self.log_path, "rb") as log:
            log.seek(self._offset)
            return log.read().decode("utf-8", "replace")

    def health(self, timeout: float = 3.0) -> tuple[int, Any]:
        """``/healthz``: (status, JSON body)."""
        return http_json(self.url + "/healthz", timeout)

    def log(self, tail: int | None = None) -> str:
        """The log (its last ``tail`` characters), or "" if there is none yet."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text if tail is None else text[-tail:]

    def restart(self, timeout: float = 30.0) -> Self:
        """``stop()`` then ``start()``: the same command line, so the same port (and, for
        the app, the same data directory); returns once the new process is ready."""
        self.stop()
        return self.start(timeout)

    def terminate(self, timeout: float = 10.0) -> float:
        """SIGTERM and wait: the seconds until it exited. ``subprocess.TimeoutExpired``
        if it is still running after ``timeout`` (it is left running)."""
        assert self.proc is not None, f"{self.name} was never started"
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout)
        return time.monotonic() - started

    def stop(self, timeout: float = 10.0, strict: bool = False) -> float:
        """SIGTERM, SIGKILL after ``timeout``: the seconds it took (0 if not running).
        ``strict``: an ``AssertionError`` (after the kill) if SIGTERM was not enough."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        started = time.monotonic()
        if not stop_process(self.proc, signal.SIGTERM, timeout) and strict:
            raise AssertionError(
                f"{self.name} did not stop within {timeout} s of SIGTERM:\n{self.log(4000)}"
            )
        return time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL (a crash: no cleanup in the process) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
