"""A data type is one module per package (protocol/types, syncd/types, clients/types) plus its Lua scripts,
found through the registries; the layers that dispatch never name a type (docs/design.md §3)."""

from __future__ import annotations

import ast
import pathlib

import pytest

from clients.types import HANDLES, VIEWS, handle_type, view_type
from clients.types.base import op_topic
from protocol import registry
from protocol.errors import OpRejected, ProtocolError
from protocol.topics import TopicKind
from syncd.store.scripts import load_scripts
from syncd.types import STORE_TYPES, for_op, for_topic

ROOT = pathlib.Path(__file__).resolve().parent.parent
DISPATCHERS = ("syncd/hub.py", "syncd/session.py", "syncd/store/redis_store.py", "clients/engine.py")
"""Modules that dispatch through the registries and so must not name a type."""


def test_every_type_has_a_store_type_and_a_view() -> None:
    assert set(STORE_TYPES) == set(registry.TYPES) == set(VIEWS) == set(HANDLES) == registry.SERVED_KINDS
    for kind, dtype in registry.TYPES.items():
        assert STORE_TYPES[kind].datatype is dtype
        assert VIEWS[kind].datatype is dtype


def test_every_op_kind_belongs_to_one_type_and_is_named_after_it() -> None:
    seen: set[str] = set()
    for kind, dtype in registry.TYPES.items():
        for op in dtype.ops:
            assert op.startswith(f"{kind.value}."), op
            assert op not in seen
            seen.add(op)
            assert registry.for_op(op) is dtype
    assert registry.op_kinds() == seen


def test_every_op_has_its_script_in_its_types_folder() -> None:
    scripts = load_scripts()
    for kind, stype in STORE_TYPES.items():
        assert set(stype.scripts) == set(stype.datatype.ops)
        for script in stype.scripts.values():
            assert script in scripts
            assert (ROOT / "syncd/store/lua" / kind.value / f"{script}.lua").is_file()


def test_an_unknown_op_or_topic_is_refused_by_every_lookup() -> None:
    with pytest.raises(OpRejected):
        registry.for_op("cart.explode")
    with pytest.raises(OpRejected):
        for_op("nope.add")
    with pytest.raises(ProtocolError):
        op_topic("nope.add", {"member": "m"})
    with pytest.raises(ValueError, match="does not sync"):
        view_type("nope:x")
    unserved = set(TopicKind) - registry.SERVED_KINDS
    for kind in unserved:
        assert for_topic(kind) is None
        with pytest.raises(ValueError, match="does not sync"):
            view_type(f"{kind.value}:x")
        with pytest.raises(ValueError, match="does not sync"):
            handle_type(f"{kind.value}:x")


def test_an_op_names_its_topic_by_its_types_key_field() -> None:
    for dtype in registry.TYPES.values():
        assert dtype.topic_of({dtype.key_field: "k1"}) == f"{dtype.kind.value}:k1"
        for op in list(dtype.ops)[:1]:  # a topic only the hub writes (store:<store>) has no op
            assert op_topic(op, {dtype.key_field: "k1"}) == f"{dtype.kind.value}:k1"


@pytest.mark.parametrize("path", DISPATCHERS)
def test_dispatching_modules_never_name_a_type(path: str) -> None:
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    names = {k.value for k in TopicKind}
    for node in ast.walk(tree):
        named = isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
        if named and node.value.id == "TopicKind":
            pytest.fail(f"{path}:{node.lineno} names TopicKind.{node.attr}")
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            head = node.value.partition(".")[0].partition(":")[0]
            if node.value != head and head in names and not node.value.startswith(f"{head}: "):
                pytest.fail(f"{path}:{node.lineno} names {node.value!r}")
