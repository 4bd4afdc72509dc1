"""The distribution as a user installs it: a wheel built from the sources, its client extra in a fresh venv.

The README's install lines are run as written (in a copy of the sources, so the checkout stays clean): an app
gets the protocol and the SDK without the server stack, and the ``syncd`` command there says that the hub
extra is missing instead of failing with a traceback. Declared floors and ignored data dirs are checked too.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def run(*command: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=240
    )


def readme_command(pattern: str) -> list[str]:
    """The README's shell line matching ``pattern``, split into words (quotes removed)."""
    for line in (REPO / "README.md").read_text().splitlines():
        command = line.split("#", 1)[0].strip()
        if re.fullmatch(pattern, command):
            return [word.strip('"') for word in command.split()]
    raise AssertionError(f"README has no line matching {pattern!r}")


@pytest.mark.timeout(300)
def test_the_client_extra_installs_from_a_built_wheel_without_the_server_stack(tmp_path: Path) -> None:
    source = tmp_path / "syncd"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for package in ("protocol", "syncd", "clients"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))

    build = readme_command(r"pip wheel --no-deps -w dist \.")
    built = run(sys.executable, "-m", *build, cwd=source)
    assert built.returncode == 0, built.stderr
    (wheel,) = (source / "dist").glob("syncd-*.whl")

    env_dir = tmp_path / "app-env"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    install = readme_command(r'pip install "syncd-\S+\.whl\[client\]"')
    assert install == ["pip", "install", f"{wheel.name}[client]"], "the README names another wheel"
    installed = run(
        python, "-m", "pip", "install", "-c", REPO / "constraints.txt", f"{wheel}[client]", cwd=tmp_path
    )
    assert installed.returncode == 0, installed.stderr

    works = run(
        python, "-c", "import protocol, clients; from clients import SyncClient, SyncClientSync", cwd=tmp_path
    )
    assert works.returncode == 0, works.stderr
    no_server = run(python, "-c", "import starlette", cwd=tmp_path)
    assert no_server.returncode != 0  # the client extra brings no server stack

    command = run(env_dir / "bin" / "syncd", "serve", cwd=tmp_path)
    assert command.returncode == 1
    assert "the hub is not installed" in command.stderr and "[hub]" in command.stderr
    assert "Traceback" not in command.stderr and "ModuleNotFoundError" not in command.stderr


def test_the_uvicorn_floor_has_what_the_hub_transport_uses() -> None:
    """The class appeared in 0.35.0; ``disconnected`` and write flow control in 0.52.1 (checked upstream)."""
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    hub = PYPROJECT["project"]["optional-dependencies"]["hub"]
    assert "uvicorn>=0.52.1" in hub
    source = Path(sys.modules[WebSocketsSansIOProtocol.__module__].__file__ or "").read_text()
    assert "self.disconnected = " in source and "self.writable.clear()" in source


def test_every_declared_dependency_is_imported_by_the_part_that_declares_it() -> None:
    """No dependency that nothing imports: each extra's packages are imported by that extra's code."""
    parts = {"": ("protocol",), "client": ("clients",), "hub": ("syncd",), "dev": ("tests", "benchmarks")}
    upcoming = {"sqlalchemy"}  # the archive work under way
    needed_by_another = {"websockets": "uvicorn"}  # uvicorn's sans-I/O websocket protocol runs on it
    tools = {"pytest", "pytest-asyncio", "pytest-timeout", "pytest-cov", "mypy", "ruff"}  # run, not imported
    import_names = {"pyjwt": "jwt", "python-socketio": "socketio"}
    extras = {"": PYPROJECT["project"]["dependencies"], **PYPROJECT["project"]["optional-dependencies"]}
    for extra, requirements in extras.items():
        sources = "\n".join(
            path.read_text() for folder in parts[extra] for path in (REPO / folder).rglob("*.py")
        )
        for requirement in requirements:
            name = re.split(r"[\[<>=]", requirement, maxsplit=1)[0].strip().lower()
            if name in upcoming or name in tools:
                continue
            module = needed_by_another.get(name) if extra == "hub" else None
            module = module or import_names.get(name, name.replace("-", "_"))
            pattern = rf"^\s*(import|from) {module}\b|import_module\(\"{module}"
            assert re.search(pattern, sources, re.M), f"{requirement} ({extra or 'base'}) is imported nowhere"


def test_the_sdk_data_dirs_of_the_readme_examples_are_ignored_by_git(tmp_path: Path) -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    for directory in ("app-data", "pos-data"):
        assert f'data_dir="./{directory}"' in (REPO / "README.md").read_text()
        ignored = run("git", "check-ignore", "-q", f"{directory}/outbox.sqlite3", cwd=REPO)
        assert ignored.returncode == 0, f"{directory}/ is not ignored"
