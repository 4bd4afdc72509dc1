"""The brand's clearing time and the default hold of a reservation: settings, validated at startup."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from syncd.settings import ConfigError, Settings


def test_by_default_holds_clear_at_midnight_in_shanghai() -> None:
    policy = Settings.from_env({}).hold_policy
    assert policy.clearing_at == dt.time(0, 0) and policy.clearing_tz == ZoneInfo("Asia/Shanghai")
    assert policy.default_ttl_ms is None  # a reservation without an expiry holds until the clearing


def test_the_clearing_time_zone_and_default_hold_come_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "SYNCD_STOCK_CLEARING_TIME": "03:30",
            "SYNCD_STOCK_CLEARING_TZ": "America/New_York",
            "SYNCD_STOCK_DEFAULT_HOLD": "900000",
        }
    )
    policy = settings.hold_policy
    assert policy.clearing_at == dt.time(3, 30) and policy.clearing_tz == ZoneInfo("America/New_York")
    assert policy.default_ttl_ms == 900_000


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("stock_clearing_time", "24:00"),
        ("stock_clearing_time", "7pm"),
        ("stock_clearing_tz", "Mars/Olympus"),
        ("stock_clearing_tz", "../etc/passwd"),
        ("stock_default_hold", "0"),
        ("stock_default_hold", "tomorrow"),
        ("stock_default_hold", str(7 * 24 * 3600 * 1000 + 1)),
    ],
)
def test_a_bad_clearing_setting_fails_the_start_naming_it(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({}, **{name: value})
    assert name in str(info.value) or "SYNCD_" + name.upper() in str(info.value)
