"""``python -m syncd`` and the ``syncd`` command: run :func:`syncd.cli.main`, or say which extra is missing.

The ``syncd`` package ships in every install (it is one distribution), but its server stack comes with the
``hub`` extra only. Without it, an app install that runs ``syncd`` gets one line naming the missing extra,
not a ``ModuleNotFoundError`` from deep inside an import.
"""

from __future__ import annotations

import importlib.util
import sys

HUB_MODULES = ("starlette", "uvicorn", "redis", "hiredis", "jwt", "websockets", "prometheus_client")
"""What ``syncd.cli`` needs beyond the base install (the ``hub`` extra's packages, by import name)."""


def main() -> int:
    missing = [name for name in HUB_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"syncd: the hub is not installed (missing: {', '.join(missing)}); install the hub extra, e.g. "
            '`pip install ".[hub]"` in a checkout of syncd, or `pip install "<syncd wheel>[hub]"`',
            file=sys.stderr,
        )
        return 1
    from syncd.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
