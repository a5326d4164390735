"""The console's audit search at scale: one page of results from a 1,000,000-record SQLite trail.

The target (issue: the console) is a page in at most 200 ms at 1M records. The trail is built once (about a
minute) with a realistic mix: 50 subjects, 8 tools, one deny in twenty, a rare subject that appears once per
100,000 records and a subject that never appears. Measured per query: the median of several runs of one page
(50 rows) through :class:`AuditSearch`, the deep page reached by following the cursor 20 times, and, as the
baseline measured in the same run, the bare SQL of the newest 50 rows (``ORDER BY id DESC LIMIT 50``), which is
what any search costs at least.

Run ``.venv/bin/python bench/console_bench.py [--records N]``, or ``python -m bench --only console``.
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

from mcp_gateway.audit.log import AuditEntry, AuditLog, row_of  # noqa: E402
from mcp_gateway.store.search import SearchFilter  # noqa: E402

TARGET_MS = 200.0
TOOLS = (
    "crm.customer_lookup",
    "crm.search",
    "tickets.create",
    "hr.salary_lookup",
    "orders.status",
    "llm.sum",
    "a",
    "b",
)


def build(log: AuditLog, records: int, batch: int = 10_000) -> None:
    written = 0
    while written < records:
        count = min(batch, records - written)
        rows = []
        for index in range(written, written + count):
            rare = index % 100_000 == 7
            rows.append(
                row_of(
                    AuditEntry(
                        event="tools/call" if index % 2 else "tools/call.result",
                        decision="deny" if index % 20 == 0 else "allow",
                        outcome="ok" if index % 20 else "unknown_tool",
                        request_id=f"{index // 2:032x}",
                        trace_id=f"{index // 2:032x}",
                        subject="rare-auditee" if rare else f"user{index % 50}",
                        roles=("support",),
                        catalog="internal",
                        tool=TOOLS[index % len(TOOLS)],
                        rule=f"internal.csv:{3 + index % 4} p, role:support, internal, crm.*, call, allow",
                        args_digest="f" * 64,
                        latency_ms=1.5,
                        policy_version="e" * 64,
                    )
                )
            )
        log._commit_rows(rows)
        written += count


def _median_ms(run: Callable[[], object], repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        began = time.perf_counter()
        run()
        timings.append((time.perf_counter() - began) * 1000)
    return statistics.median(timings)


def _deep(log: AuditLog, wanted: SearchFilter, pages: int) -> int | None:
    before: int | None = None
    for _ in range(pages):
        page = log.search(wanted, before=before)
        before = page.next_before
        if before is None:
            break
    return before


def run(quick: bool = False, records: int | None = None) -> dict[str, Any]:
    count = records or (200_000 if quick else 1_000_000)
    repeats = 5 if quick else 9
    with tempfile.TemporaryDirectory() as folder:
        log = AuditLog(f"sqlite:///{folder}/audit.db")
        began = time.perf_counter()
        build(log, count)
        build_s = time.perf_counter() - began
        baseline = _median_ms(lambda: log.tail(50), repeats)
        queries = {
            "newest page, no filter": SearchFilter(),
            "one subject (1 in 50)": SearchFilter(subject="user7"),
            "denials": SearchFilter(decision="deny"),
            "one tool and outcome": SearchFilter(tool="crm.search", outcome="ok"),
            "a rule": SearchFilter(rule="internal.csv:4"),
            "a rare subject (1 in 100,000)": SearchFilter(subject="rare-auditee"),
            "a subject never seen (bounded scan)": SearchFilter(subject="nobody"),
            "a time range": SearchFilter(since="2000-01-01T00:00:00", until="2100-01-01T00:00:00"),
        }
        rows = []
        for name, wanted in queries.items():
            page = log.search(wanted)
            took = _median_ms(lambda wanted=wanted: log.search(wanted), repeats)  # type: ignore[misc]
            rows.append(
                {
                    "query": name,
                    "rows": len(page.rows),
                    "scanned": page.scanned,
                    "p50_ms": took,
                    "x_baseline": took / baseline,
                }
            )
        deep = _median_ms(lambda: _deep(log, SearchFilter(subject="user7"), 20), max(3, repeats // 3)) / 20
        rows.append(
            {
                "query": "page 20 of one subject (per page)",
                "rows": 50,
                "scanned": 0,
                "p50_ms": deep,
                "x_baseline": deep / baseline,
            }
        )
        log.close()
    return {
        "benchmark": "console",
        "records": count,
        "build_s": build_s,
        "baseline_ms": baseline,
        "target_ms": TARGET_MS,
        "queries": rows,
    }


def show(result: dict[str, Any], console: Console) -> None:
    table = Table(
        title=f"Audit search, one page of 50, on {result['records']:,} SQLite records (target ≤ {TARGET_MS:.0f} ms)"
    )
    for column in ("query", "rows", "ids scanned", "p50 ms", "x newest-50 SQL", "target"):
        table.add_column(column, justify="left" if column == "query" else "right")
    for row in result["queries"]:
        ok = row["p50_ms"] <= TARGET_MS
        table.add_row(
            row["query"],
            str(row["rows"]),
            f"{row['scanned']:,}",
            f"{row['p50_ms']:.1f}",
            f"{row['x_baseline']:.1f}",
            ("✓" if ok else "✗") + f" (≤{TARGET_MS:.0f} ms)",
        )
    console.print(table)
    console.print(
        f"baseline (newest 50 rows, bare SQL): {result['baseline_ms']:.2f} ms; trail built in {result['build_s']:.0f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    show(run(args.quick, args.records), Console())


if __name__ == "__main__":
    main()
