"""Mobile numbers are masked wherever ops read ids: logs, the dashboard."""

from __future__ import annotations

import logging

import pytest

from syncd.cli import OneLineFormatter, RedactingFilter
from syncd.masking import mask


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("13812345678", "138****5678"),
        ("app-13812345678", "app-138****5678"),
        ("m:+86 19912345678 and 15500001111", "m:+86 199****5678 and 155****1111"),
        ("+8613812345678", "+86138****5678"),
        ("order 1381234567890", "order 1381234567890"),  # a longer number is not a phone
        ("12812345678", "12812345678"),  # 12x is no mobile prefix
        ("till-7", "till-7"),
    ],
)
def test_mobile_numbers_keep_their_first_three_and_last_four_digits(text: str, masked: str) -> None:
    assert mask(text) == masked


def test_every_log_line_is_masked_even_when_its_author_forgot() -> None:
    record = logging.LogRecord(
        "syncd.endpoint", logging.INFO, __file__, 1, "refused client %s", ("app-13812345678",), None
    )
    RedactingFilter().filter(record)
    assert OneLineFormatter("%(message)s").format(record) == "refused client app-138****5678"
