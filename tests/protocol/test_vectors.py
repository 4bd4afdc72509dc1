"""The checked-in test vectors (tests/vectors/frames.json) hold against the implementation, both ways.

A client written from PROTOCOL.md in another language runs the same file; here it pins this implementation
to it: each valid vector decodes to its ``frame`` and its ``frame`` encodes to exactly its ``hex`` (or to its
``encodes_to``, for bytes a receiver accepts but the reference encoder does not write); each invalid one is
refused with exactly its ``error`` code.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any, Final

import msgspec
import pytest

from protocol import codec, frames
from protocol.errors import ErrorCode, ProtocolError

ROOT = Path(__file__).resolve().parents[2]
VECTORS_PATH = ROOT / "tests" / "vectors" / "frames.json"
VECTORS: list[dict[str, Any]] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
VALID = [v for v in VECTORS if "frame" in v]
INVALID = [v for v in VECTORS if "error" in v]
DECODERS = {
    "client": codec.FrameDecoder(frames.CLIENT_FRAMES, codec.SERVER_LIMITS),
    "server": codec.FrameDecoder(frames.SERVER_FRAMES, codec.CLIENT_LIMITS),
}
DECODE_CODES = {"frame_too_large", "malformed", "too_deep", "too_long", "bad_frame", "unknown_frame"}


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_vectors", ROOT / "scripts" / "gen_vectors.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_vector_has_the_documented_shape() -> None:
    names = [v["name"] for v in VECTORS]
    assert len(names) == len(set(names))
    for v in VECTORS:
        assert set(v) in (
            {"name", "direction", "hex", "frame"},
            {"name", "direction", "hex", "frame", "encodes_to"},
            {"name", "direction", "hex", "error"},
        ), v["name"]
        assert v["direction"] in DECODERS
        assert bytes.fromhex(v["hex"]).hex() == v["hex"]  # lowercase, no separators


@pytest.mark.parametrize("vector", VALID, ids=[v["name"] for v in VALID])
def test_valid_vector_decodes_to_its_frame(vector: dict[str, Any]) -> None:
    decoded = DECODERS[vector["direction"]].decode(bytes.fromhex(vector["hex"]))
    assert msgspec.to_builtins(decoded) == vector["frame"]


@pytest.mark.parametrize("vector", VALID, ids=[v["name"] for v in VALID])
def test_valid_vector_frame_encodes_to_its_hex(vector: dict[str, Any]) -> None:
    frame = msgspec.convert(vector["frame"], type=frames.AnyFrame)
    assert codec.encode(frame).hex() == vector.get("encodes_to", vector["hex"])


def test_lenient_vectors_show_what_receivers_accept_but_senders_need_not_write() -> None:
    lenient = {v["name"] for v in VALID if "encodes_to" in v}
    assert {
        "ping stats: integers where floats are due",
        "the tag after the other keys",
        "an integer in a wider encoding than needed (uint64 seq)",
    } <= lenient
    assert all(v["encodes_to"] != v["hex"] for v in VALID if "encodes_to" in v)


@pytest.mark.parametrize("vector", INVALID, ids=[v["name"] for v in INVALID])
def test_invalid_vector_is_refused_with_its_code(vector: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError) as err:
        DECODERS[vector["direction"]].decode(bytes.fromhex(vector["hex"]))
    assert isinstance(err.value.code, ErrorCode)
    assert err.value.code.value == vector["error"]


REQUIRED_UNLESS_PAGE: Final = {"snap": {"cursor"}}
"""Fields optional in the struct but required in every frame that is not a snapshot page (``more``): a
whole ``snap`` has a cursor, a page has none, so no one vector carries every optional field (§6.6)."""


def test_every_frame_type_has_a_vector_with_and_without_its_optional_fields() -> None:
    for tag, cls in frames.TAGS.items():
        fields = msgspec.structs.fields(cls)
        optional = {f.encode_name for f in fields if f.required is False}
        keys = [set(v["frame"]) - {"t"} for v in VALID if v["frame"]["t"] == tag]
        assert keys, f"no valid vector for {tag!r}"
        unless_page = REQUIRED_UNLESS_PAGE.get(tag, set())
        minimal = any(not (k & (optional - unless_page)) for k in keys)
        assert minimal, f"{tag!r}: no vector with only the required fields"
        if unless_page:
            assert optional <= set().union(*keys), f"{tag!r}: an optional field without a vector"
        else:
            assert any(optional <= k for k in keys), f"{tag!r}: no vector with every optional field"


def test_every_code_decoding_can_produce_has_an_invalid_vector() -> None:
    assert {v["error"] for v in INVALID} == DECODE_CODES
    assert len(INVALID) >= 15


def test_frames_both_peers_send_have_vectors_in_both_directions() -> None:
    both = {str(k.__struct_config__.tag) for k in set(frames.CLIENT_FRAMES) & set(frames.SERVER_FRAMES)}
    for tag in both:
        assert {v["direction"] for v in VALID if v["frame"]["t"] == tag} == {"client", "server"}, tag


def test_the_checked_in_file_is_what_the_generator_writes() -> None:
    assert load_generator().render() == VECTORS_PATH.read_text(encoding="utf-8")
