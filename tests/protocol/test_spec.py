"""PROTOCOL.md agrees with the code: generated tables, one section per frame, quoted hex, constants."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from protocol import codec, connection, frames, ops
from protocol.errors import CloseCode, ErrorCode

ROOT = Path(__file__).resolve().parents[2]
SPEC_PATH = ROOT / "PROTOCOL.md"
SPEC = SPEC_PATH.read_text(encoding="utf-8")
SCRIPT = ROOT / "scripts" / "gen_protocol_tables.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_protocol_tables", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generated(name: str) -> str:
    match = re.search(
        rf"<!-- BEGIN GENERATED: {re.escape(name)} -->\n(.*?)<!-- END GENERATED: {re.escape(name)} -->",
        SPEC,
        re.DOTALL,
    )
    assert match, f"no generated block {name!r} in PROTOCOL.md"
    return match.group(1)


def section(heading: str) -> str:
    """The text of the section whose heading line starts with ``heading``, up to the next heading."""
    match = re.search(rf"^#+ {re.escape(heading)}.*?$(.*?)(?=^#)", SPEC, re.DOTALL | re.MULTILINE)
    assert match, f"no section {heading!r}"
    return match.group(1)


def test_the_code_tables_are_the_scripts_output() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert generated("codes") == result.stdout
    for code in ErrorCode:
        assert f"| `{code}` |" in result.stdout
    for close in CloseCode:
        assert f"| {int(close)} | `{close.name.lower()}` |" in result.stdout


def test_every_generated_block_is_up_to_date() -> None:
    script = load_script()
    names = re.findall(r"<!-- BEGIN GENERATED: (\S+) -->", SPEC)
    assert sorted(names) == sorted(script.blocks()), "each block once, and no block the script cannot make"
    assert script.render_spec(SPEC) == SPEC, "run: python scripts/gen_protocol_tables.py --write"


def test_every_frame_has_its_section_with_its_field_table() -> None:
    for tag in frames.TAGS:
        heading = re.search(rf"^### 6\.\d+ `{tag}` — ", SPEC, re.MULTILINE)
        assert heading, f"no section for frame {tag!r}"
        following = SPEC[heading.end() :]
        assert following.split("\n### ")[0].count(f"<!-- BEGIN GENERATED: {tag} -->") == 1


def test_hex_quoted_in_the_worked_exchanges_is_a_test_vector() -> None:
    vectors = json.loads((ROOT / "tests" / "vectors" / "frames.json").read_text(encoding="utf-8"))
    known = {v["hex"] for v in vectors}
    quoted = re.findall(r"# ([0-9a-f]{16,})\b", SPEC)
    assert quoted, "the worked exchanges quote some hex"
    assert set(quoted) <= known


def test_the_spec_names_its_test_vectors_and_they_exist() -> None:
    assert "tests/vectors/frames.json" in SPEC
    assert (ROOT / "tests" / "vectors" / "frames.json").is_file()


def test_constants_quoted_in_prose_match_the_code() -> None:
    assert connection.HEARTBEAT_MISSES == 3
    assert "**3 × `heartbeat_ms`**" in SPEC
    assert connection.MAX_REASON_BYTES == 123
    assert "at most 123 UTF-8 bytes" in SPEC
    assert frames.PROTOCOL_VERSIONS == (1,)
    assert re.search(r"This\s+document is version \*\*1\*\*", SPEC)
    assert codec.SERVER_LIMITS.max_depth == 8


def test_every_cart_op_kind_is_in_the_cart_section() -> None:
    cart = section("10. Cart ops")
    documented = set(re.findall(r"^\| `(cart\.\w+)` \|", cart, re.MULTILINE))
    assert documented == {kind for kind in ops.OP_ARGS if kind.startswith("cart.")}


def test_rfc_2119_words_are_declared_and_used() -> None:
    assert "BCP 14" in SPEC
    for word in ("MUST", "MUST NOT", "SHOULD", "MAY"):
        assert f" {word} " in SPEC
