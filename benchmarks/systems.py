"""Start and stop the systems under test, each as its own server process on its own fresh Redis.

Every Redis is an :class:`~syncd.embedded.EmbeddedRedis` started here, on a free port in a temporary
directory, with the hub's default persistence (AOF, ``appendfsync everysec``): a benchmark never touches a
Redis it did not start. Process figures (RSS, CPU time) come from ``/proc``.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from benchmarks.dialects import TOKEN_SECRET, Dialect
from syncd.embedded import EmbeddedRedis

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit (children inherit it); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _cpu_line() -> list[int]:
    with open("/proc/stat") as stat:
        return [int(v) for v in stat.readline().split()[1:]]


def machine_busy_seconds() -> float:
    """CPU seconds every CPU of the machine spent busy (not idle, not waiting for I/O) since boot."""
    values = _cpu_line()
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / _CLK_TCK


def machine_steal_seconds() -> float:
    """CPU seconds this virtual machine's CPUs wanted to run but the hypervisor ran something else (steal)."""
    values = _cpu_line()
    return values[7] / _CLK_TCK if len(values) > 7 else 0.0


def wait_for_quiet(max_wait_s: float, below_cores: float = 0.3, window_s: float = 1.0) -> float:
    """Wait (up to ``max_wait_s``) until the machine is nearly idle — other work on a shared 2-core machine
    moves every figure (docs/traps.md §17) — and return the busy cores of the last window."""
    deadline = time.monotonic() + max_wait_s
    while True:
        before = machine_busy_seconds()
        time.sleep(window_s)
        busy = (machine_busy_seconds() - before) / window_s
        if busy < below_cores or time.monotonic() >= deadline:
            return round(busy, 2)


class System:
    """One system under test: its Redis and its server process (``syncd serve``, the floor or the peer)."""

    def __init__(self, name: Dialect, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.env = env or {}
        """Extra environment of the server process (e.g. ``SYNCD_METRICS=false``)."""
        self.workdir = workdir / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.redis = EmbeddedRedis(self.workdir / "redis-data")
        self.port = free_port()
        self.log_path = self.workdir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.name == "peer":
            return f"ws://127.0.0.1:{self.port}/socket.io/?EIO=4&transport=websocket"
        if self.name == "syncd":
            return f"ws://127.0.0.1:{self.port}/ws"
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        common = ["--port", str(self.port), "--redis-url", self.redis.url]
        if self.name == "syncd":
            return [sys.executable, "-m", "syncd", "serve", *common]
        return [sys.executable, "-m", f"benchmarks.{self.name}", *common]

    def start(self, timeout: float = 30.0) -> System:
        self.redis.start()
        env = {
            **os.environ,
            "SYNCD_TOKEN_SECRET": TOKEN_SECRET,
            "SYNCD_DATA_DIR": str(self.workdir / "hub-data"),
            "PYTHONUNBUFFERED": "1",
            **self.env,
        }
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=Path(__file__).parent.parent,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} server exited with {self.proc.returncode}:\n{self.log()}")
            if self._answers():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} server did not come up within {timeout}s:\n{self.log()}")

    def _answers(self) -> bool:
        if self.name == "syncd":
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as response:
                    return bool(response.status == 200)
            except (OSError, urllib.error.URLError):
                return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return True
        return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.redis.stop()

    def log(self, tail: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-tail:])

    def redis_pid(self) -> int:
        pid = self.redis.pid
        assert pid is not None
        return pid


@contextlib.contextmanager
def running(name: Dialect, workdir: Path) -> Iterator[System]:
    system = System(name, workdir)
    try:
        yield system.start()
    finally:
        system.stop()


@contextlib.contextmanager
def scratch_dir(keep: bool = False) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="syncd-bench-"))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)
