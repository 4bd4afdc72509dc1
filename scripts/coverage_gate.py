"""Coverage gate per package: ``make test`` fails when a package falls below its floor.

One total would let a well-tested package hide an untested one, so each of ``protocol``, ``syncd`` and
``clients`` has its own floor, in ``pyproject.toml`` under ``[tool.syncd.coverage-floor]``. The data covers
the test processes *and* the hub processes the end-to-end tests start (coverage's subprocess patch), so the
hub's endpoint and session count as what they are: code the suite runs. Floors only rise: when tests land,
raise the floor to the new figure (rounded down) in the same commit.
"""

from __future__ import annotations

import io
import sys
import tomllib
from pathlib import Path

import coverage

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    floors: dict[str, float] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["syncd"][
        "coverage-floor"
    ]
    cov = coverage.Coverage(config_file=str(ROOT / "pyproject.toml"))
    cov.load()
    failed = []
    for package, floor in floors.items():
        report = io.StringIO()
        total = cov.report(include=[f"{package}/*"], file=report, skip_covered=True, show_missing=True)
        verdict = "ok" if total >= floor else "BELOW FLOOR"
        print(f"coverage {package:<9} {total:6.2f} %  (floor {floor:g} %)  {verdict}")
        if total < floor:
            failed.append(package)
            print(report.getvalue())
    if failed:
        print(f"coverage below its floor in: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
