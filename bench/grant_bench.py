"""The cost of a refused call's grant lookup: the chain-backed check against the plain SQL lookup it replaced.

Run ``.venv/bin/python bench/grant_bench.py [--quick]``. Before grants were bound to the hash chain a refused call
ran one SQL query on the grant table (about 180 µs through SQLAlchemy Core on local SQLite). Now it reads the chain
records appended since its last check (one query that also returns the head) and, only when the chain shows an
active grant for the caller, that grant's row. Both are measured here in the same run, on one SQLite database, with
one audit row appended before every lookup, as a refused call's own denial row is; the figure is the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout: import the package without installing it
    sys.path.insert(0, str(ROOT))

import sqlalchemy  # noqa: E402

from mcp_gateway.audit.log import AuditEntry, AuditLog  # noqa: E402
from mcp_gateway.breakglass import BreakGlass  # noqa: E402
from mcp_gateway.config import BreakGlassSettings  # noqa: E402
from mcp_gateway.identity import Principal  # noqa: E402
from mcp_gateway.store.tables import GRANT_TABLE as _GRANTS  # noqa: E402


def _old_lookup(engine: sqlalchemy.Engine, subject: str, catalog: str, tool: str, now: float) -> str | None:
    """The lookup as store/grants.py ran it before grants were bound to the chain (BreakGlassStore.active_grant)."""
    query = (
        sqlalchemy.select(_GRANTS.c.id)
        .where(
            _GRANTS.c.subject == subject,
            _GRANTS.c.catalog == catalog,
            _GRANTS.c.status == "approved",
            _GRANTS.c.expires_at > now,
            _GRANTS.c.tool == tool,
        )
        .order_by(_GRANTS.c.expires_at.desc())
        .limit(1)
    )
    with engine.connect() as connection:
        rows = [dict(row) for row in connection.execute(query).mappings()]
    return str(rows[0]["id"]) if rows else None


def _denial(index: int) -> AuditEntry:
    return AuditEntry(event="tools/call", decision="deny", outcome="unknown_tool", subject=f"user{index % 50}",
                      tool="hr.salary_lookup", rule="default-deny", request_id=f"r{index}")  # fmt: skip


def measure(calls: int, grants: int, trail: int) -> dict[str, float]:
    """Median µs per lookup for the old query and the chain-backed check, with ``grants`` grants on record."""
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'audit.db'}"
        audit = AuditLog(url)
        store = BreakGlass(url, BreakGlassSettings(), audit)
        approver = Principal("dave", ("breakglass-approver",), "internal", ("mfa",), None, "bench", 2**40)
        for index in range(grants):
            requester = Principal(f"holder{index}", (), "internal", ("mfa",), None, "bench", 2**40)
            grant = store.request(requester, "hr.salary_lookup", "incident 42: payroll outage", 600, tool_exists=True)
            store.approve(approver, grant.id)
        for index in range(trail):
            audit.record(_denial(index))
        engine = sqlalchemy.create_engine(url)
        old: list[float] = []
        new: list[float] = []
        for index in range(calls):
            audit.record(_denial(index))
            started = time.perf_counter()
            found = _old_lookup(engine, "alice", "internal", "hr.salary_lookup", time.time())
            old.append(time.perf_counter() - started)
            assert found is None
            audit.record(_denial(index))
            started = time.perf_counter()
            assert store.active_grant("alice", "internal", "hr.salary_lookup") is None
            new.append(time.perf_counter() - started)
        engine.dispose()
        store.close()
        audit.close()
    return {"old_us": statistics.median(old) * 1e6, "chain_us": statistics.median(new) * 1e6}


def run(quick: bool) -> dict[str, Any]:
    """``make bench``'s figures: the two lookups with no grant on record and with 100."""
    calls, trail = (200, 1_000) if quick else (2_000, 20_000)
    rows = []
    for grants in (0, 100):
        result = measure(calls, grants, trail)
        rows.append({"grants": grants, **result, "ratio": result["chain_us"] / result["old_us"]})
    return {"calls": calls, "trail": trail, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="Fewer calls and a shorter trail.")
    args = parser.parse_args()
    for row in run(args.quick)["rows"]:
        print(f"{row['grants']:>4} grants: old lookup {row['old_us']:.0f} µs, chain-backed {row['chain_us']:.0f} µs "
              f"(ratio {row['ratio']:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
