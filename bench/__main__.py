"""``make bench``: every benchmark, ratios against baselines measured in the same run.

``python -m bench [--quick] [--only NAME,...] [--variant NAME:KEY=VALUE ...]`` (names: echo, gateway, policy,
audit, memory, console, replicas, metrics, grants) writes ``bench/results.json`` (or ``--output``) and prints
one table per benchmark with the targets. A ``--variant`` adds a governed configuration to the echo benchmark
beside the default one and the ``power`` durability level (always measured), e.g.
``--variant 'batch 64:audit.max_batch=64'``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from bench import (
    audit_bench,
    console_bench,
    echo_bench,
    gateway_bench,
    grant_bench,
    memory_bench,
    metrics_bench,
    policy_bench,
    replica_bench,
)
from bench.common import machine
from bench.report import render

BENCHMARKS = ("echo", "gateway", "policy", "audit", "memory", "console", "replicas", "metrics", "grants")


def _variant(text: str) -> tuple[str, dict[str, Any]]:
    name, _, assignments = text.partition(":")
    settings: dict[str, Any] = {}
    for assignment in filter(None, assignments.split(",")):
        key, _, value = assignment.partition("=")
        *path, last = key.strip().split(".")
        target = settings
        for part in path:
            target = target.setdefault(part, {})
        target[last] = yaml.safe_load(value)
    if not name or not settings:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME:KEY=VALUE[,KEY=VALUE]")
    return name, settings


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer calls and sizes: about a minute and a half")
    parser.add_argument(
        "--only", default=",".join(BENCHMARKS), help="comma-separated subset of " + ",".join(BENCHMARKS)
    )
    parser.add_argument("--variant", type=_variant, action="append", default=[], help="NAME:KEY=VALUE[,KEY=VALUE]")
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("results.json"))
    args = parser.parse_args()
    chosen = [name for name in args.only.split(",") if name]
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s): {unknown}")

    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "echo": lambda: echo_bench.run(args.quick, variants={**echo_bench.DEFAULT_VARIANTS, **dict(args.variant)}),
        "gateway": lambda: gateway_bench.run(args.quick),
        "policy": lambda: policy_bench.run(args.quick),
        "audit": lambda: audit_bench.run_appends(args.quick),
        "memory": lambda: memory_bench.run(args.quick),
        "console": lambda: console_bench.run(args.quick),
        "replicas": lambda: replica_bench.run(args.quick),
        "metrics": lambda: metrics_bench.run(500 if args.quick else 2000, 3 if args.quick else 7),
        "grants": lambda: grant_bench.run(args.quick),
    }
    console = Console(width=None if Console().is_terminal else 160)
    results: dict[str, Any] = {"machine": machine(), "quick": args.quick}
    started = time.perf_counter()
    for name in chosen:
        console.print(f"[bold]running {name}[/bold] ...")
        began = time.perf_counter()
        results[name] = runners[name]()
        results[name]["seconds"] = round(time.perf_counter() - began, 1)
        render(name, results[name], console)
    results["seconds"] = round(time.perf_counter() - started, 1)
    args.output.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    console.print(f"wrote {args.output} in {results['seconds']} s")


if __name__ == "__main__":
    main()
