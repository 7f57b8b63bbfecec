"""Admin commands seen in a browser: a deleted user's row disappears live from the page, and
the deleted user's own tab goes to the login page (4001)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from .helpers import ROOT, assert_not_reloaded, expect, expect_status, mark_page, row, signup

pytestmark = pytest.mark.e2e


def test_deleted_user_disappears_live(server, new_context, artifacts):
    a_page = signup(new_context(server.url).new_page(), "alice")
    b_page = signup(new_context(server.url).new_page(), "bob")
    expect_status(a_page, "bob", "Online")
    mark_page(a_page)

    result = subprocess.run(
        [sys.executable, "run.py", "users", "delete", "bob", "--data-dir", str(server.data_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    # No Redis: the server finds out through its periodic database check (every 5 s).
    expect(row(a_page, "bob")).to_have_count(0, timeout=15_000)
    expect(a_page.locator("#announcer")).to_contain_text("bob was removed")
    a_page.screenshot(path=artifacts("bob-removed"))
    b_page.wait_for_url(re.compile(r"/login"), timeout=15_000)
    assert_not_reloaded(a_page)
