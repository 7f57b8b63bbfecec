"""Packaging: ``pip install .`` gives a working ``presence`` command anywhere on the machine.

The slow test builds a fresh venv, installs the project into it and runs the installed
server from a directory outside the repository (templates and static files found, the
README's client snippet importable and working). The fast ones guard what that install
relies on: every package listed in pyproject.toml, pins inside its ranges, the version,
the asset lookup, the admin dispatch, a server that does not import websockets.
"""

from __future__ import annotations

import http.client
import importlib
import importlib.util
import re
import select
import shutil
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

import run
from handlers.app import asset_dir
from presence_app.runtime.version import checkout_version, version
from tests.support.apps import STOP_SECONDS, URL_LINE, clean_env
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: Packages whose directory is not their dotted path (pyproject.toml's package-dir).
MAPPED = PYPROJECT["tool"]["setuptools"]["package-dir"]
#: Not part of a clean clone, or not needed to build one.
COPY_IGNORE = shutil.ignore_patterns(
    ".git",
    "__pycache__",
    "*.pyc",
    ".mypy_cache",
    ".pytest_cache",
    ".hypothesis",
    "data",
    "results",
    "artifacts",
    "build",
    "*.egg-info",
    "venv",
    "node_modules",
)
HAS_ADMIN = importlib.util.find_spec("presence_app.admin.cli") is not None


def python_packages_on_disk() -> set[str]:
    """Every directory of presence_app/ and handlers/ holding Python code, dotted."""
    found = set()
    for top in ("presence_app", "handlers"):
        for path in (ROOT / top).rglob("*.py"):
            if "__pycache__" not in path.parts:
                found.add(".".join(path.parent.relative_to(ROOT).parts))
    return found


def test_every_package_on_disk_is_listed_in_pyproject():
    """The package list is explicit (templates/ and static/ are mapped into handlers, which
    packages.find cannot do): a new subpackage must be added there or installs lack it."""
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    missing = python_packages_on_disk() - listed
    assert not missing, f"add {sorted(missing)} to [tool.setuptools] packages in pyproject.toml"
    for package in listed - python_packages_on_disk():
        assert package in MAPPED and (ROOT / MAPPED[package]).is_dir(), package


def pins(path: Path) -> dict[str, Requirement]:
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-r"):
            requirement = Requirement(line)
            found[requirement.name.lower()] = requirement
    return found


def declared(extra: str | None) -> dict[str, Requirement]:
    project = PYPROJECT["project"]
    lines = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    found = {}
    for line in lines:
        requirement = Requirement(line)
        if requirement.name != "presence":  # presence[client] and the like
            found[requirement.name.lower()] = requirement
    return found


def test_requirements_pins_fall_inside_the_pyproject_ranges():
    """requirements*.txt are the sets CI tests; the package must accept exactly those."""
    runtime = pins(ROOT / "requirements.txt")
    extras = {name: declared(name) for name in PYPROJECT["project"]["optional-dependencies"]}
    ranges = {**declared(None)}
    for extra in extras.values():
        ranges.update(extra)
    everything = {**runtime, **pins(ROOT / "requirements-dev.txt")}
    assert set(everything) == set(ranges), "requirements*.txt and pyproject.toml differ"
    for name, pin in everything.items():
        version_pinned = next(iter(pin.specifier)).version
        assert ranges[name].specifier.contains(version_pinned), (name, str(ranges[name]))
        assert pin.extras == ranges[name].extras, name
    # The server's own dependencies are exactly the runtime pins but websockets (client only).
    assert set(declared(None)) == set(runtime) - {"websockets"}
    assert set(extras["client"]) == {"websockets"}


def test_the_server_does_not_import_websockets():
    """websockets is the client extra: run.py, the web layer and the services work without."""
    code = (
        "import sys, run, handlers, presence_app.services; "
        "assert 'websockets' not in sys.modules, 'websockets imported'"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def test_version_in_a_checkout_comes_from_pyproject(tmp_path):
    assert version() == PYPROJECT["project"]["version"]
    done = subprocess.run(
        [sys.executable, "run.py", "--version"],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout) == (0, f"run.py {version()}\n"), done.stderr
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "other"\nversion = "9"\n')
    assert checkout_version(tmp_path) is None  # someone else's project is not ours
    assert checkout_version(tmp_path / "absent") is None


@pytest.mark.parametrize(
    "layout,expected",
    [
        ("installed", "pkg/templates"),  # site-packages/handlers/templates
        ("checkout", "templates"),  # the repository's top-level templates/
        ("both", "pkg/templates"),  # an installed copy never reads a neighbour's files
    ],
)
def test_asset_dir_prefers_the_shipped_copy(tmp_path, layout, expected):
    package_dir = tmp_path / "pkg"
    package_dir.mkdir()
    if layout in ("installed", "both"):
        (package_dir / "templates").mkdir()
    if layout in ("checkout", "both"):
        (tmp_path / "templates").mkdir()
        (tmp_path / "pyproject.toml").write_text("")
    assert asset_dir("templates", package_dir) == tmp_path / expected


def test_asset_dir_missing_is_a_clear_error(tmp_path):
    """No pyproject.toml beside: site-packages/templates of another package is not ours."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "templates").mkdir()
    with pytest.raises(RuntimeError, match="templates/ directory is missing"):
        asset_dir("templates", tmp_path / "pkg")


@pytest.mark.parametrize(
    "argv", [["users", "list"], ["db", "upgrade"], ["users", "disable", "alice", "--data-dir", "x"]]
)
@pytest.mark.skipif(not HAS_ADMIN, reason="presence_app.admin.cli not in this branch yet")
def test_admin_commands_are_dispatched(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> None:
    admin = importlib.import_module("presence_app.admin.cli")
    seen: list[list[str]] = []

    def fake_main(args: list[str]) -> int:
        seen.append(args)
        return 3

    monkeypatch.setattr(admin, "main", fake_main)
    assert run.main(argv) == 3
    assert seen == [argv]


@pytest.mark.skipif(not HAS_ADMIN, reason="presence_app.admin.cli not in this branch yet")
def test_run_py_users_help():
    done = subprocess.run(
        [sys.executable, "run.py", "users", "--help"],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "reset-password" in done.stdout


def test_admin_commands_missing_is_a_one_line_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "presence_app.admin.cli", None)  # import fails by that name
    assert run.main(["users", "list"]) == 2
    assert (
        capsys.readouterr().err == "run.py: error: 'users' commands are not available "
        "in this version\n"
    )


def test_server_options_are_not_taken_for_commands(capsys):
    """Only a first argument names a command: ``--node-id users`` is an ordinary option."""
    with pytest.raises(SystemExit) as stopped:
        run.main(["--node-id", "users", "--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out == f"run.py {version()}\n"


# --- pip install . into a fresh venv -------------------------------------------------------


def readme_client_snippet() -> str:
    """The README's scripted-client example, exactly as a user would copy it."""
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"A scripted client.*?```python\n(.*?)```", readme, re.S)
    assert found, "README.md: the scripted client example is gone"
    return found.group(1)


def snippet_program(base_url: str) -> str:
    """The snippet inside an async main, with bob signed up and online beforehand (it waits
    for him) and alice signed up (it logs her in)."""
    snippet = readme_client_snippet().replace("http://127.0.0.1:8888", base_url)
    return textwrap.dedent("""\
        import asyncio

        async def main():
            from presence_app.client import PresenceClient as Setup
            await Setup({base!r}).signup("alice", "correct horse battery")
            bob = Setup({base!r})
            await bob.signup("bob", "correct horse battery")
            await bob.login("bob", "correct horse battery")
            bob_sock = await bob.connect()
        {snippet}
            print("snippet ok", sock.online("bob"))
            await bob_sock.__aexit__(None, None, None)
            await sock.__aexit__(None, None, None)

        asyncio.run(main())
        """).format(base=base_url, snippet=textwrap.indent(snippet, "    "))


def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    """One GET, redirects not followed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def wait_for_url(proc: subprocess.Popen[str], timeout: float = 30.0) -> str:
    """The URL line the server prints (and flushes) once it listens; select() bounds the
    wait, so a server that hangs silently fails the test instead of blocking it."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([proc.stdout], [], [], remaining)
        line = proc.stdout.readline() if readable else ""
        found = URL_LINE.search(line)
        if found:
            return found.group(1)
        if readable and not line:  # end of output: the server exited
            break
    pytest.fail(f"presence printed no URL line (exit code {proc.poll()})")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A copy of the working tree (a clean clone's files) installed into a fresh venv.

    ``--system-site-packages`` plus ``--no-deps --no-build-isolation`` keeps it offline and
    fast (about 10 s): the dependencies come from this interpreter, the project itself is
    built by setuptools from pyproject.toml and installed like any wheel. ``--without-pip``:
    the venv's bundled pip and old setuptools (65 on 3.11) would shadow this interpreter's,
    which are the ones the requirements pin.
    """
    base = tmp_path_factory.mktemp("pkg")
    source, venv, outside = base / "src", base / "venv", base / "elsewhere"
    shutil.copytree(ROOT, source, ignore=COPY_IGNORE)
    outside.mkdir()
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        check=True,
        timeout=120,
    )
    done = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            str(source),
        ],
        cwd=outside,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return {"venv": venv, "outside": outside, "base": base}


@pytest.mark.cluster
def test_installed_package_runs_from_anywhere(installed):
    venv, outside = installed["venv"], installed["outside"]
    env = clean_env()
    env.pop("PYTHONPATH", None)
    where = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import run, handlers, presence_app; print(run.__file__, handlers.__file__, "
            "presence_app.__file__)",
        ],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.returncode == 0, where.stderr
    for path in where.stdout.split():  # the installed copy, not the repository
        assert Path(path).is_relative_to(venv), path

    presence = str(venv / "bin" / "presence")
    done = subprocess.run(
        [presence, "--version"], cwd=outside, env=env, capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout) == (0, f"presence {version()}\n"), done.stderr

    admin = subprocess.run(
        [presence, "users", "--help"],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if HAS_ADMIN:
        assert admin.returncode == 0 and "reset-password" in admin.stdout, admin.stderr
    else:
        assert admin.returncode == 2 and "presence: error: 'users'" in admin.stderr

    port = free_port()
    stderr_path = installed["base"] / "stderr.log"
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen(
            [
                presence,
                "--port",
                str(port),
                "--data-dir",
                str(installed["base"] / "data"),
                "--bcrypt-rounds",
                "4",
            ],
            cwd=outside,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    try:
        base_url = wait_for_url(proc)
        check_pages(port)
        client = subprocess.run(
            [str(venv / "bin" / "python"), "-c", snippet_program(base_url)],
            cwd=outside,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert client.returncode == 0, client.stderr[-2000:]
        assert client.stdout.strip() == "snippet ok True"
        who = subprocess.run(
            [presence, "who", base_url, "--user", "alice"],
            cwd=outside,
            env={**env, "PRESENCE_PASSWORD": "correct horse battery"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert who.returncode == 0, who.stderr  # the client CLI, from the installed copy
        assert set(who.stdout.split()) <= {"alice", "bob"}
        start = time.monotonic()
        proc.terminate()
        assert proc.wait(timeout=STOP_SECONDS + 2) == 0, stderr_path.read_text()
        assert time.monotonic() - start < STOP_SECONDS
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert "Traceback" not in stderr_path.read_text()


@pytest.mark.cluster
def test_installed_package_ships_the_lua_scripts(installed):
    """The Redis backend reads its scripts from package data (importlib.resources): a wheel
    without them would fail only once Redis is configured."""
    env = clean_env()
    env.pop("PYTHONPATH", None)
    code = (
        "from presence_app.backends import scripts; from importlib import resources; "
        "folder = resources.files('presence_app.backends').joinpath('lua'); print(folder); "
        "print(*sorted(p.name for p in folder.iterdir() if p.name.endswith('.lua'))); "
        "print(len(scripts.lua('presence', 'attach')) > 0)"
    )
    done = subprocess.run(
        [str(installed["venv"] / "bin" / "python"), "-c", code],
        cwd=installed["outside"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    folder, names, loaded = done.stdout.splitlines()
    assert Path(folder).is_relative_to(installed["venv"]), folder
    shipped = sorted(p.name for p in (ROOT / "presence_app" / "backends" / "lua").glob("*.lua"))
    assert names.split() == shipped and loaded == "True"


def check_pages(port: int) -> None:
    """GET / redirects to the login page, which renders (templates found) and links a
    stylesheet and a script that are served (static files found, js/ included)."""
    status, headers, _ = get(port, "/")
    assert (status, headers.get("location")) == (302, "/login?next=%2F")
    status, _, body = get(port, "/login")
    assert status == 200
    page = body.decode()
    stylesheet = re.search(r'<link[^>]+href="(/static/[^"]+\.css[^"]*)"', page)
    assert stylesheet, page[:500]
    status, headers, _ = get(port, stylesheet.group(1))
    assert (status, headers["content-type"].split(";")[0]) == (200, "text/css")
    status, _, _ = get(port, "/static/js/main.js")
    assert status == 200
