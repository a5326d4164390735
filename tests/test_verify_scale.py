"""Verification streams: peak memory on a long trail is that of a short one (slow: builds 200,000 records).

`bench/verify_bench.py` does the same on 1,000,000 records and reports time and memory.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from mcp_gateway.audit.checkpoint import Checkpointer, Signer
from mcp_gateway.audit.log import AuditEntry, AuditLog, row_of
from mcp_gateway.audit.verify import VerifyReport, verify_records

pytestmark = pytest.mark.slow

RECORDS = 200_000


def _peak(log: AuditLog, signer: Signer, limit: int) -> tuple[int, VerifyReport]:
    checkpoints = [c for c in log.checkpoints() if c["record_id"] <= limit]
    tracemalloc.start()
    report = verify_records(
        (row for row in log.iter_rows(batch=5000) if row["id"] <= limit), checkpoints, signer.public_key
    )
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak, report


def test_verify_memory_does_not_grow_with_the_trail(tmp_path: Path) -> None:
    log = AuditLog(f"sqlite:///{tmp_path / 'big.db'}")
    signer = Signer.load_or_create(tmp_path / "key.pem")
    checkpointer = Checkpointer(log, signer, tmp_path / "checkpoints.jsonl")
    entry = AuditEntry(event="tools/call.result", decision="allow", outcome="ok", subject="alice", tool="crm.x")
    for start in range(0, RECORDS, 10_000):
        log._commit_rows([row_of(entry) for _ in range(10_000)])
        if start % 20_000 == 0:
            checkpointer.sign_now()
    checkpointer.sign_now()
    small_peak, small = _peak(log, signer, RECORDS // 10)
    full_peak, full = _peak(log, signer, RECORDS)
    log.close()
    assert small.ok, small.problems
    assert full.ok, full.problems
    assert full.records == RECORDS
    # Ten times the records, the same memory (within noise): nothing grows with the trail.
    assert full_peak < small_peak * 1.5, (small_peak, full_peak)
