"""``python run.py`` as a subprocess: the one way every suite (and bench) starts the app.

A suite adds its own flags (a database, Redis, a cookie secret); what is common is here:
a free port, a data directory, bcrypt cost 4, the log file, readiness, SIGTERM.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.support.env import ROOT
from tests.support.ports import free_port
from tests.support.processes import ServerProcess

#: run.py's banner in single-process mode: its URL and the serving process's pid.
URL_LINE = re.compile(r"Presence is running at (http://\S+/) \(pid (\d+)")
#: run.py's promise: gone within 5 s of SIGTERM, sockets closed with 1001.
STOP_SECONDS = 5.0


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any PRESENCE_* setting: nothing but the flags configures it
    (and ``extra``, e.g. the ``PRESENCE_PASSWORD`` a client command reads)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}
    env.update(extra)
    return env


def app_args(
    port: int,
    data_dir: Path,
    *flags: str,
    bcrypt_rounds: int = 4,
    interpreter: Sequence[str] = (sys.executable,),
) -> list[str]:
    """The command line of one app process (``interpreter`` may wrap it, e.g. bench's
    ``python -m bench.gcprobe stats.json``)."""
    return [
        *interpreter,
        str(ROOT / "run.py"),
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--bcrypt-rounds",
        str(bcrypt_rounds),
        *flags,
    ]


class AppProcess(ServerProcess):
    """``python run.py`` on 127.0.0.1: ``flags`` after the common ones (a later flag wins,
    so ``flags`` may override the bcrypt cost). The log is ``workdir/<name>.log``; the
    data directory ``workdir/<name>-data`` unless given; the port is a free one unless
    given, and stays the same across restarts (``stop()`` then ``start()``)."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        *flags: str,
        port: int | None = None,
        data_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
        bcrypt_rounds: int = 4,
        interpreter: Sequence[str] = (sys.executable,),
        log_path: Path | None = None,
        orphan_guard: bool = False,
    ) -> None:
        port = port or free_port()
        self.data_dir = data_dir or workdir / f"{name}-data"
        args = app_args(
            port, self.data_dir, *flags, bcrypt_rounds=bcrypt_rounds, interpreter=interpreter
        )
        self.options = args[len(interpreter) + 1 :]  # everything after run.py
        super().__init__(
            name,
            args,
            log_path or workdir / f"{name}.log",
            port,
            env=env,
            orphan_guard=orphan_guard,
        )

    @property
    def printed(self) -> tuple[str, int]:
        """The URL and pid the banner of the latest start announced (single process)."""
        found = URL_LINE.search(self.banner)
        assert found is not None, f"not a single-process banner: {self.banner!r}"
        return found.group(1), int(found.group(2))

    def command(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """``python run.py <args>`` with this app's options, so an operator command
        (``users revoke-sessions NAME``, ``db current``) reaches its database and Redis;
        it runs to the end, its output captured as text."""
        return subprocess.run(
            [sys.executable, str(ROOT / "run.py"), *args, *self.options],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
