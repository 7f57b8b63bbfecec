"""Passwords are taken verbatim; expired sessions are purged; the secret file is logged."""
from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from presence_app.db import Session

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.gen_test
async def test_passwords_keep_their_spaces(make_client: Any) -> None:
    owner = make_client()
    assert (await owner.signup("spacey", "  two spaces  ")).code == 302
    trimmed = make_client()
    assert (await trimmed.login("spacey", "two spaces", check=False)).code == 401
    exact = make_client()
    assert (await exact.login("spacey", "  two spaces  ", check=False)).code == 302


@pytest.mark.gen_test
async def test_expired_sessions_are_purged(services: Any, user_factory: Any) -> None:
    await user_factory("alice")
    await user_factory("bob")
    async with services.db.write() as session:
        await session.execute(update(Session).where(Session.user_id == 1).values(
            expires_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)))
    await services.sync.purge_sessions()
    async with services.db.read() as session:
        left = await session.scalar(select(func.count()).select_from(Session))
    assert left == 1


def test_generating_the_cookie_secret_is_logged(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import sys, run; sys.exit(run.main(sys.argv[1:]))",
         "--port", "0", "--data-dir", str(tmp_path),
         "--database-url", "postgresql://nobody@127.0.0.1:1/none"],
        cwd=ROOT, capture_output=True, text=True, timeout=30)
    # The database is unreachable, but only after the secret was generated and logged.
    assert result.returncode == 2
    assert "Generated a new cookie secret" in result.stderr
    assert (tmp_path / "cookie_secret").stat().st_mode & 0o777 == 0o600
