"""Hypothesis profiles: a fixed one for CI, a wider one for exploring locally.

``ci`` (the default, what ``make test`` runs): derandomised — every run tries the same examples, so a red CI
is a real regression and never a new random draw, and no example database is read or written.
``wide`` (``SYNCD_HYPOTHESIS=wide make test``): random, with the local example database, and ten times the
examples of each property — run it before a change to merge rules, the codec or the engine lands.

Properties that set ``max_examples`` themselves (their cost differs a lot) take it through :func:`examples`,
so both profiles scale them.
"""

from __future__ import annotations

import os
from typing import Final

from hypothesis import settings

PROFILE: Final = os.environ.get("SYNCD_HYPOTHESIS", "ci")
_SCALE: Final = {"ci": 1, "wide": 10}

settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("wide", derandomize=False, deadline=None, max_examples=1000, print_blob=True)
if PROFILE not in _SCALE:
    raise ValueError(f"SYNCD_HYPOTHESIS must be one of {sorted(_SCALE)}, got {PROFILE!r}")
settings.load_profile(PROFILE)


def examples(n: int) -> int:
    """A property's example budget under the active profile."""
    return n * _SCALE[PROFILE]
