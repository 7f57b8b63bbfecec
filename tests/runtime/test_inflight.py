"""The drain of a stop, in process over both databases: running requests finish, those still
waiting for bcrypt are refused with 503 having done nothing, new ones get 503 at once."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import select
from tornado.httpclient import AsyncHTTPClient

from presence_app.config import Settings
from presence_app.db.database import User
from tests.conftest import PASSWORD

SIGNUPS = 12


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return replace(settings, bcrypt_rounds=10, bcrypt_threads=1)  # ~60 ms a hash


@pytest.mark.gen_test(timeout=60)
async def test_drain_completes_or_refuses_each_sign_up(services: Any, make_client: Any) -> None:
    http = AsyncHTTPClient(force_instance=True, max_clients=SIGNUPS + 5)
    clients = [make_client() for _ in range(SIGNUPS)]
    try:
        for client in clients:
            client.http = http
        await asyncio.gather(*(c.xsrf() for c in clients))
        names = [f"drain{i:02d}" for i in range(SIGNUPS)]
        signups = [
            asyncio.ensure_future(c.signup(name, PASSWORD, check=False))
            for c, name in zip(clients, names, strict=True)
        ]
        while services.accounts.hasher.waiting < SIGNUPS // 2:
            await asyncio.sleep(0.005)
        await services.drain(0.1, grace=2.0)
        assert services.requests.count == 0
        codes = [r.code for r in await asyncio.gather(*signups)]
        late = await clients[0].request("GET", "/login")
        health = await clients[0].request("GET", "/healthz")
    finally:
        http.close()
    async with services.db.read() as session:
        created = set((await session.scalars(select(User.username))).all())
    assert set(codes) == {302, 503}, codes  # both paths taken, never a 500
    assert {n for n, code in zip(names, codes, strict=True) if code == 302} == created
    assert late.code == 503
    assert health.code == 503 and b"shutting down" in health.body
