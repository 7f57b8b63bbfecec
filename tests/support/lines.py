"""A child process's standard output read line by line, for tests of commands that print as
they go (``presence watch``, a bot script): ``expect`` waits for the line a test needs."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any


class Lines:
    """``proc``'s stdout (a text pipe) read on a daemon thread, so a wait has a timeout and a
    silent process cannot hang the test; every line read is kept in ``seen``."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, name="lines", daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None, "start the process with stdout=subprocess.PIPE"
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)  # end of output

    def expect(self, match: Callable[[str], Any], timeout: float = 15.0) -> str:
        """The next line for which ``match`` is truthy (the lines before it are kept in
        ``seen``). ``AssertionError`` with every line seen if none comes within ``timeout``
        or the output ends first."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if match(line):
                return line
        raise AssertionError(f"no matching line within {timeout} s; got {self.seen}")

    def expect_json(self, match: Callable[[dict], Any], timeout: float = 15.0) -> dict:
        """``expect`` for a process printing one JSON object a line: the next object for
        which ``match`` is truthy."""
        line = self.expect(lambda text: match(json.loads(text)), timeout)
        return dict(json.loads(line))
