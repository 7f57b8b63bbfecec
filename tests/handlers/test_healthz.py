"""/healthz: a readiness signal for load balancers and supervisors."""

from __future__ import annotations

import json

import pytest

from presence_app.db.database import Database


@pytest.mark.gen_test
async def test_healthz_ok_with_the_node_id(make_client, services):
    response = await make_client().request("GET", "/healthz")  # no login needed
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    body = json.loads(response.body)
    assert body["status"] == "ok"
    assert body["node"] == services.settings.node_id == "test-node"
    assert body["broker"] == ("redis" if services.settings.redis_url else "memory")
    assert "reason" not in body


@pytest.mark.gen_test
async def test_healthz_counts_sockets_and_online_users(make_client, user_factory):
    alice = await user_factory("alice")
    first = await alice.connect()
    await alice.connect()
    # The counters come from the same view as /api/users: current once the event went out.
    await first.wait_for(lambda m: m.get("type") == "presence" and m["username"] == "alice")
    body = json.loads((await make_client().request("GET", "/healthz")).body)
    assert body["sockets"] == 2
    assert body["online_users"] == 1


@pytest.mark.gen_test
async def test_healthz_is_503_with_a_reason_when_the_database_is_gone(
    make_client, services, monkeypatch
):
    # A real database client pointed at a port nobody listens on.
    gone = Database("postgresql+asyncpg://nobody@127.0.0.1:1/nothing")
    monkeypatch.setattr(services, "db", gone)
    try:
        response = await make_client().request("GET", "/healthz")
    finally:
        monkeypatch.undo()
        await gone.close()
    assert response.code == 503
    body = json.loads(response.body)
    assert body["status"] != "ok"
    assert "database" in body["reason"]
    assert "Traceback" not in response.body.decode()
    assert (await make_client().request("GET", "/healthz")).code == 200
