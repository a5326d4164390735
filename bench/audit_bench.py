"""Audit append cost: three ways to commit one hash-chained row on the same SQLite table, in one run.

1. ORM: a SQLModel ``Session`` add + commit per row (the obvious way)
2. Core: a pre-built SQLAlchemy Core ``insert`` executed through ``engine.begin()`` per row
3. driver: what ``AuditLog.record`` does: SQL compiled once, executed on the DB-API connection

Run ``.venv/bin/python bench/audit_bench.py [--rows N]``. Reports µs per committed row (median of 3 rounds) and
each way's ratio to the driver path. The gateway writes one or two rows per call inline, so this is on the
hot path.

:func:`run_appends` (``make bench``) measures durable appends per second through ``AuditLog.record``, with one
writer and with ``callers`` concurrent callers, against plain ``sqlite3`` committing the same row without the
chain in the same run. Target: >= 5,000 rows/s. Concurrent callers are threads while ``record`` is a plain
function; if ``record`` becomes a coroutine function (group commit), they are asyncio tasks awaiting it, so the
benchmark measures group commit without changes.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from sqlalchemy import insert, select  # noqa: E402
from sqlmodel import Session  # noqa: E402

from mcp_gateway.audit.log import GENESIS, AuditEntry, AuditLog, record_hash  # noqa: E402
from mcp_gateway.store.tables import AuditRecord  # noqa: E402

ENTRY = AuditEntry(
    event="tools/call",
    decision="allow",
    outcome="ok",
    request_id="8c1f0e4c2d5b4a3e9f7a6b5c4d3e2f1a",
    subject="alice",
    roles=("support",),
    catalog="internal",
    tool="crm.customer_lookup",
    rule="internal.csv:3 p, role:support, internal, crm.*, call, allow",
    args_digest="f" * 64,
    latency_ms=1.234,
    policy_version="e" * 64,
)


def _row(prev: str) -> dict[str, Any]:
    row: dict[str, Any] = {
        "ts": "2026-11-25T00:00:00.000000+00:00",
        "event": ENTRY.event,
        "request_id": ENTRY.request_id,
        "trace_id": None,
        "subject": ENTRY.subject,
        "roles": '["support"]',
        "catalog": ENTRY.catalog,
        "tool": ENTRY.tool,
        "tool_digest": None,
        "decision": ENTRY.decision,
        "rule": ENTRY.rule,
        "args_digest": ENTRY.args_digest,
        "outcome": ENTRY.outcome,
        "latency_ms": ENTRY.latency_ms,
        "policy_version": ENTRY.policy_version,
        "detail": None,
        "prev_hash": prev,
    }
    row["hash"] = record_hash(row)
    return row


def orm(log: AuditLog, rows: int) -> None:
    engine = log._engine
    head = select(AuditRecord.hash).order_by(AuditRecord.id.desc()).limit(1)  # type: ignore[union-attr]
    for _ in range(rows):
        with Session(engine) as session:
            prev = session.scalar(head) or GENESIS
            session.add(AuditRecord(**_row(prev)))
            session.commit()


def core(log: AuditLog, rows: int) -> None:
    engine = log._engine
    table = AuditRecord.__table__  # type: ignore[attr-defined]
    statement = insert(table)
    head = select(table.c.hash).order_by(table.c.id.desc()).limit(1)
    for _ in range(rows):
        with engine.begin() as connection:
            prev = connection.execute(head).scalar() or GENESIS
            connection.execute(statement, _row(prev))


def driver(log: AuditLog, rows: int) -> None:
    for _ in range(rows):
        log.record(ENTRY)


WAYS: dict[str, Callable[[AuditLog, int], None]] = {
    "ORM session": orm,
    "Core via engine": core,
    "driver (used)": driver,
}


def run(rows: int = 2000, rounds: int = 3) -> dict[str, Any]:
    results: dict[str, list[float]] = {name: [] for name in WAYS}
    with tempfile.TemporaryDirectory() as folder:
        for index in range(rounds):
            for name, way in WAYS.items():
                log = AuditLog(f"sqlite:///{Path(folder) / f'{index}-{len(results[name])}-{name[:4]}.db'}")
                way(log, 50)  # warm up: connection, statement caches
                started = time.perf_counter()
                way(log, rows)
                results[name].append((time.perf_counter() - started) / rows * 1e6)
                log.close()
    medians = {name: statistics.median(values) for name, values in results.items()}
    baseline = medians["driver (used)"]
    return {name: {"us_per_row": value, "ratio_to_driver": value / baseline} for name, value in medians.items()}


def _plain_sqlite(path: Path, rows: int, callers: int) -> list[float]:
    """The baseline: the same row inserted and committed with ``sqlite3`` alone (WAL, NORMAL), no chain."""
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    columns = [name for name in _row(GENESIS) if name != "prev_hash"]
    connection.execute(f"CREATE TABLE plain (id INTEGER PRIMARY KEY, {', '.join(columns)})")
    placeholders = ", ".join("?" * len(columns))
    sql = f"INSERT INTO plain ({', '.join(columns)}) VALUES ({placeholders})"  # noqa: S608 - our own names
    values = tuple(_row(GENESIS)[name] for name in columns)
    lock = threading.Lock()

    def append() -> None:
        with lock:
            connection.execute("BEGIN")
            connection.execute(sql, values)
            connection.execute("COMMIT")

    try:
        return _threads(append, rows, callers)
    finally:
        connection.close()


def _threads(append: Callable[[], object], rows: int, callers: int) -> list[float]:
    """Call ``append`` ``rows`` times from ``callers`` threads; returns [rows/s, per-row latencies...]."""
    latencies: list[list[float]] = [[] for _ in range(callers)]
    each = rows // callers
    start = threading.Barrier(callers + 1)

    def caller(index: int) -> None:
        start.wait()
        clock, mine = time.perf_counter, latencies[index]
        for _ in range(each):
            began = clock()
            append()
            mine.append(clock() - began)

    threads = [threading.Thread(target=caller, args=(index,)) for index in range(callers)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    return [each * callers / wall, *(x for part in latencies for x in part)]


async def _tasks(append: Callable[[], Any], rows: int, callers: int) -> list[float]:
    latencies: list[float] = []
    each = rows // callers

    async def caller() -> None:
        for _ in range(each):
            began = time.perf_counter()
            await append()
            latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return [each * callers / (time.perf_counter() - began), *latencies]


def _gateway_appends(path: Path, rows: int, callers: int) -> list[float]:
    log = AuditLog(f"sqlite:///{path}")
    try:
        if inspect.iscoroutinefunction(log.record):
            return asyncio.run(_tasks(lambda: log.record(ENTRY), rows, callers))
        return _threads(lambda: log.record(ENTRY), rows, callers)
    finally:
        log.close()


def run_appends(quick: bool = False, rounds: int = 3, callers: int = 8) -> dict[str, Any]:
    """Durable appends per second: ``AuditLog.record`` against plain sqlite3, 1 and ``callers`` callers."""
    rows = 2_000 if quick else 8_000
    ways = {"sqlite3 (no chain)": _plain_sqlite, "AuditLog.record": _gateway_appends}
    loads = {"single writer": 1, f"{callers} concurrent callers": callers}
    samples: dict[tuple[str, str], list[list[float]]] = {(w, load): [] for w in ways for load in loads}
    with tempfile.TemporaryDirectory() as folder:
        for index in range(rounds):
            for load, count in loads.items():
                for name, way in ways.items():
                    way(Path(folder) / f"warm-{index}-{count}-{name[:4]}.db", 200, count)
                    samples[(name, load)].append(way(Path(folder) / f"{index}-{count}-{name[:4]}.db", rows, count))
    figures: dict[str, Any] = {}
    for load in loads:
        for name in ways:
            runs = samples[(name, load)]
            figures.setdefault(load, {})[name] = {
                "rows_per_s": statistics.median(run[0] for run in runs),
                "p50_us": statistics.median(_percentile(run[1:], 50) * 1e6 for run in runs),
                "p99_us": statistics.median(_percentile(run[1:], 99) * 1e6 for run in runs),
            }
        base = figures[load]["sqlite3 (no chain)"]["rows_per_s"]
        figures[load]["AuditLog.record"]["ratio_to_sqlite3"] = figures[load]["AuditLog.record"]["rows_per_s"] / base
    return {
        "benchmark": "audit",
        "quick": quick,
        "rows": rows,
        "rounds": rounds,
        "callers": "asyncio tasks" if inspect.iscoroutinefunction(AuditLog.record) else "threads",
        "durability": "WAL, synchronous=NORMAL (the only level audit.py offers on this branch)",
        "appends": figures,
    }


def _percentile(values: list[float], percent: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=2000)
    args = parser.parse_args()
    report = run(args.rows)
    table = Table(
        "way", "µs per committed row (median of 3)", "ratio to driver", title="audit append, SQLite WAL, NORMAL"
    )
    for name, values in report.items():
        table.add_row(name, f"{values['us_per_row']:.1f}", f"{values['ratio_to_driver']:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
