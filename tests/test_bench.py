"""The benchmarks keep working as the gateway changes: each runs once at its smallest size.

No figure is asserted (speed targets are ratios in ``bench/``, never timed assertions in tests); what is
asserted is that every benchmark measures what it says: real calls answered, rows written, sessions held.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest

from bench import audit_bench, echo_bench, gateway_bench, metrics_bench
from bench.common import free_port, make_deployment, python_env, server_process
from bench.report import markdown
from bench.servers import install_diagnostic_audit
from mcp_gateway.audit.log import AuditLog

pytestmark = pytest.mark.slow


def test_echo_measure_counts_every_call_on_bare_and_governed_servers() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        deployment = make_deployment(Path(tmp), "http://127.0.0.1:9")
        port = free_port()
        bare = f"http://127.0.0.1:{port}"
        governed = ["governed", "--echo", "local", "--config", str(deployment.config)]
        with (
            server_process(["bare", "--port", str(port)], f"{bare}/healthz"),
            server_process(governed, f"{deployment.url}/healthz", deployment.env()),
        ):
            for url, token in ((bare, None), (deployment.url, deployment.token)):
                opener = echo_bench.http_opener(url, "2026-07-28", token)
                (sequential, _), (concurrent, _) = asyncio.run(echo_bench.measure(opener, 7, 3, 4))
                assert len(sequential) == 7
                assert len(concurrent) == 3 * 4
        log = AuditLog(f"sqlite:///{Path(tmp) / 'state' / 'audit.db'}")
        outcomes = [row for row in log.tail(1000) if row["event"] == "tools/call.result"]
        log.close()
        assert len(outcomes) == 3 * 5 + 7 + 3 * 4  # warm-up, sequential and concurrent calls, each audited


@pytest.mark.parametrize(("audit", "rows_per_call"), [("full", 2), ("decision-off", 1), ("off", 0)])
def test_diagnostic_audit_hooks_still_reach_the_gateway(tmp_path: Path, audit: str, rows_per_call: int) -> None:
    # The diagnostics wrap Gateway.audit; if that seam moves, they must fail loudly, not measure nothing.
    gateway = gateway_bench.local_echo_gateway(tmp_path, 0)
    install_diagnostic_audit(gateway, audit)
    figures = asyncio.run(gateway_bench.timed_calls(gateway, 5))
    gateway.audit.close()
    assert figures["audit_rows_per_call"] == rows_per_call


def test_audit_appends_and_report_render(tmp_path: Path) -> None:
    result = audit_bench.run_appends(quick=True, rounds=1, callers=2)
    single = result["appends"]["single writer"]["AuditLog.record"]
    assert single["rows_per_s"] > 0
    text = markdown({"machine": _machine(), "audit": result})
    assert "AuditLog.record" in text


def _machine() -> dict[str, object]:
    return {"date": "d", "cpu": "c", "cores": 2, "platform": "p", "python": "3", "sqlite": "3", "versions": {}}


def test_a_stdio_server_that_dies_at_start_fails_the_opener_instead_of_hanging(tmp_path: Path) -> None:
    """A governed stdio server with a broken configuration exits at once; the benchmark must stop, not wait."""
    import anyio

    broken = ["governed", "--transport", "stdio", "--echo", "local", "--config", str(tmp_path / "missing.yaml")]
    opener = echo_bench._stdio_opener(broken, "2026-07-28", python_env())

    async def open_and_call() -> None:
        with anyio.fail_after(20):  # a bound on a hang, not a speed assertion
            async with opener() as call:
                await call()

    with pytest.raises(BaseException) as raised:  # noqa: PT011 - the SDK wraps it in an ExceptionGroup
        anyio.run(open_and_call)
    error = raised.value
    hung = isinstance(error, TimeoutError) or (
        isinstance(error, BaseExceptionGroup) and error.subgroup(TimeoutError) is not None
    )
    assert not hung


def test_dlp_scaling_bench_measures_every_hostile_shape() -> None:
    # Whether the cost is linear is the benchmark's verdict (timing belongs there); this pins that it runs and
    # reports each shape at both sizes.
    from bench import dlp_scaling_bench

    results = dlp_scaling_bench.run(quick=True)
    assert set(results) == set(dlp_scaling_bench.SEEDS)
    assert all(figures["large_s"] >= 0 and figures["ratio"] >= 0 for figures in results.values())


def test_console_bench_pages_through_a_built_trail() -> None:
    from bench import console_bench

    result = console_bench.run(records=3_000)
    assert result["records"] == 3_000
    by_query = {row["query"]: row for row in result["queries"]}
    assert by_query["newest page, no filter"]["rows"] == 50
    assert by_query["a subject never seen (bounded scan)"]["rows"] == 0
    assert by_query["a rare subject (1 in 100,000)"]["rows"] == 1  # record 7
    assert "Console audit search" in markdown({"console": result, "machine": _machine()})


def test_replica_bench_measures_both_stores_and_counts_every_row_on_the_shared_trail() -> None:
    from bench import replica_bench

    result = replica_bench.run(quick=True, calls=20, rows=30, rounds=1)
    limits = result["limits"]
    assert set(limits) == {"memory", "postgresql", "sqlite"}
    assert all(figures["us_per_call"] > 0 and figures["takes_per_s"] > 0 for figures in limits.values())
    audit = result["audit"]
    # _writers checks that the trail holds every row appended; here, that both sizes ran and were compared.
    assert [audit[name]["processes"] for name in ("1 replica", "3 replicas")] == [1, 3]
    assert audit["1 replica"]["ratio"] == 1.0
    text = markdown({"machine": _machine(), "replicas": result})
    assert "Rate-limit store" in text
    assert "3 replicas" in text


def test_metrics_bench_counts_every_metered_call() -> None:
    report = metrics_bench.run(count=20, rounds=2)
    assert report["metered_calls"] == 200 + 20 * 2  # warm-up and both rounds, each counted once
    assert report["observer_us"] > 0
    assert report["scrape_bytes"] > 0
