"""The cluster suite's app process: ``python run.py`` (tests.support.apps) with the flags
every cluster test shares: one database and one Redis prefix for all nodes, a node id, a
2 s heartbeat timeout, one cookie secret (a session works on every node), ``--xheaders``
(nginx in front). Everything binds 127.0.0.1 on free ports; the fixtures in conftest.py
stop what they start. Redis, nginx and the rest of the harness live in tests/support.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.apps import AppProcess as BaseAppProcess

COOKIE_SECRET = "cluster-test-secret-0123456789"


class AppProcess(BaseAppProcess):
    """One node: ``AppProcess(workdir, name, database_url, redis_url, prefix, *extra)``;
    ``redis_url=""`` runs it with the in-process broker. The nodes of one test share
    ``workdir/data`` and each logs to ``workdir/<name>.log``."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        database_url: str,
        redis_url: str,
        prefix: str,
        *extra: str,
        port: int | None = None,
    ) -> None:
        flags = [
            "--database-url",
            database_url,
            "--node-id",
            name,
            "--heartbeat-timeout",
            "2",
            "--cookie-secret",
            COOKIE_SECRET,
            "--xheaders",
            "--flush-interval",
            "0.1",
        ]
        if redis_url:
            flags += ["--redis-url", redis_url, "--redis-prefix", prefix]
        super().__init__(workdir, name, *flags, *extra, port=port, data_dir=workdir / "data")
