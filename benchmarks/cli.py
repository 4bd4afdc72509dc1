"""``python -m benchmarks <workload> [--json] [--quick | --smoke] [--subs N,N] [--conns N,N] [--rounds N]
[--out FILE] [--keep]``."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.isolation import isolation
from benchmarks.profiles import FULL, PROFILES
from benchmarks.stock import flashsale, stockwatch
from benchmarks.systems import scratch_dir
from benchmarks.workloads import WORKLOADS as MEASURED
from benchmarks.workloads import Result, log
from syncd.embedded import find_server_binary, server_version

WORKLOADS = {**MEASURED, "isolation": isolation, "flashsale": flashsale, "stockwatch": stockwatch}


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(
                (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), ""
            )
    except OSError:
        pass
    name, version = server_version(find_server_binary())  # the server the benchmark's Redis runs
    return {
        "syncd_tree": _tree_digest(),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "redis": f"{name} {version}",
        "kernel": platform.release(),
    }


def _tree_digest() -> str:
    """A short digest of the hub's source (syncd/ and protocol/): which code the figures are of."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted(
        [*root.glob("syncd/**/*.py"), *root.glob("syncd/**/*.lua"), *root.glob("protocol/*.py")]
    ):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description="syncd vs a floor and a peer")
    parser.add_argument("workload", choices=[*WORKLOADS, "all"])
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object per workload (one line each)"
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", action="store_true", help="smaller counts: the whole suite in under a minute"
    )
    size.add_argument(
        "--smoke", action="store_true", help="tiny counts, seconds: checks that everything runs"
    )
    parser.add_argument(
        "--subs",
        help="fanout and stockwatch: subscriber counts, comma-separated (fanout measures the first)",
    )
    parser.add_argument(
        "--conns",
        help="conns: connection counts, comma-separated (the target applies to the first; e.g. 5000,20000)",
    )
    parser.add_argument("--rounds", type=int, help="rounds per system, interleaved (default: the profile's)")
    parser.add_argument("--out", help="also append the JSON objects to this file")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (server logs)")
    args = parser.parse_args(argv)
    profile = PROFILES["smoke"] if args.smoke else PROFILES["quick"] if args.quick else FULL
    if args.subs:
        counts = tuple(int(n) for n in args.subs.split(","))
        profile = dataclasses.replace(profile, fanout_subs=counts[0], watch_subs=counts)
    if args.conns:
        held = tuple(int(n) for n in args.conns.split(","))
        profile = dataclasses.replace(profile, conns=held[0], conns_more=held[1:])
    if args.rounds:
        profile = dataclasses.replace(profile, rounds=args.rounds)
    names = list(WORKLOADS) if args.workload == "all" else [args.workload]
    stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    host = machine()
    failed = False
    with scratch_dir(keep=args.keep) as workdir:
        if args.keep:
            log(f"scratch directory: {workdir}")
        for name in names:
            log(f"{name} ({profile.name})")
            result: Result = {"date": stamp, "machine": host, **WORKLOADS[name](profile, workdir / name)}
            failed = failed or not result["pass"]
            line = json.dumps(result)
            if args.out:
                with open(args.out, "a") as out:
                    out.write(line + "\n")
            print(line if args.json else _human(result), flush=True)
    return 1 if failed and profile.name == FULL.name else 0


def _human(result: Result) -> str:
    lines = [f"== {result['workload']} ({result['profile']})"]
    shown = ("syncd", "floor", "bcast", "peer", "syncd_metrics_on", "syncd_metrics_off")
    for system in [name for name in shown if name in result]:
        figures = {k: v for k, v in result[system].items() if k != "steps"}
        lines.append(f"  {system:6} {json.dumps(figures)}")
    lines.append(f"  ratios {json.dumps(result['ratios'])}")
    for more in result.get("more", []):  # conns: the further counts
        figures = {name: more[name]["kib_per_conn"] for name in shown if name in more}
        lines.append(f"  at {more['connections']}: KiB per connection {json.dumps(figures)}")
    for target in result["targets"]:
        mark = "PASS" if target["pass"] else "FAIL"
        lines.append(
            f"  [{mark}] {target['target']}: {target['value']} (limit {target['op']} {target['limit']})"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
