"""The benchmark suite runs end to end and reports in its documented shape (no timing is asserted).

``python -m benchmarks sync --smoke --json`` starts the three systems (the hub, the floor, the peer) on fresh
Redis servers, drives a few hundred ops through each and prints one JSON object; this only checks its shape.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_smoke(workload: str, *extra: str) -> list[str]:
    """``python -m benchmarks <workload> --smoke --json``: its non-empty output lines, once it exited 0."""
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks", workload, "--smoke", "--json", *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=55,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    return [line for line in run.stdout.splitlines() if line.strip()]


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_sync_smoke_reports_every_system_ratio_and_target() -> None:
    lines = run_smoke("sync")
    assert len(lines) == 1, lines
    result = json.loads(lines[0])

    assert result["workload"] == "sync"
    assert result["profile"] == "smoke"
    assert result["machine"]["cpus"] >= 1
    assert isinstance(result["date"], str)
    for system in ("syncd", "floor", "peer"):
        figures = result[system]
        assert [row["rate"] for row in figures["by_rate"]] == result["params"]["rates_ops_s"]
        for row in figures["by_rate"]:
            assert set(row) >= {"rate", "count", "p50_ms", "p99_ms", "max_ms", "lost"}
            assert row["count"] + row["lost"] > 0
        assert set(figures["cpu_cores"]) >= {"server", "redis", "machine", "steal"}
    for ratios in result["ratios"].values():
        assert set(ratios) == {"p50_vs_floor", "p99_vs_floor", "p50_vs_peer", "p99_vs_peer"}
    assert result["targets"]
    for target in result["targets"]:
        assert set(target) == {"target", "value", "op", "limit", "pass"}
        assert isinstance(target["pass"], bool)
    assert result["pass"] == all(target["pass"] for target in result["targets"])


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_conns_smoke_reports_every_count_asked_for() -> None:
    result = json.loads(run_smoke("conns", "--conns", "40,60")[-1])
    assert result["workload"] == "conns"
    assert result["params"]["connections"] == 40
    assert result["params"]["more"] == [60]
    assert [more["connections"] for more in result["more"]] == [60]
    for figures in (result, result["more"][0]):
        for system in ("syncd", "floor", "peer"):
            assert set(figures[system]) >= {"connections", "rss_base_kib", "rss_kib", "kib_per_conn"}
        assert set(figures["ratios"]) == {"vs_floor", "vs_peer"}
    for target in result["targets"]:
        assert set(target) == {"target", "value", "op", "limit", "pass"}
    assert result["pass"] == all(target["pass"] for target in result["targets"])


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_replay_smoke_reports_its_figures_and_targets() -> None:
    result = json.loads(run_smoke("replay")[-1])
    assert result["workload"] == "replay"
    figures = result["syncd"]
    assert set(figures) >= {"replay_s", "replay_ops_per_s", "local_op_p50_ms", "local_op_p99_ms"}
    assert set(figures) >= {"hub_last_seq", "hub_cart_units", "client_rss_kib", "client_rss_delta_kib"}
    for target in result["targets"]:
        assert set(target) == {"target", "value", "op", "limit", "pass"}
    assert result["pass"] == all(target["pass"] for target in result["targets"])


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_metrics_smoke_compares_the_hub_with_metrics_on_and_off_in_one_run() -> None:
    result = json.loads(run_smoke("metrics")[-1])
    assert result["workload"] == "metrics"
    assert set(result["ratios"]) == {
        "write_ops_on_vs_off",
        "cpu_per_op_on_vs_off",
        "sync_p50_on_vs_off",
        "sync_p99_on_vs_off",
        "metrics_share_of_cpu_per_op",
    }
    assert 0 < result["syncd_metrics_on"]["metrics_us_per_batch"] < 1000
    assert 0 < result["syncd_metrics_on"]["report_us_per_ping"] < 1000
    for variant in ("syncd_metrics_on", "syncd_metrics_off"):
        figures = result[variant]
        assert figures["write"]["ops_per_s"] > 0
        assert figures["cpu_us_per_op"] > 0
        assert figures["sync"]["by_rate"][-1]["count"] > 0
    assert [t["target"] for t in result["targets"]][:2] == [
        "write ops/s with metrics >= 0.95x without",
        "sync p50 with metrics <= 1.05x without",
    ]


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_isolation_smoke_reports_the_victim_quiet_and_under_every_attack_with_ratios() -> None:
    result = json.loads(run_smoke("isolation")[-1])
    assert result["workload"] == "isolation"
    attacks = result["params"]["attacks"]
    assert set(attacks) == {"ping_flood", "expensive_frames", "op_flood", "churn", "slow_reader"}
    victim = result["syncd"]["victim"]
    for scenario in ("quiet", *attacks):
        assert victim[scenario]["count"] == result["params"]["victim_ops"]
        assert set(victim[scenario]) >= {"p50_ms", "p99_ms", "max_ms", "hub_cores"}
    assert set(result["ratios"]) == set(attacks)
    assert [target["pass"] for target in result["targets"]] == [
        result["ratios"][attack] <= 3.0 for attack in attacks
    ]


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_flashsale_smoke_sells_every_unit_once_through_the_hub_and_the_script_floor() -> None:
    result = json.loads(run_smoke("flashsale")[-1])
    assert result["workload"] == "flashsale"
    units = result["params"]["units"]
    for system in ("syncd", "floor"):
        figures = result[system]
        assert figures["reserved"] == figures["redis_holds"] == units, system
        assert figures["oversold"] == 0 and figures["sold_out"], system
        assert figures["redis_stock"] == {"on_hand": units, "pool": 0, "held": units, "sold": 0}
        assert figures["reservations_per_s"] > 0 and figures["p99_ms"] is not None
    assert set(result["ratios"]) == {"vs_floor", "p99_vs_floor"}
    assert [t["target"] for t in result["targets"]][:2] == ["oversold == 0", "every unit sold"]
    assert result["pass"] == all(target["pass"] for target in result["targets"])


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_stockwatch_smoke_counts_every_atp_change_delivered_beside_the_fanout_floor() -> None:
    result = json.loads(run_smoke("stockwatch")[-1])
    assert result["workload"] == "stockwatch"
    (subs,) = result["params"]["subscribers"]
    key = f"{subs}_subs"
    for system in ("syncd", "floor", "bcast"):
        figures = result[system][key]
        assert figures["subscribers"] == subs and figures["steps"], system
        for step in figures["steps"]:
            assert step["expected"] == step["events"] * subs
            assert 0 <= step["delivered"] <= step["expected"]
    assert set(result["ratios"][key]) == {"vs_floor", "vs_bcast", "p99_vs_floor"}
    assert result["targets"][-1]["target"] == f"{subs} subs: deliveries/s >= 0.8x floor"
    assert len(result["targets"]) == 3
    assert result["pass"] == all(target["pass"] for target in result["targets"])


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_fanout_smoke_reports_syncd_beside_the_floor_and_the_broadcast_floor() -> None:
    result = json.loads(run_smoke("fanout")[-1])
    assert result["workload"] == "fanout"
    subs = result["params"]["subscribers"]
    for system in ("syncd", "floor", "bcast", "peer"):
        figures = result[system]
        assert figures["subscribers"] == subs and figures["steps"], system
        assert len(figures["rounds"]) == result["params"]["rounds"], system
        for step in figures["steps"]:
            assert step["expected"] == step["events"] * subs
            assert 0 <= step["delivered"] <= step["expected"]
    assert {"vs_floor", "vs_bcast", "vs_peer"} <= set(result["ratios"])
    assert result["targets"][0]["target"] == "deliveries/s >= 0.8x floor"
    assert result["pass"] == all(target["pass"] for target in result["targets"])
