"""What the Prometheus metrics cost per call: one governed echo call (catalog, policy, limits, two audit rows,
an in-process backend), on a gateway without metrics (the baseline) and on the same kind of gateway with
``metrics.enabled`` (the call's counters and stage histograms, the audit commit histogram), in alternating rounds
of the same run; the metrics' own work for one such call measured alone (steadier than the difference of two
whole-call figures on a shared machine); then the cost of one scrape after those calls.

Run ``.venv/bin/python bench/metrics_bench.py [--calls N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.gateway_bench import ARGUMENTS, _principal, local_echo_gateway  # noqa: E402
from mcp_gateway.audit.log import new_request_id  # noqa: E402
from mcp_gateway.gateway import Gateway  # noqa: E402
from mcp_gateway.metrics import GatewayMetrics  # noqa: E402


async def per_call_us(gateway: Gateway, count: int) -> float:
    principal = _principal()
    started = time.perf_counter()
    for _ in range(count):
        result = await gateway.call_tool(principal, "echo", ARGUMENTS, new_request_id())
        assert not result.is_error
    return (time.perf_counter() - started) / count * 1e6


# The stages a governed echo call marks (gateway.py), each observed once per call.
STAGES = ("catalog", "policy", "limits", "audit_decision", "backend", "result_dlp", "audit_outcome")


def _observer_us(metrics: GatewayMetrics, count: int = 20_000) -> float:
    """One call's metrics work: its counters and histograms, and its two audit transactions."""
    stages = [(stage, 0.0001) for stage in STAGES]
    started = time.perf_counter()
    for _ in range(count):
        metrics.call_finished("internal", "ok", stages, 0.001)
        metrics.audit_committed(0.0001, 1)
        metrics.audit_committed(0.0001, 1)
    return (time.perf_counter() - started) / count * 1e6


def run(count: int = 2000, rounds: int = 5) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        plain = local_echo_gateway(Path(folder) / "plain", 0)
        metered = local_echo_gateway(Path(folder) / "metered", 0)
        metrics = GatewayMetrics()
        metered.metrics = metrics
        metered.audit.on_commit = metrics.audit_committed
        baseline: list[float] = []
        measured: list[float] = []
        for gateway in (plain, metered):
            asyncio.run(per_call_us(gateway, 200))
        for _ in range(rounds):
            baseline.append(asyncio.run(per_call_us(plain, count)))
            measured.append(asyncio.run(per_call_us(metered, count)))
        counted = metrics.registry.get_sample_value("mcp_gateway_calls_total", {"catalog": "internal", "outcome": "ok"})
        observer_us = _observer_us(GatewayMetrics())
        started = time.perf_counter()
        scrapes = 50
        for _ in range(scrapes):
            body, _ = metrics.exposition()
        scrape_ms = (time.perf_counter() - started) / scrapes * 1e3
        for gateway in (plain, metered):
            asyncio.run(gateway.aclose())
            gateway.audit.close()
    without, with_metrics = statistics.median(baseline), statistics.median(measured)
    return {
        "without_metrics_us": without,
        "with_metrics_us": with_metrics,
        "added_us": with_metrics - without,
        "ratio": with_metrics / without,
        "observer_us": observer_us,
        "observer_share": observer_us / without,
        "scrape_ms": scrape_ms,
        "scrape_bytes": len(body),
        "metered_calls": int(counted or 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    report = run(args.calls, args.rounds)
    table = Table("figure", "value", title=f"metrics cost per governed call (median of {args.rounds} rounds)")
    for name, value in report.items():
        table.add_row(name, f"{value:.2f}" if isinstance(value, float) else str(value))
    Console().print(table)


if __name__ == "__main__":
    main()
