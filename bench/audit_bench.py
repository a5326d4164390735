"""Audit append cost: three ways to commit one hash-chained row on the same SQLite table, in one run.

1. ORM: a SQLModel ``Session`` add + commit per row (the obvious way)
2. Core: a pre-built SQLAlchemy Core ``insert`` executed through ``engine.begin()`` per row
3. driver: what ``AuditLog.record`` does: SQL compiled once, executed on the DB-API connection

Run ``.venv/bin/python bench/audit_bench.py [--rows N]``. Reports µs per committed row (median of 3 rounds) and
each way's ratio to the driver path. The gateway writes one or two rows per call inline, so this is on the
hot path.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
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

from mcp_gateway.audit import GENESIS, AuditEntry, AuditLog, AuditRecord, record_hash  # noqa: E402

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
