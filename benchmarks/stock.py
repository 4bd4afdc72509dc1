"""The stock workloads: ``flashsale`` (reservations/s through the hub, never oversold, beside the floor of the
same Lua script called straight from Redis) and ``stockwatch`` (``stock:<sku>`` fanned out to thousands of
watchers while it sells, beside the fan-out floor). Each system runs on its own fresh Redis, the systems
interleaved round by round like the other workloads (:func:`benchmarks.workloads._each_system`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from benchmarks import stockload
from benchmarks.dialects import Dialect
from benchmarks.profiles import Profile
from benchmarks.stats import Histogram
from benchmarks.systems import System, raise_fd_limit, wait_for_quiet
from benchmarks.workloads import (
    CTX,
    FANOUT_TARGET,
    Result,
    _brief,
    _Cpu,
    _each_system,
    _finish,
    _get,
    _Procs,
    _ratio,
    _target,
    fanout_measure,
    log,
    merge_parts,
)
from syncd.embedded import EmbeddedRedis

SKU = "FLASH-1"
SKU_WATCH = "WATCH-1"
WATCH_UNITS = 1_000_000
"""On hand for ``stockwatch``: more than the whole ramp reserves, so every reserve changes ATP."""
TARGET_RESERVATIONS_S = 5000.0


# --- flashsale -------------------------------------------------------------------------------------------


def flashsale(profile: Profile, workdir: Path) -> Result:
    """``flash_units`` units, ``flash_clients`` shoppers over ``flash_procs`` processes, each reserving 1 unit
    at a time (closed loop) until sold out. Reservations/s = units sold / time from the start to the last
    successful reservation; oversold = reservations acked beyond the units, or a stock hash in Redis that
    disagrees with the acks. The floor: the hub's ``stock_reserve`` script, same KEYS and ARGV, pipelined from
    redis-py on its own fresh Redis, in the same run."""
    raise_fd_limit()
    runs: dict[str, list[Result]] = {"floor": [], "syncd": []}
    for round_no in range(profile.rounds):
        for name in runs:
            log(f"  {name}: starting (round {round_no + 1} of {profile.rounds})")
            where = workdir / f"round-{round_no}"
            result = _flash_floor(profile, where) if name == "floor" else _flash_hub(profile, where)
            log(f"  {name}: {_brief(result)}")
            runs[name].append(result)
    results = {}
    for name, measured in runs.items():
        results[name] = max(measured, key=lambda r: float(r["reservations_per_s"]))
        results[name]["rounds"] = [r["reservations_per_s"] for r in measured]
    ours = results["syncd"]
    ratios = {
        "vs_floor": _ratio(ours["reservations_per_s"], results["floor"]["reservations_per_s"]),
        "p99_vs_floor": _ratio(ours["p99_ms"], results["floor"]["p99_ms"]),
    }
    targets = [
        _target("oversold == 0", ours["oversold"], "==", 0),
        _target("every unit sold", ours["sold_out"], "==", True),
        _target(
            f"reservations/s through the hub >= {int(TARGET_RESERVATIONS_S)}",
            ours["reservations_per_s"],
            ">=",
            TARGET_RESERVATIONS_S,
        ),
    ]
    params = {
        "clients": profile.flash_clients,
        "processes": profile.flash_procs,
        "units": profile.flash_units,
        "floor_connections": profile.flash_floor_workers,
        "floor_pipeline_depth": profile.flash_floor_depth,
        "rounds": profile.rounds,
    }
    return _finish("flashsale", profile, params, results, ratios, targets)


def _flash_hub(profile: Profile, workdir: Path) -> Result:
    system = System("syncd", workdir)
    devices = [(f"shop-{i}", f"m-s{i}") for i in range(profile.flash_clients)]
    shares = [devices[i :: profile.flash_procs] for i in range(profile.flash_procs)]
    procs = _Procs()
    try:
        system.start()
        idle = wait_for_quiet(profile.quiet_wait_s) if profile.quiet_wait_s else None
        asyncio.run(stockload.restock(system.url, SKU, profile.flash_units))
        go, out = CTX.Event(), CTX.Queue()
        for share in shares:
            ready = CTX.Event()
            procs.spawn(stockload.shopper_pool, system.url, share, SKU, ready, go, out)
            procs.wait(ready, 120, "shoppers connected", system)
        cpu = _Cpu({"server": system.pid, "redis": system.redis_pid()})
        start = time.monotonic_ns()
        go.set()
        parts = [_get(out, 600, system) for _ in shares]
        cores = cpu.cores()
        stock, holds = asyncio.run(_read_stock(system.redis.url))
        if not system.alive():
            raise RuntimeError(f"syncd: the server died during the run:\n{system.log()}")
    finally:
        procs.close()
        system.stop()
    hist, refused = merge_parts(parts)
    ok = sum(part["ok"] for part in parts)
    last = max(part["last_ok_ns"] for part in parts)
    result = _flash_figures(profile, ok, refused, hist, start, last, stock, holds)
    cores["loadgen"] = round(sum(part["cpu_s"] for part in parts) / max(1e-9, (last - start) / 1e9), 2)
    result.update(cpu_cores=cores, busy_cores_before=idle)
    return result


def _flash_floor(profile: Profile, workdir: Path) -> Result:
    server = EmbeddedRedis(workdir / "floor" / "redis-data")
    server.start()
    try:

        async def sale() -> tuple[dict[str, Any], dict[str, int], int]:
            redis = Redis.from_url(server.url, max_connections=profile.flash_floor_workers + 2)
            try:
                floor = stockload.ScriptFloor(redis, SKU)
                await floor.load()
                await floor.restock(profile.flash_units)
                sold = await floor.sale(
                    profile.flash_clients, profile.flash_floor_workers, profile.flash_floor_depth
                )
            finally:
                await redis.aclose()
            stock, holds = await _read_stock(server.url)
            return sold, stock, holds

        idle = wait_for_quiet(profile.quiet_wait_s) if profile.quiet_wait_s else None
        sold, stock, holds = asyncio.run(sale())
    finally:
        server.stop()
    result = _flash_figures(
        profile, sold["ok"], sold["refused"], sold["hist"], sold["start_ns"], sold["last_ok_ns"], stock, holds
    )
    result.update(client_cpu_s=round(sold["cpu_s"], 2), busy_cores_before=idle)
    return result


def _flash_figures(
    profile: Profile,
    ok: int,
    refused: dict[str, int],
    hist: Histogram,
    start_ns: int,
    last_ok_ns: int,
    stock: dict[str, int],
    holds: int,
) -> Result:
    """Figures of one sale; ``oversold`` counts every way the acks and Redis could show more sold than
    there was: acks beyond the units, holds beyond the units, a negative pool, a broken invariant."""
    units = profile.flash_units
    seconds = max(1e-9, (last_ok_ns - start_ns) / 1e9)
    broken = stock.get("on_hand") != stock.get("pool", 0) + stock.get("held", 0) or stock.get("pool", 0) < 0
    oversold = max(0, ok - units) + max(0, holds - units) + (1 if broken else 0) + abs(holds - ok)
    return {
        "reservations_per_s": round(ok / seconds),
        "reserved": ok,
        "refused": refused,
        "sold_out": ok == units and refused.get("insufficient_stock", 0) > 0,
        "oversold": oversold,
        "p50_ms": hist.percentile_ms(50),
        "p99_ms": hist.percentile_ms(99),
        "max_ms": hist.percentile_ms(100),
        "seconds": round(seconds, 3),
        "redis_stock": {k: stock.get(k) for k in ("on_hand", "pool", "held", "sold")},
        "redis_holds": holds,
    }


async def _read_stock(redis_url: str) -> tuple[dict[str, int], int]:
    redis = Redis.from_url(redis_url)
    try:
        raw = await redis.hgetall(f"{{sku:{SKU}}}:stock")
        holds = int(await redis.hlen(f"{{sku:{SKU}}}:holds"))
    finally:
        await redis.aclose()
    return {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}, holds


# --- stockwatch ------------------------------------------------------------------------------------------


def stockwatch(profile: Profile, workdir: Path) -> Result:
    """For each count in ``watch_subs``: that many subscribers of ``stock:<sku>`` (Node receivers) while one
    writer reserves units of the SKU at a rate that ramps up step by step (the ``fanout`` ramp), so every
    event is an ATP change. Counted per step: events, deliveries expected (events x subscribers) and
    delivered; the figure of merit is the highest step sustained (all delivered, p99 <= ``sustain_p99_ms``).
    The floor: the fan-out floor (:mod:`benchmarks.floor`) with the same subscribers and ramp, same run; and
    the broadcast floor (:mod:`benchmarks.bcast`, no Redis) beside it."""
    raise_fd_limit()
    systems: tuple[Dialect, ...] = ("floor", "bcast", "syncd")
    by_subs: dict[str, Result] = {}
    ratios: Result = {}
    targets = []
    for subs in profile.watch_subs:
        measure = fanout_measure(profile, subs, sku=SKU_WATCH)

        def restocked(system: System, measure: Callable[[System], Result] = measure) -> Result:
            if system.name == "syncd":
                asyncio.run(stockload.restock(system.url, SKU_WATCH, WATCH_UNITS))
            return measure(system)

        results = _each_system(
            profile,
            workdir / f"subs-{subs}",
            restocked,
            score=lambda r: float(r["deliveries_per_s"]),
            systems=systems,
        )
        key = f"{subs}_subs"
        by_subs[key] = results
        ours, floor = results["syncd"], results["floor"]
        first = ours["steps"][0] if ours["steps"] else {}
        ratios[key] = {
            "vs_floor": _ratio(ours["deliveries_per_s"], floor["deliveries_per_s"]),
            "vs_bcast": _ratio(ours["deliveries_per_s"], results["bcast"]["deliveries_per_s"]),
            "p99_vs_floor": _ratio(ours["p99_ms"], floor["p99_ms"]),
        }
        targets += [
            _target(
                f"{subs} subs: every ATP change of the first step delivered to every subscriber",
                first.get("delivered"),
                "==",
                first.get("expected", -1),
            ),
            _target(
                f"{subs} subs: a step sustained (all delivered, p99 <= {profile.sustain_p99_ms} ms)",
                ours["p99_ms"],
                "<=",
                profile.sustain_p99_ms,
            ),
            _target(
                f"{subs} subs: deliveries/s >= {FANOUT_TARGET}x floor",
                ratios[key]["vs_floor"],
                ">=",
                FANOUT_TARGET,
            ),
        ]
    params = {
        "subscribers": list(profile.watch_subs),
        "receiver_processes": profile.fanout_procs,
        "sustained_means": f"all delivered and p99 <= {profile.sustain_p99_ms} ms",
        "event": f"stock.reserve of 1 unit of stock:{SKU_WATCH} (each one an ATP change)",
    }
    out = {"workload": "stockwatch", "profile": profile.name, "params": params, **_flatten(by_subs)}
    out["ratios"] = ratios
    out["targets"] = targets
    out["pass"] = all(t["pass"] for t in targets)
    return out


def _flatten(by_subs: dict[str, Result]) -> Result:
    """``{"syncd": {"1000_subs": ...}, "floor": {...}}``: each system's figures, by subscriber count."""
    systems = ("syncd", "floor", "bcast")
    return {name: {key: results[name] for key, results in by_subs.items()} for name in systems}
