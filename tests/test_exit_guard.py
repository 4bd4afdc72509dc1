"""A test run that leaves a non-daemon thread blocked still ends, with the tests' status."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LEAKY = """
import threading

def test_leaves_a_thread_blocked_forever() -> None:
    threading.Thread(target=threading.Event().wait, name="leaked-worker").start()
"""


def test_a_run_that_leaves_a_thread_blocked_ends_after_its_summary(tmp_path: Path) -> None:
    (tmp_path / "test_leaky.py").write_text(LEAKY)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "tests.exit_guard",
            "-p",
            "no:cacheprovider",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,  # a guard against a hang, not a measurement: without the guard the run never ends
    )
    assert "1 passed" in done.stdout
    assert "leaked-worker" in done.stderr
    assert done.returncode == 0
