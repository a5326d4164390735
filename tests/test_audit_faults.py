"""Fault runs against a real HTTP gateway: the trail's write lock held by another process, and a trail that
refuses records. The gateway must stay responsive (health answers at once), refuse calls as ``unavailable``
within its stated bound, say so on ``/readyz``, and recover by itself when the fault clears.
"""

from __future__ import annotations

import itertools
import sqlite3
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import httpx
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from mcp_gateway.audit.log import AuditLog
from mcp_gateway.devkeys import DevKey
from tests.conftest import Deployment, ExampleApi, make_deployment, serving_http

pytestmark = pytest.mark.slow

WRITE_TIMEOUT = 1.0
# What the module docstring of audit/log.py promises (twice the write timeout), plus one second of slack for a
# loaded 2-core machine and the HTTP round trip.
CALL_BOUND = 2 * WRITE_TIMEOUT + 1.0
HEALTH_BOUND = 0.5


@pytest.fixture
def served(tmp_path: Any, example_api: ExampleApi, dev_key: DevKey) -> Iterator[Deployment]:
    deployment = make_deployment(tmp_path, example_api, dev_key, audit={"write_timeout": WRITE_TIMEOUT})
    with serving_http(deployment):
        yield deployment


@asynccontextmanager
async def session(deployment: Deployment) -> AsyncIterator[Client]:
    token = deployment.mint("alice", ("support",), "internal")
    async with (
        create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http,
        Client(streamable_http_client(f"http://127.0.0.1:{deployment.port}/mcp", http_client=http)) as client,
    ):
        yield client


@contextmanager
def write_lock_held(deployment: Deployment) -> Iterator[None]:
    """Another process's write transaction on the trail (this test process is not the gateway's)."""
    holder = sqlite3.connect(deployment.database, isolation_level=None, timeout=10)
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def timed_get(url: str) -> tuple[int, float]:
    started = time.perf_counter()
    response = httpx.get(url, timeout=30)
    return response.status_code, time.perf_counter() - started


async def timed_call(client: Client) -> tuple[str, float]:
    started = time.perf_counter()
    result = await client.call_tool("crm.search", {"query": "ada"})
    elapsed = time.perf_counter() - started
    code = "ok" if not result.is_error else (result.structured_content or {})["error"]["code"]
    return code, elapsed


def chain_is_linked(deployment: Deployment) -> bool:
    log = AuditLog(f"sqlite:///{deployment.database}")
    try:
        rows = list(log.iter_rows())
    finally:
        log.close()
    return all(later["prev_hash"] == earlier["hash"] for earlier, later in itertools.pairwise(rows))


async def test_a_held_write_lock_refuses_calls_in_bounded_time_and_health_keeps_answering(served: Deployment) -> None:
    base = f"http://127.0.0.1:{served.port}"
    async with session(served) as client:
        assert (await timed_call(client))[0] == "ok"
        with write_lock_held(served):
            calls = [await timed_call(client) for _ in range(3)]
            health = [timed_get(f"{base}/healthz") for _ in range(5)]
            ready_status, ready_time = timed_get(f"{base}/readyz")
        recovered = await timed_call(client)
        ready_after = timed_get(f"{base}/readyz")[0]

    print(  # the closing note quotes these
        f"\nwrite lock held: calls {[f'{code} {elapsed:.2f}s' for code, elapsed in calls]}, "
        f"healthz max {max(elapsed for _, elapsed in health) * 1000:.0f} ms, readyz {ready_status} in {ready_time:.2f}s"
    )
    assert [code for code, _ in calls] == ["unavailable"] * 3
    assert max(elapsed for _, elapsed in calls) < CALL_BOUND
    assert all(status == 200 for status, _ in health)
    assert max(elapsed for _, elapsed in health) < HEALTH_BOUND
    assert ready_status == 503
    assert ready_time < WRITE_TIMEOUT + 1.5
    assert recovered[0] == "ok"
    assert ready_after == 200
    assert chain_is_linked(served)


async def test_health_answers_while_a_call_waits_on_the_lock(served: Deployment) -> None:
    # The event loop never waits on the database: a request arriving while a call is stuck on the lock is served.
    base = f"http://127.0.0.1:{served.port}"
    health: list[float] = []
    async with session(served) as client:
        with write_lock_held(served):
            async with anyio.create_task_group() as group:
                group.start_soon(timed_call, client)
                await anyio.sleep(0.2)
                async with httpx.AsyncClient() as http:
                    for _ in range(5):
                        started = time.perf_counter()
                        assert (await http.get(f"{base}/healthz")).status_code == 200
                        health.append(time.perf_counter() - started)
    print(f"\nhealthz during a waiting call: median {statistics.median(health) * 1000:.1f} ms")
    assert max(health) < HEALTH_BOUND


async def test_a_trail_that_refuses_records_is_not_ready_and_recovers(served: Deployment) -> None:
    base = f"http://127.0.0.1:{served.port}"
    with sqlite3.connect(served.database) as db:
        db.execute("CREATE TRIGGER refuse BEFORE INSERT ON audit_record BEGIN SELECT RAISE(ABORT, 'refused'); END")
    async with session(served) as client:
        code, elapsed = await timed_call(client)
        ready = httpx.get(f"{base}/readyz", timeout=30)
        health = httpx.get(f"{base}/healthz", timeout=30)
        with sqlite3.connect(served.database) as db:
            db.execute("DROP TRIGGER refuse")
        recovered = await timed_call(client)
        ready_after = httpx.get(f"{base}/readyz", timeout=30)

    assert code == "unavailable"
    assert elapsed < CALL_BOUND
    assert ready.status_code == 503
    assert "refused" in ready.json()["reason"]
    assert health.status_code == 200
    assert recovered[0] == "ok"
    assert ready_after.status_code == 200
