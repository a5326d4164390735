"""Committed audit records per second, at each durability level, with 1 and 8 concurrent callers.

Each caller is an asyncio task that awaits ``AuditLog.append`` (the call path's way in) and counts a record
only once its commit is acknowledged. The baseline, measured in the same run on the same machine, is one
commit per record made one after another with the blocking ``AuditLog.record`` (what the gateway did before
group commit). Target: at least 5,000 committed records/s with 8 callers at each level.

Run ``.venv/bin/python bench/group_commit_bench.py [--seconds S]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.audit_bench import ENTRY as AUDIT_ENTRY  # noqa: E402
from mcp_gateway.audit.log import AuditLog, Durability  # noqa: E402

# The audit benchmarks' row, as the call path writes it (an outcome row with a trace id and span id).
ENTRY = replace(
    AUDIT_ENTRY,
    event="tools/call.result",
    trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
    detail={"span_id": "00f067aa0ba902b7"},
)


def baseline(log: AuditLog, seconds: float) -> float:
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        log.record(ENTRY)
        done += 1
    return done / (time.perf_counter() - started)


async def concurrent(log: AuditLog, callers: int, seconds: float) -> float:
    done = 0
    deadline = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await log.append(ENTRY)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return done / (time.perf_counter() - started)


def run(seconds: float = 2.0) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as folder:
        levels: tuple[Durability, ...] = ("process", "power")
        for level in levels:
            log = AuditLog(f"sqlite:///{Path(folder) / f'{level}.db'}", durability=level)
            log.record(ENTRY)
            base = baseline(log, seconds)
            one = asyncio.run(concurrent(log, 1, seconds))
            eight = asyncio.run(concurrent(log, 8, seconds))
            log.close()
            results[level] = {"baseline": base, "1 caller": one, "8 callers": eight}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    report = run(args.seconds)
    table = Table(
        "durability",
        "baseline: commit per record (rec/s)",
        "append, 1 caller",
        "append, 8 callers",
        "8 callers / baseline",
        title="committed audit records per second (SQLite WAL)",
    )
    for level, values in report.items():
        table.add_row(
            level,
            f"{values['baseline']:,.0f}",
            f"{values['1 caller']:,.0f}",
            f"{values['8 callers']:,.0f}",
            f"{values['8 callers'] / values['baseline']:.2f}",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
