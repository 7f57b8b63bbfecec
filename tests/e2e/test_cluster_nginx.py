"""Two app processes behind nginx, sharing Redis and one database: A and B on different
processes still see each other live."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.support.databases import sqlite_url
from tests.support.env import unavailable
from tests.support.nginx import Nginx, nginx_binary
from tests.support.redis import drop_keys
from tests.support.waiting import run_blocking, wait_until

from .helpers import (
    AppServer,
    assert_not_reloaded,
    expect,
    expect_status,
    mark_page,
    open_list,
    signup,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def cluster(tmp_path: Path, real_redis_url: str, request):
    """Two app processes sharing the machine's Redis and one SQLite file, behind the shipped
    nginx site; logs printed when the test fails."""
    binary = nginx_binary()
    if binary is None:
        unavailable("nginx is not installed")
    prefix = f"presence-e2e-{uuid.uuid4().hex[:10]}"
    common = [
        "--redis-url",
        real_redis_url,
        "--redis-prefix",
        prefix,
        "--database-url",
        sqlite_url(tmp_path / "shared.db"),
        "--cookie-secret",
        "e2e-cluster-secret-" + uuid.uuid4().hex,
        "--heartbeat-timeout",
        "3",
        "--xheaders",
    ]
    apps = []
    proxy = None
    try:
        for node in ("node-a", "node-b"):
            apps.append(AppServer(tmp_path, node, *common, "--node-id", node).start())
        proxy = Nginx(tmp_path, [app.port for app in apps], binary).start()
        yield proxy, apps
    finally:
        report = getattr(request.node, "rep_call", None)
        failed = report is not None and report.failed
        if proxy is not None:
            proxy.stop()
            if failed:
                print(f"--- nginx ---\n{proxy.log()}")
        for app in apps:
            app.stop()
            if failed:
                print(f"--- {app.name} ---\n{app.log(6000)}")
        run_blocking(drop_keys(real_redis_url, prefix))


def sockets_per_node(apps: list[AppServer]) -> dict[str, int]:
    return {app.name: app.health()[1]["sockets"] for app in apps}


def test_two_processes_behind_nginx_see_each_other(cluster, new_context, artifacts):
    proxy, apps = cluster
    a_page = signup(new_context(proxy.url).new_page(), "alice")
    a_node = wait_until(
        lambda: [n for n, c in sockets_per_node(apps).items() if c == 1],
        5,
        "alice's socket on one node",
    )[0]
    mark_page(a_page)

    b_context = new_context(proxy.url)
    b_page = signup(b_context.new_page(), "bob")
    # least_conn puts bob's socket on the other process.
    wait_until(
        lambda: sorted(sockets_per_node(apps).values()) == [1, 1],
        5,
        f"one socket on each node ({sockets_per_node(apps)})",
    )
    b_node = next(n for n, c in sockets_per_node(apps).items() if n != a_node and c == 1)
    assert a_node != b_node

    expect_status(a_page, "bob", "Online")
    expect_status(b_page, "alice", "Online")
    expect(a_page.locator("#online-count")).to_have_text("2")
    a_page.screenshot(path=artifacts("alice-sees-bob"))

    b_page.close()  # an event from node B reaches alice on node A
    expect_status(a_page, "bob", "Offline")

    b_page = open_list(b_context.new_page())
    wait_until(
        lambda: sorted(sockets_per_node(apps).values()) == [1, 1],
        5,
        "one socket on each node again",
    )
    expect_status(a_page, "bob", "Online")
    assert_not_reloaded(a_page)
    a_page.close()  # and one from node A reaches bob on node B
    expect_status(b_page, "alice", "Offline")
    b_page.screenshot(path=artifacts("bob-sees-alice-leave"))
