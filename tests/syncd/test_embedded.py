"""The embedded server: discovery, persistence across restarts, crashes, and no orphan processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from syncd.embedded import EmbeddedRedis, EmbeddedRedisError, bundled_binary, find_server_binary, running_url

VENV_BIN = str(Path(sys.executable).parent)
REPO = Path(__file__).resolve().parents[2]


def process_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie awaiting a reaper counts as exited)."""
    stat = Path(f"/proc/{pid}/stat")
    if stat.parent.parent.exists():  # Linux: /proc tells zombies apart from live processes
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        except (FileNotFoundError, ProcessLookupError):
            return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def wait_until(condition: Callable[[], bool], *, within: float = 20.0) -> bool:
    """Poll ``condition`` until true or ``within`` seconds pass: a bound on waiting, not a timing check."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def client(server: EmbeddedRedis) -> redis.Redis:
    return redis.Redis.from_url(server.url)


def test_discovery_prefers_redis_server_then_valkey_server_on_the_given_path(tmp_path: Path) -> None:
    only_valkey, both = tmp_path / "only-valkey", tmp_path / "both"
    for directory, names in ((only_valkey, ["valkey-server"]), (both, ["valkey-server", "redis-server"])):
        directory.mkdir()
        for name in names:
            (directory / name).symlink_to(bundled_binary())
    assert find_server_binary(str(only_valkey)) == only_valkey / "valkey-server"
    assert find_server_binary(str(both)) == both / "redis-server"


def test_starts_the_server_found_on_path(tmp_path: Path) -> None:
    # A PATH holding a server makes the test independent of what this machine has installed.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "valkey-server").symlink_to(bundled_binary())
    with EmbeddedRedis(tmp_path / "data", path=str(bin_dir)) as server:
        assert server.binary == bin_dir / "valkey-server"
        with client(server) as conn:
            assert conn.ping()
            assert conn.info("server")["process_id"] == server.pid


def test_starts_the_first_server_on_the_real_path(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as server:
        assert server.binary == find_server_binary()
        assert server.name in ("redis", "valkey")
        with client(server) as conn:
            assert conn.ping()


def test_falls_back_to_the_bundled_valkey_when_path_has_no_server(tmp_path: Path) -> None:
    assert shutil.which("redis-server", path=VENV_BIN) is None
    assert shutil.which("valkey-server", path=VENV_BIN) is None
    with EmbeddedRedis(tmp_path, path=VENV_BIN) as server:
        assert server.binary == bundled_binary()
        assert server.name == "valkey"
        with client(server) as conn:
            assert conn.info("server")["valkey_version"] == server.version


def test_state_survives_stop_and_start_on_the_same_data_dir(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as first, client(first) as conn:
        conn.set("cart:m1", b"2 apples")
    assert (tmp_path / "redis" / "appendonlydir").is_dir()
    with EmbeddedRedis(tmp_path) as second, client(second) as conn:
        assert conn.get("cart:m1") == b"2 apples"
        assert conn.info("persistence")["aof_enabled"] == 1
        assert conn.config_get("save") == {"save": ""}
        assert conn.config_get("appendfsync") == {"appendfsync": "everysec"}


def test_kill_then_restart_keeps_port_directory_and_acked_writes(
    redis_server: EmbeddedRedis,
) -> None:
    with client(redis_server) as conn:
        conn.set("k", b"v")
    url, old_pid = redis_server.url, redis_server.pid
    assert old_pid is not None
    redis_server.kill()
    assert process_gone(old_pid)
    assert not redis_server.running
    with client(redis_server) as conn, pytest.raises(redis.ConnectionError):
        conn.ping()
    redis_server.restart()
    assert redis_server.url == url
    assert redis_server.pid != old_pid
    with client(redis_server) as conn:
        # SIGKILL does not lose acked writes: they are in the page cache (docs/traps.md §1).
        assert conn.get("k") == b"v"


def test_restart_of_a_running_server_is_graceful(redis_server: EmbeddedRedis) -> None:
    with client(redis_server) as conn:
        conn.set("k", b"v")
    redis_server.restart()
    with client(redis_server) as conn:
        assert conn.get("k") == b"v"


def test_stop_leaves_no_process_and_is_idempotent(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path).start()
    pid = server.pid
    assert pid is not None
    server.stop()
    assert process_gone(pid)
    assert server.pid is None
    server.stop()


def test_temporary_data_dir_is_removed_on_stop() -> None:
    server = EmbeddedRedis().start()
    assert server.server_dir.is_dir()
    server.stop()
    assert not server.data_dir.exists()


def test_a_second_server_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as server:
        with pytest.raises(EmbeddedRedisError, match="in use") as refused:
            EmbeddedRedis(tmp_path).start()
        assert str(os.getpid()) in str(refused.value)
        assert server.running


def test_a_failed_start_reports_the_server_log_and_leaves_nothing_behind(tmp_path: Path) -> None:
    broken = EmbeddedRedis(tmp_path, extra_args=["--no-such-directive", "1"])
    with pytest.raises(EmbeddedRedisError, match="no-such-directive"):
        broken.start()
    assert broken.pid is None
    with EmbeddedRedis(tmp_path) as server, client(server) as conn:  # the lock was released
        assert conn.ping()


def test_options_for_tests_appendonly_off_fsync_always_and_extra_args(
    redis_server_factory: Callable[..., EmbeddedRedis],
) -> None:
    volatile = redis_server_factory(appendonly=False)
    with client(volatile) as conn:
        assert conn.info("persistence")["aof_enabled"] == 0
    strict = redis_server_factory(appendfsync="always", extra_args=["--maxmemory", "64mb"])
    with client(strict) as conn:
        assert conn.config_get("appendfsync") == {"appendfsync": "always"}
        assert conn.config_get("maxmemory") == {"maxmemory": str(64 * 1024 * 1024)}
    volatile.stop()
    strict.stop()


def test_cluster_node_gets_a_port_whose_bus_port_is_free(
    redis_server_factory: Callable[..., EmbeddedRedis],
) -> None:
    node = redis_server_factory(extra_args=["--cluster-enabled", "yes"])
    assert node.port + 10_000 <= 65_535
    with client(node) as conn:
        assert conn.info("cluster")["cluster_enabled"] == 1
    node.stop()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
def test_server_does_not_outlive_a_parent_killed_with_sigkill(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from syncd.embedded import EmbeddedRedis
        server = EmbeddedRedis({str(tmp_path)!r}).start()
        print(server.pid, flush=True)
        time.sleep(600)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        assert not process_gone(pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert wait_until(lambda: process_gone(pid)), f"server {pid} outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()


def test_a_secure_server_refuses_connections_without_its_password_and_keeps_its_files_private(
    tmp_path: Path,
) -> None:
    with EmbeddedRedis(tmp_path, secure=True) as server:
        assert server.password is not None
        with (
            redis.Redis(host=server.host, port=server.port) as stranger,
            pytest.raises(redis.AuthenticationError),
        ):
            stranger.get("cart:m1")
        with (
            redis.Redis(host=server.host, port=server.port, password="guess") as guesser,
            pytest.raises(redis.AuthenticationError),
        ):
            guesser.ping()
        with client(server) as conn:  # the URL carries the password
            assert conn.ping()
        server_dir = tmp_path / "redis"
        assert server_dir.stat().st_mode & 0o777 == 0o700
        for name in ("password", "syncd-redis.conf", "url"):
            assert (server_dir / name).stat().st_mode & 0o777 == 0o600, name
        assert (server_dir / "password").read_text().strip() == server.password
        assert running_url(tmp_path) == server.url
        cmdline = Path(f"/proc/{server.pid}/cmdline")
        if cmdline.exists():  # Linux: what any local account can read about the process
            assert server.password.encode() not in cmdline.read_bytes()
        first_password = server.password
    assert running_url(tmp_path) is None  # removed on stop
    with EmbeddedRedis(tmp_path, secure=True) as again:
        assert again.password == first_password  # kept across restarts in the data dir
        with client(again) as conn:
            assert conn.ping()
