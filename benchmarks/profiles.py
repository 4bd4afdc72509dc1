"""How big and how long each workload runs: ``full`` (the figures of record), ``quick`` (the whole suite in
under a minute, same shape) and ``smoke`` (seconds; for the test that checks the output's shape)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, slots=True)
class Ramp:
    """The fan-out ramp: rates (events/s to the topic) go up by ``fast_factor`` while the monitor's p99 stays
    under ``comfort_ms``, then by ``slow_factor``; the ramp stops at the first step whose p99 exceeds
    ``limit_ms`` (or on any refusal or disconnect)."""

    start_rate: float = 1.0
    step_s: float = 2.0
    grace_s: float = 0.3
    fast_factor: float = 1.5
    slow_factor: float = 1.1
    comfort_ms: float = 40.0
    limit_ms: float = 100.0
    max_rate: float = 3000.0
    max_steps: int = 40


@dataclasses.dataclass(frozen=True, slots=True)
class Profile:
    name: str
    sync_rates: tuple[float, ...] = (100.0, 1000.0)
    sync_s: float = 10.0
    sync_warmup_s: float = 1.0
    write_writers: int = 100
    write_procs: int = 2
    write_warmup_s: float = 2.0
    write_s: float = 10.0
    fanout_subs: int = 1000
    fanout_procs: int = 2
    ramp: Ramp = Ramp()
    sustain_p99_ms: float = 100.0
    """A fan-out step counts as sustained when every delivery arrived and their p99 is at most this."""
    conns: int = 5000
    """``conns``: idle connections held; the target applies to this count."""
    conns_more: tuple[int, ...] = ()
    """``conns``: further counts, each measured on fresh servers and reported beside the first (no target)."""
    conns_procs: int = 4
    conns_settle_s: float = 3.0
    replay_ops: int = 10_000
    """``replay``: ops queued offline, then replayed on reconnect."""
    replay_pending: int = 100_000
    """``replay``: ops pending in the outbox when the client's memory is measured."""
    pos_ops: int = 5000
    """``replay``, POS day: a till's ops (cart ops and stock sales) queued offline, then replayed."""
    pos_customers: int = 300
    """``replay``, POS day: customers served (one cart each)."""
    isolation_ops: int = 1000
    """``isolation``: the victim's ops (one at a time) in each scenario."""
    isolation_warmup_s: float = 2.0
    """``isolation``: how long an attack runs before the victim starts measuring."""
    flash_clients: int = 1000
    """``flashsale``: shoppers reserving through the hub, each closed-loop until sold out."""
    flash_procs: int = 2
    flash_units: int = 30_000
    """``flashsale``: units on sale (reservations that succeed)."""
    flash_floor_workers: int = 16
    flash_floor_depth: int = 32
    """``flashsale`` floor: connections, and reservations pipelined on each at a time."""
    watch_subs: tuple[int, ...] = (1000, 5000)
    """``stockwatch``: subscribers of ``stock:<sku>``, one measurement per count."""
    quiet_wait_s: float = 30.0
    """Before measuring a system, wait up to this long for the machine to be idle (other users' work)."""
    rounds: int = 2
    """``sync``, ``write`` and ``fanout`` measure each system this many times, interleaved, and keep its
    best round (every round's score is reported): one unlucky moment of a shared machine decides no ratio."""


FULL = Profile("full")
QUICK = Profile(
    "quick",
    sync_s=0.8,
    sync_warmup_s=0.3,
    write_warmup_s=0.5,
    write_s=1.0,
    fanout_subs=400,
    ramp=Ramp(start_rate=2.0, step_s=0.5, grace_s=0.2, fast_factor=2.0, slow_factor=1.3, max_steps=8),
    conns=600,
    conns_procs=2,
    conns_settle_s=0.5,
    replay_ops=3000,
    replay_pending=20_000,
    pos_ops=2000,
    pos_customers=120,
    isolation_ops=300,
    isolation_warmup_s=1.0,
    flash_clients=300,
    flash_units=5000,
    watch_subs=(1000,),
    quiet_wait_s=0.0,
    rounds=1,
)
SMOKE = Profile(
    "smoke",
    sync_rates=(100.0, 300.0),
    sync_s=0.5,
    sync_warmup_s=0.2,
    write_writers=10,
    write_procs=1,
    write_warmup_s=0.2,
    write_s=0.5,
    fanout_subs=20,
    fanout_procs=1,
    ramp=Ramp(start_rate=20.0, step_s=0.3, grace_s=0.1, fast_factor=2.0, slow_factor=1.5, max_steps=3),
    conns=50,
    conns_procs=1,
    conns_settle_s=0.3,
    replay_ops=300,
    replay_pending=2000,
    pos_ops=300,
    pos_customers=20,
    flash_clients=20,
    flash_procs=1,
    flash_units=300,
    flash_floor_workers=2,
    flash_floor_depth=8,
    watch_subs=(20,),
    isolation_ops=30,
    isolation_warmup_s=0.3,
    quiet_wait_s=0.0,
    rounds=1,
)
PROFILES = {p.name: p for p in (FULL, QUICK, SMOKE)}
