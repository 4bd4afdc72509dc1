"""``protocol`` stays sans-I/O: it imports only the standard library, msgspec and itself.

An app or POS terminal embeds ``protocol`` (with ``clients``); a client in another language reimplements it
from PROTOCOL.md. Neither must drag in the hub's server stack, so the boundary is checked twice: by importing
every module in a fresh interpreter and looking at what got loaded, and statically, so that an import hidden
in a function body that the first check never runs is caught too.
"""

from __future__ import annotations

import ast
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import protocol

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "protocol"
FORBIDDEN = ("starlette", "uvicorn", "redis", "sqlalchemy", "aiosqlite", "websockets", "syncd", "clients")
ALLOWED_THIRD_PARTY = frozenset({"msgspec"})


def protocol_modules() -> list[str]:
    """Every module of the package as it is on disk now (new modules are picked up without editing this)."""
    found = pkgutil.walk_packages(protocol.__path__, prefix="protocol.")
    return sorted(["protocol", *(info.name for info in found)])


def test_importing_every_protocol_module_loads_no_server_stack_nor_sdk() -> None:
    modules = protocol_modules()
    assert {"protocol.codec", "protocol.errors", "protocol.frames"} <= set(modules)
    script = f"import {', '.join(modules)}; import sys; print('\\n'.join(sorted(sys.modules)))"
    # A clean interpreter: no coverage hooks or PYTHONPATH additions from the parent test run.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COV", "PYTHON", "PYTEST"))}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    loaded = set(result.stdout.split())
    assert set(modules) <= loaded
    leaked = sorted(name for name in loaded if name.split(".")[0] in FORBIDDEN)
    assert leaked == []


def imported_roots(tree: ast.AST) -> set[str]:
    """Top-level names of every absolute import in ``tree`` (relative imports stay inside the package)."""
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def dynamic_imports(tree: ast.AST) -> list[int]:
    """Lines calling ``__import__`` or ``importlib.import_module``, which would dodge the static check."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = (
                func.id
                if isinstance(func, ast.Name)
                else func.attr
                if isinstance(func, ast.Attribute)
                else ""
            )
            if name in ("__import__", "import_module"):
                lines.append(node.lineno)
    return lines


def test_every_protocol_file_imports_only_stdlib_msgspec_or_protocol() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert PACKAGE / "codec.py" in files
    allowed = set(sys.stdlib_module_names) | ALLOWED_THIRD_PARTY | {"protocol"}
    offenders = {}
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        bad = sorted(imported_roots(tree) - allowed) + [
            f"dynamic import, line {n}" for n in dynamic_imports(tree)
        ]
        if bad:
            offenders[str(path.relative_to(ROOT))] = bad
    assert offenders == {}


def test_the_static_check_sees_every_kind_of_import() -> None:
    source = """
import os.path, msgspec
from collections import abc
from . import frames
from .codec import encode
def later():
    import redis
    from starlette.websockets import WebSocket
    return __import__("sqlalchemy")
"""
    tree = ast.parse(source)
    assert imported_roots(tree) == {"os", "msgspec", "collections", "redis", "starlette"}
    assert dynamic_imports(tree) == [9]
