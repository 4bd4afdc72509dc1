"""The test run ends once its summary is printed, whatever a failing test left running.

Python waits, at exit, for every thread that is not a daemon. A test that fails before closing what it
opened can leave such a thread behind (aiosqlite's worker was one: pytest sat for 16 minutes after its
summary), and then the run never ends. After the last report, threads still alive get a few seconds to
finish; those that do not are named on stderr and the process exits with the tests' status at once. Its
coverage data is already saved by then (pytest-cov writes it when the session finishes).
"""

from __future__ import annotations

import os
import sys
import threading

import pytest

GRACE_S = 5.0
_STATUS = pytest.StashKey[int]()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_STATUS] = int(exitstatus)


def leftover_threads() -> list[threading.Thread]:
    """Threads that would keep the interpreter from exiting."""
    main = threading.main_thread()
    return [t for t in threading.enumerate() if t is not main and not t.daemon and t.is_alive()]


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    stuck = leftover_threads()
    for thread in stuck:
        thread.join(GRACE_S / max(1, len(stuck)))
    stuck = [t for t in stuck if t.is_alive()]
    if not stuck:
        return
    names = ", ".join(t.name for t in stuck)
    sys.stdout.flush()
    sys.stderr.write(f"\nexit_guard: tests left threads running ({names}); exiting without them\n")
    sys.stderr.flush()
    os._exit(config.stash.get(_STATUS, 1))
