"""The store's Lua scripts: read from ``lua/*.lua`` once, assembled, and addressed by SHA1.

Each ``lua/<name>.lua`` (shared: dedup, history) and ``lua/<type>/<name>.lua`` (one data type's) that does
not start with ``_`` is one script, run with EVALSHA. A first line ``--@include _a.lua _b.lua`` prepends those
prelude files, looked up in the script's own folder first (a type's rules, ``cart/_cart.lua``) and then in
``lua/`` (the shared dedup, encoding and event code, ``_lib.lua``), so every op stays one self-contained
script, one atomic step in Redis, while its common parts are written once.

Why SHA1 computed here: the hub knows every script's SHA without asking Redis, loads them with SCRIPT LOAD
once per connection pool (every primary, in a cluster) and re-loads one transparently when Redis answers
NOSCRIPT (a restarted or flushed server has forgotten its script cache).
"""

from __future__ import annotations

import dataclasses
import hashlib
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Final

_INCLUDE: Final = "--@include"


@dataclasses.dataclass(frozen=True, slots=True)
class Script:
    """One script as Redis runs it: the assembled source and its SHA1 (the EVALSHA handle)."""

    name: str
    source: bytes
    sha: str


def _lua() -> Traversable:
    return resources.files("syncd.store") / "lua"


def _assemble(entry: Traversable, folder: Traversable) -> str:
    text = entry.read_text(encoding="utf-8")
    first, _, _ = text.partition("\n")
    if not first.startswith(_INCLUDE):
        return text
    parts = []
    for include in first[len(_INCLUDE) :].split():
        own = folder / include  # a type's own prelude (cart/_cart.lua) before the shared ones (_lib.lua)
        parts.append((own if own.is_file() else _lua() / include).read_text(encoding="utf-8"))
    return "\n".join([*parts, text])


def load_scripts() -> dict[str, Script]:
    """Every script in ``lua/`` and its per-type folders (``lua/cart/``), by file name without ``.lua``
    (``"cart_add"``): names are unique across folders, as each type's scripts carry its name."""
    scripts: dict[str, Script] = {}
    folders = [_lua(), *sorted((e for e in _lua().iterdir() if e.is_dir()), key=lambda e: e.name)]
    for folder in folders:
        for entry in sorted(folder.iterdir(), key=lambda e: e.name):
            if not entry.name.endswith(".lua") or entry.name.startswith("_"):
                continue
            source = _assemble(entry, folder).encode("utf-8")
            name = entry.name.removesuffix(".lua")
            if name in scripts:
                raise ValueError(f"two Lua scripts named {name!r}")
            scripts[name] = Script(name, source, hashlib.sha1(source, usedforsecurity=False).hexdigest())
    return scripts
