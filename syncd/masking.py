"""Personal data out of everything ops see: logs, metrics, the dashboard (docs/traps.md §14).

Member ids and client ids are chosen by brands, and some choose the customer's mobile number
(``m:13812345678``, ``app-13812345678``). Whatever carries such an id to a person — a log line, a dashboard
row — shows it as ``138****5678``: enough to tell two customers apart on a call, not enough to dial one.
"""

from __future__ import annotations

import re

_MOBILE = re.compile(r"(?<!\d)(\+?86[- ]?)?(1[3-9]\d)(\d{4})(\d{4})(?!\d)")
"""A mainland China mobile number (11 digits, 13x to 19x), maybe after +86, not inside a longer number."""


def mask(text: str) -> str:
    """``text`` with every mobile number's middle four digits replaced: ``138****5678``."""
    if len(text) < 11:
        return text
    return _MOBILE.sub(lambda m: f"{m.group(1) or ''}{m.group(2)}****{m.group(4)}", text)
