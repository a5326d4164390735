"""`audit verify` on a large trail: time per record, and peak memory that does not grow with the trail.

Builds a trail of N records (default 1,000,000) with a signed checkpoint every tenth, then verifies it
streamed from SQLite. Baselines measured in the same run: the same verify on the first tenth of the trail
(peak memory should be the same: ratio about 1), and loading that tenth into a list (what verifying without
streaming would hold).

Run ``.venv/bin/python bench/verify_bench.py [--records N]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from mcp_gateway.audit.checkpoint import Checkpointer, Signer  # noqa: E402
from mcp_gateway.audit.log import AuditEntry, AuditLog, row_of  # noqa: E402
from mcp_gateway.audit.verify import verify_records  # noqa: E402


def build(log: AuditLog, records: int, checkpointer: Checkpointer, batch: int = 10_000) -> None:
    written = 0
    while written < records:
        count = min(batch, records - written)
        rows = [
            row_of(
                AuditEntry(
                    event="tools/call.result",
                    decision="allow",
                    outcome="ok",
                    request_id=f"{written + i:032x}",
                    trace_id=f"{written + i:032x}",
                    subject="alice",
                    roles=("support",),
                    catalog="internal",
                    tool="crm.customer_lookup",
                    rule="internal.csv:3 p, role:support, internal, crm.*, call, allow",
                    args_digest="f" * 64,
                    latency_ms=1.5,
                    policy_version="e" * 64,
                )
            )
            for i in range(count)
        ]
        log._commit_rows(rows)
        written += count
        if written % max(records // 10, batch) == 0:
            checkpointer.sign_now()


def measure(job: Callable[[], Any]) -> tuple[float, int, Any]:
    tracemalloc.start()
    started = time.perf_counter()
    result = job()
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return elapsed, peak, result


def run(records: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        log = AuditLog(f"sqlite:///{Path(folder) / 'big.db'}")
        signer = Signer.load_or_create(Path(folder) / "key.pem")
        checkpointer = Checkpointer(log, signer, Path(folder) / "checkpoints.jsonl")
        started = time.perf_counter()
        build(log, records, checkpointer)
        checkpointer.sign_now()
        built = time.perf_counter() - started
        tenth = records // 10
        checkpoints = log.checkpoints()

        def verify(limit: int | None) -> Any:
            rows = log.iter_rows(batch=5000)
            if limit is not None:
                rows = (row for row in rows if row["id"] <= limit)
            return verify_records(
                rows, [c for c in checkpoints if limit is None or c["record_id"] <= limit], signer.public_key
            )

        small_time, small_peak, small = measure(lambda: verify(tenth))
        list_time, list_peak, _ = measure(lambda: [row for row in log.iter_rows(batch=5000) if row["id"] <= tenth])
        started = time.perf_counter()
        full = verify(None)  # timed without tracemalloc, which slows Python several times
        full_time = time.perf_counter() - started
        _, full_peak, _ = measure(lambda: verify(None))
        log.close()
    assert small.ok, small.problems
    assert full.ok, full.problems
    return {
        "records": records,
        "build_s": built,
        "verify_s": full_time,
        "us_per_record": full_time / records * 1e6,
        "peak_full_mb": full_peak / 1e6,
        "peak_tenth_mb": small_peak / 1e6,
        "peak_ratio": full_peak / small_peak,
        "list_tenth_mb": list_peak / 1e6,
        "tenth_s": small_time,
        "list_s": list_time,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=1_000_000)
    args = parser.parse_args()
    report = run(args.records)
    table = Table("measure", "value", title=f"audit verify, {report['records']:,} records (SQLite)")
    table.add_row("build the trail", f"{report['build_s']:.1f} s")
    table.add_row("verify, whole trail", f"{report['verify_s']:.1f} s ({report['us_per_record']:.1f} µs/record)")
    table.add_row("peak traced memory, whole trail", f"{report['peak_full_mb']:.1f} MB")
    table.add_row("peak traced memory, first tenth (baseline)", f"{report['peak_tenth_mb']:.1f} MB")
    table.add_row("ratio whole / tenth", f"{report['peak_ratio']:.2f}")
    table.add_row("a tenth loaded into a list (no streaming)", f"{report['list_tenth_mb']:.1f} MB")
    Console().print(table)


if __name__ == "__main__":
    main()
