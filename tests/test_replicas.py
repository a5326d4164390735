"""Three gateway processes on one real PostgreSQL: what they share holds across them.

Each replica is ``mcp-gateway serve --transport streamable-http`` on its own port, with one configuration (one
audience, one signing key, one database). Rate limits are exact across them (``limits.store: database``), the
audit chain stays linear when one is killed mid-load, a break-glass grant approved from the command line is
honoured by every replica at once, a JWKS rotation reaches every replica without a restart, and the 2026-07-28
stateless mode needs no session affinity.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from mcp_gateway.audit.log import GENESIS, AuditLog
from mcp_gateway.config import load_settings
from mcp_gateway.devkeys import DevKey, ensure_dev_key
from tests.conftest import ISSUER, Deployment, ExampleApi, configure, free_port, make_deployment, stop, wait_http
from tests.jwks_server import serving_jwks
from tests.test_breakglass import Tokens, cli, request

pytestmark = pytest.mark.slow

APPROVER = ("breakglass-approver",)
LIMIT = 37  # calls per hour for one caller on crm.customer_lookup: no refill during a test
CALLERS = 200


@dataclass
class Replicas:
    deployment: Deployment
    urls: list[str]
    processes: list[subprocess.Popen[bytes]]


def _serve(deployment: Deployment, port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "mcp_gateway", "serve", "--transport", "streamable-http", "--port", str(port)]
    return subprocess.Popen(command, env=deployment.env(), cwd=deployment.root)


@contextmanager
def replicas(deployment: Deployment, count: int = 3) -> Iterator[Replicas]:
    """``count`` replicas of one deployment. The first starts alone: it creates the tables and the signing key
    that the others then load (replicas share one key, or checkpoints signed by another would not verify)."""
    ports = [deployment.port, *(free_port() for _ in range(count - 1))]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes.append(_serve(deployment, ports[0]))
        wait_http(f"{urls[0]}/healthz", processes[0])
        processes += [_serve(deployment, port) for port in ports[1:]]
        for url, process in zip(urls[1:], processes[1:], strict=True):
            wait_http(f"{url}/healthz", process)
        yield Replicas(deployment, urls, processes)
    finally:
        for process in processes:
            if process.poll() is None:
                stop(process)


@pytest.fixture
def shared(tmp_path: Path, example_api: ExampleApi, dev_key: DevKey, fresh_postgres_url: str) -> Deployment:
    deployment = make_deployment(
        tmp_path, example_api, dev_key, database_url=fresh_postgres_url, limits={"store": "database"}
    )
    configure(deployment, "internal", "crm.customer_lookup", rate_limit=f"{LIMIT}/hour")
    return deployment


@asynccontextmanager
async def client(url: str, token: str, mode: str = "2026-07-28") -> AsyncIterator[Client]:
    async with (
        create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http,
        Client(streamable_http_client(f"{url}/mcp", http_client=http), mode=mode, read_timeout_seconds=60) as opened,
    ):
        yield opened


def database(deployment: Deployment) -> str:
    return load_settings(deployment.config).database_url


def trail(url: str) -> list[dict[str, Any]]:
    log = AuditLog(url)
    try:
        return list(log.iter_rows())
    finally:
        log.close()


def assert_linear(rows: list[dict[str, Any]]) -> None:
    assert [row["id"] for row in rows] == list(range(1, len(rows) + 1))
    assert [row["prev_hash"] for row in rows] == [GENESIS, *(row["hash"] for row in rows[:-1])]


def verify(deployment: Deployment) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcp_gateway", "audit", "verify"],
        env={**deployment.env(), "COLUMNS": "200"},
        cwd=deployment.root,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_200_concurrent_callers_on_three_replicas_are_admitted_exactly_the_limit(shared: Deployment) -> None:
    token = shared.mint("alice", ("support",), "internal")
    outcomes: list[str] = []
    with replicas(shared) as running:

        async def caller(opened: Client) -> None:
            result = await opened.call_tool("crm.customer_lookup", {"customer_id": "c-100"})
            code = result.structured_content["error"]["code"] if result.is_error and result.structured_content else ""
            outcomes.append(code or ("error" if result.is_error else "ok"))

        with anyio.fail_after(180):
            async with client(running.urls[0], token) as a, client(running.urls[1], token) as b:
                async with client(running.urls[2], token) as c, anyio.create_task_group() as group:
                    for opened in itertools.islice(itertools.cycle((a, b, c)), CALLERS):
                        group.start_soon(caller, opened)
    assert len(outcomes) == CALLERS
    assert outcomes.count("ok") == LIMIT  # not LIMIT + 1, not 3 * LIMIT
    assert outcomes.count("rate_limited") == CALLERS - LIMIT
    rows = [row for row in trail(database(shared)) if row["subject"] == "alice"]
    assert sum(row["outcome"] == "rate_limited" for row in rows) == CALLERS - LIMIT


@dataclass
class Load:
    served: list[int] = field(default_factory=lambda: [0, 0, 0])
    failed: list[int] = field(default_factory=lambda: [0, 0, 0])


async def test_the_chain_stays_linear_and_verifies_after_a_replica_is_killed_mid_load(shared: Deployment) -> None:
    configure(shared, "internal", "crm.customer_lookup", rate_limit="100000/hour")
    load = Load()
    with replicas(shared) as running:
        killed = anyio.Event()
        stop_load = anyio.Event()

        async def worker(index: int, subject: str) -> None:
            token = shared.mint(subject, ("support",), "internal")
            try:
                async with client(running.urls[index], token) as opened:
                    while not stop_load.is_set():
                        result = await opened.call_tool("crm.customer_lookup", {"customer_id": "c-100"})
                        assert not result.is_error, result
                        load.served[index] += 1
                        if index == 2 and load.served[2] >= 30 and not killed.is_set():
                            os.kill(running.processes[2].pid, signal.SIGKILL)
                            killed.set()
            except Exception:  # the killed replica's callers lose their connection: expected there only
                if index != 2:
                    raise
                load.failed[index] += 1

        with anyio.fail_after(180):
            async with anyio.create_task_group() as group:
                for index, worker_number in itertools.product(range(3), range(4)):
                    group.start_soon(worker, index, f"agent-{index}-{worker_number}")
                await killed.wait()
                served = sum(load.served[:2])
                while sum(load.served[:2]) < served + 60:  # the survivors keep serving after the kill
                    await anyio.sleep(0.05)
                stop_load.set()
        assert running.processes[2].wait(timeout=10) == -signal.SIGKILL
    assert load.failed[2] >= 1
    rows = trail(database(shared))
    assert_linear(rows)
    calls = [row for row in rows if row["event"] == "tools/call.result" and (row["subject"] or "").startswith("agent-")]
    assert len(calls) >= sum(load.served)  # every answered call has its outcome on record
    verified = verify(shared)
    assert verified.returncode == 0, verified.stdout + verified.stderr


async def test_a_grant_approved_from_the_command_line_is_honoured_by_another_replica_at_once(
    shared: Deployment, tmp_path: Path
) -> None:
    tokens = Tokens(shared, tmp_path / "tokens")
    tokens.folder.mkdir()
    alice = shared.mint("alice", ("support",), "internal", amr=("pwd", "mfa"))
    with replicas(shared) as running:
        async with client(running.urls[1], alice) as opened:
            with pytest.raises(MCPError):  # hidden: the policy denies it and no grant covers it yet
                await opened.call_tool("hr.salary_lookup", {"employee_id": "e-7"})
            grant = request(shared, tokens.file("alice", ("support",)))
            approved = cli(shared, "breakglass", "approve", grant, "--token-file", tokens.file("dave", APPROVER))
            assert approved.exit_code == 0, approved.output
            result = await opened.call_tool("hr.salary_lookup", {"employee_id": "e-7"})
            assert not result.is_error, result
        async with client(running.urls[2], alice) as other:
            assert "hr.salary_lookup" in [tool.name for tool in (await other.list_tools()).tools]
            assert not (await other.call_tool("hr.salary_lookup", {"employee_id": "e-7"})).is_error
    rows = [row for row in trail(database(shared)) if row["rule"] == f"breakglass:{grant}"]
    assert {row["outcome"] for row in rows} >= {"ok"}


# -- no session affinity in the 2026-07-28 mode: a round-robin load balancer on loopback --------------------------


class RoundRobin:
    """A tiny HTTP load balancer (ASGI): each request goes to the next backend, whatever connection it came on."""

    _HOP = frozenset({b"host", b"connection", b"keep-alive", b"transfer-encoding", b"content-length"})

    def __init__(self, backends: list[str]) -> None:
        self.backends = itertools.cycle(backends)
        self.served: list[tuple[str, str, int]] = []  # backend, JSON-RPC method header, status

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        backend = next(self.backends)
        headers = [(name, value) for name, value in scope["headers"] if name.lower() not in self._HOP]
        target = backend + scope["path"] + (f"?{scope['query_string'].decode()}" if scope["query_string"] else "")
        async with (
            httpx.AsyncClient(trust_env=False, timeout=60) as http,
            http.stream(scope["method"], target, headers=headers, content=body) as answer,
        ):
            method = dict(scope["headers"]).get(b"mcp-method", b"").decode()
            self.served.append((backend, method, answer.status_code))
            out = [(name, value) for name, value in answer.headers.raw if name.lower() not in self._HOP]
            await send({"type": "http.response.start", "status": answer.status_code, "headers": out})
            async for chunk in answer.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})


async def legacy_calls(url: str, token: str) -> None:
    async with client(url, token, mode="legacy") as legacy:
        for _ in range(3):
            await legacy.call_tool("crm.customer_lookup", {"customer_id": "c-100"})


@asynccontextmanager
async def balancer(backends: list[str]) -> AsyncIterator[tuple[str, RoundRobin]]:
    proxy = RoundRobin(backends)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(proxy, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    async with anyio.create_task_group() as group:
        group.start_soon(server.serve)
        with anyio.fail_after(10):
            while not server.started:
                await anyio.sleep(0.02)
        try:
            yield f"http://127.0.0.1:{port}", proxy
        finally:
            server.should_exit = True


async def test_one_clients_consecutive_stateless_requests_are_served_by_different_replicas(
    shared: Deployment,
) -> None:
    token = shared.mint("alice", ("support",), "internal")
    with replicas(shared) as running, anyio.fail_after(120):
        async with balancer(running.urls) as (url, proxy):
            async with client(url, token) as opened:
                listed = await opened.list_tools()
                assert "crm.customer_lookup" in [tool.name for tool in listed.tools]
                for _ in range(6):
                    result = await opened.call_tool("crm.customer_lookup", {"customer_id": "c-100"})
                    assert not result.is_error, result
            calls = [entry for entry in proxy.served if entry[1] == "tools/call"]
            assert len(calls) == 6
            assert {backend for backend, _, _ in calls} == set(running.urls)  # every replica served some
            assert all(status == 200 for _, _, status in proxy.served)
            # The legacy session mode does need affinity: its session lives in one replica's memory.
            with pytest.raises(BaseException):  # noqa: B017, PT011 - the SDK wraps the refusal in an ExceptionGroup
                await legacy_calls(url, token)


async def test_a_key_rotation_is_picked_up_by_every_replica_without_a_restart(
    tmp_path: Path, example_api: ExampleApi, dev_key: DevKey, fresh_postgres_url: str
) -> None:
    old, new = dev_key, ensure_dev_key(tmp_path / "new-key")
    with serving_jwks() as idp:
        idp.publish(old.jwks())
        deployment = make_deployment(
            tmp_path / "deployment",
            example_api,
            old,
            database_url=fresh_postgres_url,
            limits={"store": "database"},
            identity={"jwks_url": idp.url, "jwks_file": None, "jwks_refresh": 1.0, "jwks_min_refresh": 0.5},
            egress={"allow": [example_api.url, idp.url.removesuffix("/jwks")]},
        )
        old_token = deployment.mint("alice", ("support",), "internal")
        new_token = new.mint("bob", roles=("support",), catalog="internal", issuer=ISSUER, audience=deployment.audience)
        with replicas(deployment) as running, anyio.fail_after(60):
            for url in running.urls:
                async with client(url, old_token) as opened:
                    assert (await opened.list_tools()).tools
            idp.publish(new.jwks())  # the IdP rotates: the old key is gone, the new one in
            async with httpx.AsyncClient(trust_env=False) as http:
                for url in running.urls:
                    while (await http.post(f"{url}/mcp", headers=bearer(old_token), content=b"{}")).status_code != 401:
                        await anyio.sleep(0.2)  # until this replica's timer has re-read the JWKS
            for url in running.urls:
                async with client(url, new_token) as opened:
                    assert (await opened.list_tools()).tools
            assert all(process.poll() is None for process in running.processes)  # the same processes throughout


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"}
