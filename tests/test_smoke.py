import pytest


@pytest.mark.gen_test
async def test_signup_login_ws(user_factory):
    alice = await user_factory("alice")
    sock = await alice.connect()
    assert sock.me == "alice"
    assert sock.online("alice") is True
    bob = await user_factory("bob")
    await sock.wait_status("bob", False)
    bsock = await bob.connect()
    await sock.wait_status("bob", True)
    await bsock.close()
    await sock.wait_status("bob", False)
