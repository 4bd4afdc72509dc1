"""The per-connection work budget, on a clock the test moves by hand."""

from __future__ import annotations

import pytest

from syncd.admission import Admission
from syncd.pacing import BURST_S, MIN_FRAME_COST_S, SHARE, TURN_S, Pacer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_a_connection_within_its_burst_is_never_delayed(clock: Clock) -> None:
    pacer = Pacer(clock)
    started = pacer.start_turn()
    clock.now += BURST_S / 2
    pacer.charge(started)
    assert pacer.delay() == 0.0


def test_a_connection_over_its_burst_waits_until_its_share_repays_the_debt(clock: Clock) -> None:
    pacer = Pacer(clock)
    started = pacer.start_turn()
    clock.now += BURST_S + 0.01  # 10 ms of work beyond the credit
    pacer.charge(started)
    assert pacer.delay() == pytest.approx(0.01 / SHARE)
    clock.now += 0.01 / SHARE + 1e-9
    assert pacer.delay() == 0.0


def test_a_sustained_flood_gets_its_share_of_the_core_and_no_more(clock: Clock) -> None:
    pacer = Pacer(clock)
    busy = 0.0
    for _ in range(10_000):  # work 1 ms, wait as told
        started = pacer.start_turn()
        clock.now += 0.001
        busy += 0.001
        pacer.charge(started)
        clock.now += pacer.delay()
    elapsed = clock.now - 100.0
    assert busy / elapsed == pytest.approx(SHARE, rel=0.02)


def test_frames_cost_at_least_the_minimum_even_when_handled_in_no_measurable_time(clock: Clock) -> None:
    pacer = Pacer(clock)
    started = pacer.start_turn()
    pacer.charge(started, frames=10_000)  # 10,000 pings answered "instantly"
    assert pacer.spent == pytest.approx(10_000 * MIN_FRAME_COST_S)
    assert pacer.delay() == pytest.approx((10_000 * MIN_FRAME_COST_S - BURST_S) / SHARE)


def test_a_turn_is_over_after_its_time_slice(clock: Clock) -> None:
    pacer = Pacer(clock)
    pacer.start_turn()
    clock.now += TURN_S / 2
    assert not pacer.turn_over()
    clock.now += TURN_S
    assert pacer.turn_over()


def test_credit_idle_time_earns_is_capped_at_the_burst(clock: Clock) -> None:
    pacer = Pacer(clock)
    clock.now += 3600  # an hour idle earns no more than one burst
    pacer.charge_cost(BURST_S + 0.001)
    assert pacer.delay() > 0


def test_pending_connections_are_capped_per_address_and_freed_on_leave() -> None:
    admission = Admission(max_pending_per_address=2, max_connections_per_client=1)
    assert admission.enter_pending("10.0.0.1")
    assert admission.enter_pending("10.0.0.1")
    assert not admission.enter_pending("10.0.0.1")
    assert admission.enter_pending("10.0.0.2")  # another address has its own count
    admission.leave_pending("10.0.0.1")
    assert admission.enter_pending("10.0.0.1")


def test_sessions_are_capped_per_client_id_and_freed_on_close() -> None:
    admission = Admission(max_pending_per_address=2, max_connections_per_client=1)
    assert admission.open_client("till-1")
    assert not admission.open_client("till-1")
    assert admission.open_client("till-2")
    admission.close_client("till-1")
    assert admission.open_client("till-1")
