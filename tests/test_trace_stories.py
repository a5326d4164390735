"""`audit trace` tells one story per call: a real gateway process, real tokens, real SQLite and PostgreSQL.

An agent run makes several calls under one trace id, and callers choose trace ids (``traceparent`` in
``_meta``): so the rows under a trace are told call by call, grouped by the request id the gateway draws, and
a call by another subject than the trace's first caller is headed as foreign, never merged into a story."""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from typer.testing import CliRunner

from mcp_gateway.audit.log import AuditEntry, AuditLog
from mcp_gateway.audit.story import tell
from mcp_gateway.cli.app import app
from mcp_gateway.config import load_settings
from mcp_gateway.devkeys import DevKey
from tests.conftest import Deployment, ExampleApi, make_deployment, serving_http

runner = CliRunner()


@pytest.fixture(params=["sqlite", "postgresql"])
def traced(request: pytest.FixtureRequest, tmp_path: Path, example_api: ExampleApi, dev_key: DevKey) -> Deployment:
    if request.param == "postgresql":
        return make_deployment(
            tmp_path, example_api, dev_key, database_url=request.getfixturevalue("fresh_postgres_url")
        )
    return make_deployment(tmp_path, example_api, dev_key)


async def _call_under(url: str, token: str, trace_id: str, calls: list[tuple[str, dict[str, Any]]]) -> None:
    with anyio.fail_after(60):
        async with (
            create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http,
            Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client,
        ):
            for name, arguments in calls:
                meta = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
                result = await client.call_tool(name, arguments, meta=meta)  # type: ignore[arg-type]
                assert not result.is_error, result


def _sections(output: str) -> list[str]:
    """The output cut at each story's heading: the text before the first one, then one piece per call."""
    return re.split(r"(?m)^(?=call \d+ of \d+)", output)


def test_two_calls_under_one_trace_are_two_stories_and_another_callers_call_is_foreign(traced: Deployment) -> None:
    trace_id = secrets.token_hex(16)  # PostgreSQL is shared by the session: a trace of this test's own
    alice = traced.mint("alice", ("support",), "internal")
    bob = traced.mint("bob", ("support",), "internal")
    with serving_http(traced) as served:
        anyio.run(
            _call_under,
            served.url,
            alice,
            trace_id,
            [("crm.customer_lookup", {"customer_id": "c-100"}), ("crm.search", {"query": "ada"})],
        )
        # Bob reuses alice's trace id (a caller may send any traceparent): his call must not join her story.
        anyio.run(_call_under, served.url, bob, trace_id, [("crm.customer_lookup", {"customer_id": "c-100"})])

    log = AuditLog(load_settings(traced.config).database_url)
    rows = log.by_trace(trace_id)
    log.close()
    requests = list(dict.fromkeys(row["request_id"] for row in rows))
    assert len(requests) == 3

    story = runner.invoke(app, ["audit", "trace", trace_id, "-c", str(traced.config)])
    assert story.exit_code == 0, story.output
    head, first, second, third = _sections(story.output)
    assert "3 calls, subjects alice, bob" in head
    assert "spans 2 subjects" in head
    # One story per call, each with its own tool, result, request id, span id, latency.
    assert "crm.customer_lookup" in first
    assert "crm.search" not in first
    assert "crm.search" in second
    assert "crm.customer_lookup" not in second
    for section, request_id in zip((first, second, third), requests, strict=True):
        call_rows = [row for row in rows if row["request_id"] == request_id]
        assert request_id in section
        assert json.loads(call_rows[0]["detail"])["span_id"] in section
        assert "latency" in section
        assert "result" in section
        assert "ok" in section
        assert all(str(row["id"]) in section for row in call_rows)
    assert "alice" in first
    assert "alice" in second
    assert "bob" not in first + second
    # Bob's call is headed as foreign, in its own story.
    assert third.startswith("call 3 of 3  FOREIGN SUBJECT bob")
    assert "FOREIGN" not in first + second
    assert "bob" in third
    assert "alice" not in third

    # One call by its request id: only that call.
    one = runner.invoke(app, ["audit", "trace", "--request", requests[1], "-c", str(traced.config)])
    assert one.exit_code == 0, one.output
    head, only = _sections(one.output)
    assert "1 call, subjects alice" in head
    assert "WARNING" not in head
    assert "crm.search" in only
    assert "crm.customer_lookup" not in only


def test_a_row_of_another_subject_under_a_trace_is_marked_foreign(traced: Deployment) -> None:
    trace_id = secrets.token_hex(16)
    log = AuditLog(load_settings(traced.config).database_url)
    for subject, request_id in (("alice", "r-1"), ("mallory", "r-2"), ("alice", "r-3")):
        log.record(
            AuditEntry(
                event="tools/call", decision="deny", outcome="unknown_tool", subject=subject,
                request_id=f"{trace_id}-{request_id}", trace_id=trace_id, tool="crm.search",
            )
        )  # fmt: skip
    log.close()
    story = runner.invoke(app, ["audit", "trace", trace_id, "-c", str(traced.config)])
    assert story.exit_code == 0, story.output
    _head, first, second, third = _sections(story.output)
    assert "FOREIGN" not in first + third
    assert second.startswith("call 2 of 3  FOREIGN SUBJECT mallory")


def test_rows_of_one_request_id_but_two_subjects_are_never_one_story() -> None:
    rows = [
        {"id": 1, "request_id": "r", "subject": "alice"},
        {"id": 2, "request_id": "r", "subject": "mallory"},
        {"id": 3, "request_id": None, "subject": "alice"},
        {"id": 4, "request_id": None, "subject": "alice"},
    ]
    told = tell(rows)
    assert [[row["id"] for row in story.rows] for story in told.stories] == [[1], [2], [3], [4]]
    assert [story.foreign for story in told.stories] == [False, True, False, False]
    assert told.subjects == ("alice", "mallory")


def test_trace_takes_exactly_one_of_trace_request_or_change(traced: Deployment) -> None:
    both = runner.invoke(app, ["audit", "trace", "a" * 32, "--request", "r", "-c", str(traced.config)])
    assert both.exit_code == 2
    missing = runner.invoke(app, ["audit", "trace", "--request", "f" * 32, "-c", str(traced.config)])
    assert missing.exit_code == 1
    assert "no audit record carries request id" in missing.output


_STORY_ROWS = st.lists(
    st.tuples(st.sampled_from([None, "r1", "r2", "r3"]), st.sampled_from([None, "alice", "bob", "mallory"])),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(pairs=_STORY_ROWS)
def test_stories_partition_the_rows_and_never_mix_a_request_or_a_subject(
    pairs: list[tuple[str | None, str | None]],
) -> None:
    rows = [
        {"id": index, "request_id": request, "subject": subject} for index, (request, subject) in enumerate(pairs, 1)
    ]
    told = tell(rows)
    assert sorted(row["id"] for story in told.stories for row in story.rows) == [row["id"] for row in rows]
    for story in told.stories:
        assert len({(row["request_id"], row["subject"]) for row in story.rows}) == 1
        assert story.request_id is not None or len(story.rows) == 1
        assert story.foreign == (story.subject != rows[0]["subject"])
