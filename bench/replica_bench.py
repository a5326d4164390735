"""Replicas on one PostgreSQL: what sharing costs.

1. The shared rate-limit store (``limits.store: database``) against the in-memory one, in the same run: µs per
   rate-limited call through :class:`RateLimiter` (one caller, sequential), and takes/s with many callers at once
   on one event loop. The database store's take is one upsert on a thread of its pool; the figure includes the
   thread hop and the round trip to a PostgreSQL server on 127.0.0.1 (and, beside it, to a SQLite file).
2. Audit rows/s with 3 writer processes (replicas) appending to one PostgreSQL trail against 1, each process
   with the same number of concurrent callers (group commit). The chain is one sequence: every commit takes one
   advisory lock, so replicas add availability, not audit throughput. On this machine the writers, the client
   load and the PostgreSQL server all share 2 cores: the figure says what those 2 cores allow, no more.

Needs PostgreSQL's server binaries (found as tests/pgserver.py finds them); without them the run says so.
``python -m bench --only replicas`` or ``python bench/replica_bench.py [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout: import the package without installing it
    sys.path.insert(0, str(ROOT))

from bench.common import median, python_env  # noqa: E402
from mcp_gateway.audit.log import AuditEntry, AuditLog  # noqa: E402
from mcp_gateway.config import LimitsSettings  # noqa: E402
from mcp_gateway.ratelimit import BucketStore, DatabaseBucketStore, MemoryBucketStore, RateLimiter, parse_rate  # noqa: E402
from tests.pgserver import create_database, postgres_bin, postgres_server  # noqa: E402

# Large enough that no take is refused: the cost of admitting is what is measured.
SPEC = parse_rate("999999999/day")


async def _sequential(limiter: RateLimiter, calls: int) -> float:
    started = time.perf_counter()
    for index in range(calls):
        await limiter.take("internal", f"user{index % 8}", "crm.search", SPEC)
    return (time.perf_counter() - started) / calls * 1e6


async def _concurrent(limiter: RateLimiter, callers: int, calls: int) -> float:
    async def caller(number: int) -> None:
        for _ in range(calls):
            await limiter.take("internal", f"user{number}", "crm.search", SPEC)

    started = time.perf_counter()
    await asyncio.gather(*(caller(number) for number in range(callers)))
    return callers * calls / (time.perf_counter() - started)


def _store_figures(store: BucketStore, calls: int, callers: int, rounds: int) -> dict[str, float]:
    limiter = RateLimiter(store)
    try:
        asyncio.run(_sequential(limiter, max(10, calls // 10)))  # warm-up: connections opened, statements prepared
        per_call = [asyncio.run(_sequential(limiter, calls)) for _ in range(rounds)]
        per_second = [asyncio.run(_concurrent(limiter, callers, max(1, calls // callers))) for _ in range(rounds)]
    finally:
        limiter.close()
    return {"us_per_call": round(median(per_call), 1), "takes_per_s": round(median(per_second))}


def measure_limits(postgres: str | None, calls: int, callers: int, rounds: int) -> dict[str, dict[str, float]]:
    """µs per call and takes/s for the memory store and the database store on PostgreSQL and SQLite."""
    figures = {"memory": _store_figures(MemoryBucketStore(), calls, callers, rounds)}
    settings = LimitsSettings(store="database", workers=4)
    with tempfile.TemporaryDirectory() as folder:
        urls = {"sqlite": f"sqlite:///{Path(folder) / 'buckets.db'}"}
        if postgres is not None:
            urls = {"postgresql": create_database(postgres), **urls}
        for name, url in urls.items():
            figures[name] = _store_figures(DatabaseBucketStore.open(url, settings), calls, callers, rounds)
    base = figures["memory"]
    for result in figures.values():
        result["ratio_per_call"] = round(result["us_per_call"] / base["us_per_call"], 1)
        result["ratio_throughput"] = round(result["takes_per_s"] / base["takes_per_s"], 3)
    return figures


# -- audit rows/s: writer processes on one trail -----------------------------------------------------------------


def _entry(index: int) -> AuditEntry:
    return AuditEntry(event="tools/call.result", decision="allow", outcome="ok", subject=f"user{index % 50}",
                      tool="crm.search", rule="p0", request_id=f"r{index}", latency_ms=1.0)  # fmt: skip


def writer(url: str, rows: int, callers: int) -> None:
    """One replica's audit writer: open the trail, say ready, wait for go, append ``rows`` rows from ``callers``
    concurrent tasks (each awaiting its commit, as a call does), print when it started and ended."""
    log = AuditLog(url, max_batch=256)
    print("ready", flush=True)
    sys.stdin.readline()

    async def appends() -> tuple[float, float]:
        async def caller(number: int) -> None:
            for index in range(number, rows, callers):
                await log.append(_entry(index))

        started = time.time()
        await asyncio.gather(*(caller(number) for number in range(callers)))
        return started, time.time()

    started, ended = asyncio.run(appends())
    log.close()
    print(json.dumps({"started": started, "ended": ended, "rows": rows}), flush=True)


def _writers(url: str, processes: int, rows: int, callers: int) -> float:
    """Rows/s of ``processes`` writers appending ``rows`` each to the trail at ``url``, from the first start to
    the last end."""
    command = [sys.executable, "-m", "bench.replica_bench", "writer", url, str(rows), str(callers)]
    started = [
        subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=python_env())
        for _ in range(processes)
    ]
    try:
        for process in started:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready"
        for process in started:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        reports = [json.loads(process.communicate(timeout=600)[0].splitlines()[-1]) for process in started]
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
    seconds = max(report["ended"] for report in reports) - min(report["started"] for report in reports)
    written = sum(report["rows"] for report in reports)
    # The figure counts only rows that are in the trail, linked into its one chain.
    log = AuditLog(url)
    try:
        if log.last_id() != written or log.records.head() is None:
            raise RuntimeError(f"{written} rows appended, but the trail ends at {log.last_id()}")
    finally:
        log.close()
    return written / seconds


def measure_audit(postgres: str, rows: int, callers: int, rounds: int) -> dict[str, dict[str, float]]:
    """Rows/s of 1 and of 3 writer processes on one PostgreSQL trail (a fresh database per measurement)."""
    figures: dict[str, dict[str, float]] = {}
    for processes in (1, 3):
        # The same total work either way: 3 replicas share what 1 does alone.
        each = max(1, rows // processes)
        rates = [_writers(create_database(postgres), processes, each, callers) for _ in range(rounds)]
        figures[f"{processes} replica{'s' if processes > 1 else ''}"] = {
            "processes": processes,
            "callers_per_process": callers,
            "rows": each * processes,
            "rows_per_s": round(median(rates)),
        }
    one = figures["1 replica"]["rows_per_s"]
    for result in figures.values():
        result["ratio"] = round(result["rows_per_s"] / one, 2)
    return figures


def run(quick: bool, *, calls: int | None = None, rows: int | None = None, rounds: int | None = None) -> dict[str, Any]:
    calls = calls or (400 if quick else 2000)
    rows = rows or (600 if quick else 3000)
    rounds = rounds or (2 if quick else 3)
    result: dict[str, Any] = {"cores": os.cpu_count()}
    bindir = postgres_bin()
    if bindir is None:
        result["limits"] = measure_limits(None, calls, 16, rounds)
        result["skipped"] = "PostgreSQL server binaries not installed: no PostgreSQL figures"
        return result
    with postgres_server(bindir) as postgres:
        result["limits"] = measure_limits(postgres, calls, 16, rounds)
        result["audit"] = measure_audit(postgres, rows, 8, rounds)
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "writer":
        writer(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run(args.quick), indent=2))


if __name__ == "__main__":
    main()
