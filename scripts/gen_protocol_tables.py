"""Print the generated blocks of PROTOCOL.md from the code that defines them.

    python scripts/gen_protocol_tables.py              # the `codes` block: error codes and close codes
    python scripts/gen_protocol_tables.py limits ev    # other blocks, by name
    python scripts/gen_protocol_tables.py --list       # the names of every block
    python scripts/gen_protocol_tables.py --write      # rewrite every block of PROTOCOL.md in place

A block sits in PROTOCOL.md between ``<!-- BEGIN GENERATED: name -->`` and ``<!-- END GENERATED: name -->``.
Blocks: ``codes`` (from ``protocol.errors``), ``limits`` (from ``protocol.codec``), one per frame tag and
``cursor`` / ``origin`` (from ``protocol.frames``, through ``msgspec.inspect``). tests/protocol/test_spec.py
fails when PROTOCOL.md differs from this script's output, so the spec cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402
import msgspec.inspect as mi  # noqa: E402

from protocol import codec, frames  # noqa: E402
from protocol.errors import CloseCode, ErrorCode, ProtocolError  # noqa: E402

SPEC = ROOT / "PROTOCOL.md"
BLOCK = re.compile(r"(<!-- BEGIN GENERATED: (\S+) -->\n)(.*?)(<!-- END GENERATED: \2 -->)", re.DOTALL)


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell (a pipe would end the cell, even inside backticks)."""
    return text.replace("|", "\\|")


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# --- codes -------------------------------------------------------------------------------------------------


def close_name(code: CloseCode) -> str:
    return f"{int(code)} `{code.name.lower()}`"


def codes() -> str:
    errors = []
    for code in ErrorCode:
        close = ProtocolError(code, "").close_code
        errors.append([f"`{code}`", close_name(close) if close is not None else "—", code.describe])
    closes = [
        [str(int(c)), f"`{c.name.lower()}`", "yes, with backoff" if c.reconnect else "no", c.describe]
        for c in CloseCode
    ]
    return (
        table(["code", "the receiver of the offending frame closes with", "meaning"], errors)
        + "\n"
        + table(["close code", "name", "reconnect", "meaning"], closes)
    )


# --- limits ------------------------------------------------------------------------------------------------

_VIOLATION = {
    "max_frame": ErrorCode.FRAME_TOO_LARGE,
    "max_depth": ErrorCode.TOO_DEEP,
    "max_len": ErrorCode.TOO_LONG,
    "max_str": ErrorCode.TOO_LONG,
    "max_items": ErrorCode.TOO_LONG,
}
_LIMIT_MEANING = {
    "max_frame": "bytes in one frame (one websocket message)",
    "max_depth": "nesting of maps and arrays; the frame's own map is depth 1",
    "max_len": "entries in one map, elements in one array",
    "max_str": "bytes (not characters) in one string or binary value",
    "max_items": "entries of every map (a key and its value count one) plus elements of every array, the "
    "frame's own map included",
}


def limits() -> str:
    rows = []
    for field in dataclasses.fields(codec.Limits):
        code = _VIOLATION[field.name]
        close = ProtocolError(code, "").close_code
        assert close is not None
        rows.append(
            [
                f"`{field.name}`",
                str(getattr(codec.SERVER_LIMITS, field.name)),
                str(getattr(codec.CLIENT_LIMITS, field.name)),
                _LIMIT_MEANING[field.name],
                f"`{code}`, close {int(close)}",
            ]
        )
    header = [
        "limit",
        "hub decoding a client's frame",
        "client decoding a hub's frame",
        "counts",
        "violation",
    ]
    return table(header, rows)


# --- frames ------------------------------------------------------------------------------------------------

_POWERS = {2**k - 1: f"2^{k}-1" for k in (32, 53, 64)}
_NAMED = {frames.Cursor: "cursor", frames.Origin: "origin", frames.Op: "op"}


def number(n: int) -> str:
    return _POWERS.get(n, str(n))


