"""Fixtures of the client suites: real ``run.py`` processes (tests/client/appserver.py)."""

from tests.client.appserver import broker_url, server, start_server

__all__ = ["broker_url", "server", "start_server"]
