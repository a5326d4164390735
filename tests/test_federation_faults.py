"""Federation when the upstream misbehaves: it crashes, hangs, answers too much or off-schema, asks to sample,
or is down at start-up; and progress and cancellation across the second hop."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_gateway.gateway import Gateway
from tests.conftest import Deployment
from tests.federation_helpers import ALICE, add_server, federated, names, pin_all, rows, seen, until


def error_code(result: Any) -> str:
    assert result.is_error
    return str(result.structured_content["error"]["code"])


@pytest.fixture
def record(tmp_path: Path) -> Path:
    return tmp_path / "upstream.jsonl"


async def up(gateway: Gateway) -> None:
    await until(lambda: "files.echo" in names(gateway), what="files.echo listed")


@pytest.mark.slow
async def test_a_crash_fails_the_call_in_flight_and_the_server_is_restarted(
    deployment: Deployment, record: Path
) -> None:
    add_server(deployment, record)
    await pin_all(deployment)
    async with federated(deployment) as gateway:
        await up(gateway)
        crashed = await gateway.call_tool(ALICE, "files.crash", {}, "req-crash")
        assert error_code(crashed) == "upstream_failed"
        # Restarted with backoff: the tools come back and calls succeed on the new session.
        await until(lambda: gateway.upstreams()["internal/files"]["restarts"] >= 1, what="restart")
        await up(gateway)
        result = await gateway.call_tool(ALICE, "files.echo", {"text": "again"}, "req-after")
        assert not result.is_error
        outcome = [row for row in rows(gateway) if row["request_id"] == "req-crash"][-1]
        assert outcome["outcome"] == "upstream_failed"
    assert len([event for event in seen(record) if event["event"] == "start"]) == 3  # pin, first, restart


async def test_a_hanging_upstream_times_out(deployment: Deployment, record: Path) -> None:
    add_server(deployment, record, timeout=1)
    await pin_all(deployment)
    async with federated(deployment) as gateway:
        await up(gateway)
        result = await gateway.call_tool(ALICE, "files.hang", {}, "req-hang")
        assert error_code(result) == "upstream_failed"
        outcome = [row for row in rows(gateway) if row["request_id"] == "req-hang"][-1]
        assert "no answer within 1" in outcome["detail"]["error"]
        # The session survives a timed-out call.
        assert not (await gateway.call_tool(ALICE, "files.echo", {"text": "x"}, "req-ok")).is_error


async def test_a_huge_result_is_refused_not_truncated(deployment: Deployment, record: Path) -> None:
    add_server(deployment, record, max_response_bytes=100_000)
    await pin_all(deployment)
    async with federated(deployment) as gateway:
        await up(gateway)
        result = await gateway.call_tool(ALICE, "files.huge", {"size": 200_000}, "req-huge")
        assert error_code(result) == "upstream_failed"
        assert "x" * 1000 not in str(result.content)
        small = await gateway.call_tool(ALICE, "files.huge", {"size": 1000}, "req-small")
        assert not small.is_error


async def test_a_result_off_its_output_schema_is_refused(deployment: Deployment, record: Path) -> None:
    add_server(deployment, record)
    await pin_all(deployment)
    async with federated(deployment) as gateway:
        await up(gateway)
        result = await gateway.call_tool(ALICE, "files.badout", {}, "req-bad")
        assert error_code(result) == "upstream_failed"
        outcome = [row for row in rows(gateway) if row["request_id"] == "req-bad"][-1]
        assert "does not match outputSchema" in outcome["detail"]["error"]


async def test_sampling_requests_are_refused_and_audited(deployment: Deployment, record: Path) -> None:
    add_server(deployment, record)
    await pin_all(deployment)
    async with federated(deployment) as gateway:
        await up(gateway)
        result = await gateway.call_tool(ALICE, "files.sample", {}, "req-sample")
        assert not result.is_error
        (refusal,) = rows(gateway, "upstream.refused")
        assert refusal["detail"]["method"] == "sampling/createMessage"
        assert refusal["decision"] == "deny"
    (answer,) = [event for event in seen(record) if event["event"] == "sample"]
    assert answer["outcome"] == "refused"


async def test_results_are_dlp_scanned(deployment: Deployment, record: Path) -> None:
    add_server(deployment, record)
    await pin_all(deployment)
    async with federated(deployment) as gateway:
        await up(gateway)
        # An IBAN in the arguments is flagged on the way in and again in the echoed result.
        await gateway.call_tool(ALICE, "files.echo", {"text": "pay DE89370400440532013000"}, "req-dlp")
        outcome = [row for row in rows(gateway) if row["request_id"] == "req-dlp"][-1]
        paths = {finding["path"].split("/")[0] for finding in outcome["detail"]["dlp"]}
        assert {"arguments", "result"} <= paths, outcome["detail"]["dlp"]


async def test_start_up_does_not_wait_for_an_upstream_that_is_down(deployment: Deployment, record: Path) -> None:
    add_server(deployment, record, command=[sys.executable, "-c", "raise SystemExit(4)"])
    async with federated(deployment) as gateway:
        await until(lambda: gateway.upstreams()["internal/files"]["state"] == "down", what="down")
        status = gateway.upstreams()["internal/files"]
        assert status["error"]
        assert "crm.search" in names(gateway)  # the catalog's own tools are served
        assert not [name for name in names(gateway) if name.startswith("files.")]


async def test_progress_is_relayed_and_a_cancellation_goes_upstream(deployment: Deployment, record: Path) -> None:
    add_server(deployment, record)
    await pin_all(deployment)
    async with federated(deployment) as gateway:
        await up(gateway)
        reports: list[tuple[float, float | None, str | None]] = []

        async def progress(done: float, total: float | None, message: str | None) -> None:
            reports.append((done, total, message))

        result = await gateway.call_tool(ALICE, "files.slow", {"seconds": 0}, "req-progress", progress)
        assert not result.is_error
        assert reports == [(1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]

        with anyio.move_on_after(1):
            await gateway.call_tool(ALICE, "files.slow", {"seconds": 30}, "req-cancel", progress)
        await until(lambda: any(event["event"] == "cancelled" for event in seen(record)), what="upstream cancelled")
        outcome = [row for row in rows(gateway) if row["request_id"] == "req-cancel"][-1]
        assert outcome["outcome"] == "cancelled"