def bounds(low: int | None, high: int | None) -> str:
    if high is None:
        return f"≥ {low}" if low else ""
    return f"{low or 0}..{number(high)}"


def wire_type(t: mi.Type) -> str:
    """A field's wire type with its bounds, as PROTOCOL.md writes it."""
    if isinstance(t, mi.UnionType):  # nil first: "nil or map of str → any" reads one way only
        members = sorted(
            (m for m in t.types if not (isinstance(m, mi.StructType) and m.cls.__name__.startswith("_"))),
            key=lambda member: not isinstance(member, mi.NoneType),
        )  # a private struct only makes the decoder require a tag (frames._TaggedOp): not a wire type
        if len(members) == 1:
            return wire_type(members[0])
        return " or ".join(wire_type(member) for member in members)
    if isinstance(t, mi.NoneType):
        return "nil"
    if isinstance(t, mi.BoolType):
        return "bool"
    if isinstance(t, mi.FloatType):
        return "float"
    if isinstance(t, mi.AnyType):
        return "any"
    if isinstance(t, mi.IntType):
        assert t.gt is None
        assert t.lt is None
        assert t.ge is not None
        assert t.le is not None
        return f"int {t.ge}..{number(t.le)}"
    if isinstance(t, mi.StrType):
        text = "str"
        if t.max_length is not None:
            text += f" {bounds(t.min_length, t.max_length)} chars"
        return text + (f" matching `{t.pattern}`" if t.pattern else "")
    if isinstance(t, mi.ListType):
        return f"array of {wire_type(t.item_type)}, {bounds(t.min_length, t.max_length)} items"
    if isinstance(t, mi.DictType):
        size = bounds(t.min_length, t.max_length)
        text = f"map of {wire_type(t.key_type)} → {wire_type(t.value_type)}"
        return f"{text}, {size} entries" if size else text
    if isinstance(t, mi.StructType):
        return _NAMED[t.cls]
    raise TypeError(f"no wire type for {t!r}")


def presence(field: mi.Field) -> str:
    if field.required:
        return "required"
    default = field.default
    shown = "nil" if default is None else f"`{msgspec.json.encode(default).decode()}`"
    return f"optional, default {shown}"


def frame_fields(cls: type[msgspec.Struct]) -> str:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    if info.array_like:
        rows = [[str(i), f"`{f.encode_name}`", wire_type(f.type)] for i, f in enumerate(info.fields)]
        return table(["index", "name", "type"], rows)
    rows = [[f"`{f.encode_name}`", wire_type(f.type), presence(f)] for f in info.fields]
    return table(["key", "type", "presence"], [["`t`", f'`"{info.tag}"`', "required"], *rows])


def blocks() -> dict[str, Callable[[], str]]:
    found: dict[str, Callable[[], str]] = {"codes": codes, "limits": limits}
    found["cursor"] = functools.partial(frame_fields, frames.Cursor)
    found["origin"] = functools.partial(frame_fields, frames.Origin)
    for tag, cls in frames.TAGS.items():
        found[str(tag)] = functools.partial(frame_fields, cls)
    return found


def render_spec(text: str) -> str:
    """``text`` with every generated block replaced by this script's output."""
    makers = blocks()

    def fill(match: re.Match[str]) -> str:
        return match.group(1) + makers[match.group(2)]() + match.group(4)

    return BLOCK.sub(fill, text)


def main(argv: list[str]) -> int:
    if "--list" in argv:
        print("\n".join(blocks()))
        return 0
    if "--write" in argv:
        SPEC.write_text(render_spec(SPEC.read_text(encoding="utf-8")), encoding="utf-8")
        return 0
    makers = blocks()
    names = argv or ["codes"]
    unknown = [n for n in names if n not in makers]
    if unknown:
        print(f"unknown block(s) {unknown}; try --list", file=sys.stderr)
        return 2
    print("\n".join(makers[n]() for n in names), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
