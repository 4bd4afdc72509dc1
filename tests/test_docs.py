"""The repository's docs stand alone: what the code and docs cite exists in the repository.

A reader of the repository has only the repository. Code comments and docs cite ``docs/design.md §N`` and
``docs/traps.md §N``; a citation of a section that was renumbered away, or of a briefing that lives outside
the tree, leaves that reader with nothing.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Built from parts so that this file does not match its own pattern.
_OUTSIDE = re.compile(r"\.\./shared|\bDESIGN\.md|\b" + "PIT" + r"FALLS\b")
_CITATION = re.compile(r"docs/(design|traps)\.md §(\d+[a-z]?)")


def _tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "--", *patterns], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return [ROOT / line for line in out.splitlines() if (ROOT / line).is_file()]


def _sections(doc: str) -> set[str]:
    """The section numbers a doc defines: ``## §3 …`` headings and ``**§4b …`` paragraphs."""
    text = (ROOT / "docs" / f"{doc}.md").read_text(encoding="utf-8")
    return set(re.findall(r"^(?:#+ |\*\*)§(\d+[a-z]?)\b", text, flags=re.MULTILINE))


SOURCES = _tracked("*.py", "*.md", "*.lua", "*.toml", "Makefile", ".ci/*")


def test_nothing_cites_a_briefing_outside_the_repository() -> None:
    assert len(SOURCES) > 50  # a vacuous pass on an empty file list would prove nothing
    hits = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in SOURCES
        if path != Path(__file__).resolve()
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if _OUTSIDE.search(line)
    ]
    assert not hits, "citations of material outside the repository: " + ", ".join(hits)


def test_every_cited_section_exists() -> None:
    defined = {"design": _sections("design"), "traps": _sections("traps")}
    assert defined["design"] and defined["traps"]
    missing = sorted(
        {
            f"{path.relative_to(ROOT)}: docs/{doc}.md §{section}"
            for path in SOURCES
            for doc, section in _CITATION.findall(path.read_text(encoding="utf-8"))
            if section not in defined[doc]
        }
    )
    assert not missing, "citations of sections that do not exist:\n" + "\n".join(missing)


def test_the_readme_tells_pos_integrators_about_a_day_offline_in_both_languages() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    english = readme.split("### A till offline for a day", 1)
    chinese = readme.split("### 收银台离线一天", 1)
    assert len(english) == 2 and len(chinese) == 2
    for section in (english[1].split("\n## ", 1)[0], chinese[1].split("\n## ", 1)[0]):
        for name in ("set_token", "pending_ops", "oldest_pending_at", "rejections"):
            assert name in section


def test_the_readme_examples_give_the_sdk_a_token_provider_not_a_string() -> None:
    """A string token expires while a till is offline; the examples teach the callable that renews it."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    constructions = [
        m
        for block in blocks
        for m in re.finditer(r"SyncClient(?:Sync)?\((.*?)\)\s*(?:as|$)", block, re.DOTALL)
    ]
    assert constructions, "the README shows no SyncClient"
    for match in constructions:
        argument = re.search(r"token=([^,\n)]+)", match.group(1))
        assert argument is not None, match.group(0)
        given = argument.group(1).strip()
        assert not given.startswith(("'", '"')), f"a literal token in the README: {match.group(0)}"
        assert given.startswith("lambda") or re.search(rf"def {re.escape(given)}\(", readme), given
