"""The store's Lua scripts: read from ``lua/*.lua`` once, assembled, and addressed by SHA1.

Each ``lua/<name>.lua`` that does not start with ``_`` is one script, run with EVALSHA. A first line
``--@include _a.lua _b.lua`` prepends those prelude files (the shared dedup, encoding and event code), so
every op stays one self-contained script, one atomic step in Redis, while its common parts are written once.

Why SHA1 computed here: the hub knows every script's SHA without asking Redis, loads them with SCRIPT LOAD
once per connection pool (every primary, in a cluster) and re-loads one transparently when Redis answers
NOSCRIPT (a restarted or flushed server has forgotten its script cache).
"""

from __future__ import annotations

import dataclasses
import hashlib
from importlib import resources
from typing import Final

_INCLUDE: Final = "--@include"


@dataclasses.dataclass(frozen=True, slots=True)
class Script:
    """One script as Redis runs it: the assembled source and its SHA1 (the EVALSHA handle)."""

    name: str
    source: bytes
    sha: str


def _read(name: str) -> str:
    return (resources.files("syncd.store") / "lua" / name).read_text(encoding="utf-8")


def _assemble(name: str) -> str:
    text = _read(name)
    first, _, _ = text.partition("\n")
    if not first.startswith(_INCLUDE):
        return text
    parts = [_read(include) for include in first[len(_INCLUDE) :].split()]
    return "\n".join([*parts, text])


def load_scripts() -> dict[str, Script]:
    """Every script in ``lua/``, by file name without ``.lua`` (``"cart_add"``)."""
    scripts: dict[str, Script] = {}
    for entry in sorted((resources.files("syncd.store") / "lua").iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".lua") or entry.name.startswith("_"):
            continue
        source = _assemble(entry.name).encode("utf-8")
        name = entry.name.removesuffix(".lua")
        scripts[name] = Script(name, source, hashlib.sha1(source, usedforsecurity=False).hexdigest())
    return scripts
