"""What telemetry costs per call: the gateway's refusal path (catalog, policy, audit row) inside a server span
opened the way the ``mcp`` SDK opens it, first with no tracer provider (the baseline, measured first in the
same run), then with the gateway's providers installed (recording spans, enrichment, metrics, the bounded
export queue with an exporter that discards), then with ``telemetry.detail: stages``.

Run ``.venv/bin/python bench/span_bench.py [--calls N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mcp.shared.exceptions import MCPError  # noqa: E402
from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import ReadableSpan  # noqa: E402
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult  # noqa: E402
from opentelemetry.trace import SpanKind  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from mcp_gateway import telemetry  # noqa: E402
from mcp_gateway.audit.log import AuditLog  # noqa: E402
from mcp_gateway.config import Settings  # noqa: E402
from mcp_gateway.gateway import Gateway  # noqa: E402
from mcp_gateway.identity import Principal  # noqa: E402
from mcp_gateway.policy import PolicyEngine  # noqa: E402
from mcp_gateway.server import build_backends  # noqa: E402

SDK_TRACER = trace.get_tracer("mcp-python-sdk")
ALICE = Principal(
    subject="alice", roles=("support",), catalog="internal", amr=(), token_id=None, issuer="i", expires_at=0
)


class Discard(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


async def calls(gateway: Gateway, count: int) -> float:
    started = time.perf_counter()
    for index in range(count):
        attributes = {"mcp.method.name": "tools/call", "gen_ai.tool.name": "hr.salary_lookup"}
        with SDK_TRACER.start_as_current_span(
            "tools/call hr.salary_lookup", kind=SpanKind.SERVER, attributes=attributes
        ):
            try:
                await gateway.call_tool(ALICE, "hr.salary_lookup", {"employee_id": "e-7"}, f"r{index}")
            except MCPError:
                pass
    return (time.perf_counter() - started) / count * 1e6


def run(count: int, rounds: int = 3) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings(
            identity={"issuer": "i", "audience": "https://gateway.bench/mcp", "jwks_file": Path(folder) / "none.json"},  # type: ignore[arg-type]
            catalogs_dir=ROOT / "catalogs",
            policies_dir=ROOT / "policies",
            egress={"allow": ["http://127.0.0.1:8081"]},  # type: ignore[arg-type]
        )
        gateway = Gateway(
            settings,
            audit=AuditLog(f"sqlite:///{Path(folder) / 'a.db'}"),
            policy=PolicyEngine(settings.policies_dir),
            backends=build_backends(settings),
        )
        asyncio.run(calls(gateway, 200))
        baseline = statistics.median(asyncio.run(calls(gateway, count)) for _ in range(rounds))
        installed = telemetry.setup_telemetry(settings, span_exporter=Discard())
        asyncio.run(calls(gateway, 200))
        recording = statistics.median(asyncio.run(calls(gateway, count)) for _ in range(rounds))
        telemetry._options.stages = True
        stages = statistics.median(asyncio.run(calls(gateway, count)) for _ in range(rounds))
        installed.shutdown()
        gateway.audit.close()
    return {"baseline": baseline, "recording": recording, "stages": stages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    report = run(args.calls)
    table = Table("telemetry", "µs per refused call (median of 3)", "added µs", "ratio", title="span cost per call")
    for name, value in report.items():
        table.add_row(name, f"{value:.1f}", f"{value - report['baseline']:.1f}", f"{value / report['baseline']:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
