"""Fan-out receivers in Node (``benchmarks/node/receiver.js``, the ``ws`` package): a Python receiver tops out
near 100k messages/s on this machine (docs/traps.md §16), below what the floor delivers, so the receivers
that count deliveries are Node processes. Installed on first use with ``npm ci`` from the committed lock file.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from benchmarks.dialects import (
    FLOOR_FRAMES,
    HEARTBEAT_PING_S,
    Dialect,
    floor_sub,
    peer_sub,
    syncd_hello,
    syncd_ping,
    syncd_sub,
)

NODE_DIR = Path(__file__).parent / "node"


def ensure_installed() -> str:
    """The ``node`` executable, after installing the receiver's packages if they are missing."""
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        raise RuntimeError("the fanout workload needs Node.js >= 18 and npm on PATH (for its receivers)")
    modules = NODE_DIR / "node_modules"
    if not (modules / "ws").is_dir() or not (modules / "@msgpack" / "msgpack").is_dir():
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"],
            cwd=NODE_DIR,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return node


class NodeReceivers:
    """One Node process holding ``len(devices)`` subscribers of ``topic``."""

    def __init__(
        self,
        node: str,
        dialect: Dialect,
        url: str,
        topic: str,
        devices: list[tuple[str, str]],
        config_path: Path,
    ) -> None:
        conns: list[dict[str, str]] = []
        for client_id, member in devices:
            if dialect == "syncd":
                conns.append({"hello": _b64(syncd_hello(client_id, member)), "sub": _b64(syncd_sub(topic))})
            elif dialect in FLOOR_FRAMES:
                conns.append({"sub": _b64(floor_sub(topic))})
            else:
                conns.append({"sub": peer_sub(topic)})
        config = {
            "protocol": "floor" if dialect in FLOOR_FRAMES else dialect,
            "url": url,
            "conns": conns,
            "concurrency": 50,
            "ping": _b64(syncd_ping()) if dialect == "syncd" else None,
            "ping_interval_ms": int(HEARTBEAT_PING_S * 1000),
        }
        config_path.write_text(json.dumps(config))
        self.proc = subprocess.Popen(
            [node, str(NODE_DIR / "receiver.js"), str(config_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self) -> tuple[int, int]:
        """``(subscribed, failed)`` once every connection is settled."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "ready":
            raise RuntimeError(f"node receiver failed to start (exit {self.proc.poll()})")
        return int(line[1]), int(line[2])

    def finish(self, base_ns: int, sends: list[int | None], steps: list[tuple[int, int]]) -> dict[str, Any]:
        plan = json.dumps(
            {"base": str(base_ns), "sends": [s - base_ns if s else None for s in sends], "steps": steps}
        )
        out, _ = self.proc.communicate(plan, timeout=120)
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
