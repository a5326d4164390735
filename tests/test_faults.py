"""Fault runs against a real gateway process with its default bounds: slow clients, an unread SSE stream, and 200
concurrent sessions against a slow backend. Slow suite; 127.0.0.1 only; each case bounded in count and time.

Each case prints its figures (``-s`` shows them): what was measured is what the issue's done-when asks for.
"""

from __future__ import annotations

import json
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from mcp_gateway.audit.log import AuditLog
from mcp_gateway.devkeys import DevKey
from tests.conftest import ExampleApi, configure
from tests.otlp_receiver import running_receiver
from tests.test_http_limits import BIG_ANSWER, SseStream, call, connect, gateway_process, healthz, serving

pytestmark = pytest.mark.slow

SOCKETS = 200
HEADER_TIMEOUT = 10.0  # the defaults under test (config.HttpSettings)
BODY_TIMEOUT = 30.0
SLACK = 5.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def established(port: int) -> int:
    """Established TCP connections to 127.0.0.1:``port`` (server side), from /proc/net/tcp."""
    local = f"0100007F:{port:04X}"
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for row in rows if row.split()[1] == local and row.split()[3] == "01")


class Trickler(threading.Thread):
    """Sends the next byte of ``data`` on every socket, round after round, ``gap`` seconds apart; records when each
    socket is seen closed by the server."""

    def __init__(self, sockets: list[socket.socket], data: bytes, gap: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.sockets, self.data, self.gap = sockets, data, gap
        self.started = time.monotonic()
        self.closed_at: dict[int, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        for index in range(len(self.data)):
            for number, sock in enumerate(self.sockets):
                if number in self.closed_at:
                    continue
                try:
                    sock.send(self.data[index : index + 1])
                    sock.setblocking(False)
                    if sock.recv(65536) == b"":
                        self.closed_at[number] = time.monotonic() - self.started
                except BlockingIOError:
                    pass
                except OSError:
                    self.closed_at[number] = time.monotonic() - self.started
            if len(self.closed_at) == len(self.sockets) or self.stop.wait(self.gap):
                return


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    found: dict[str, Any] = {}
    yield found
    print(f"\nFIGURES {request.node.name}: {json.dumps(found, sort_keys=True)}")


def _attack(deployment: Any, head: bytes, trickled: bytes, bound: float, figures: dict[str, Any]) -> None:
    address = ("127.0.0.1", deployment.port)
    sockets = [connect(address) for _ in range(SOCKETS)]
    try:
        for sock in sockets:
            sock.sendall(head)
        trickler = Trickler(sockets, trickled)
        trickler.start()
        latencies = []
        while trickler.is_alive() and time.monotonic() - trickler.started < bound + SLACK:
            started = time.monotonic()
            assert healthz(address) == 200  # a normal client is served all along
            latencies.append(time.monotonic() - started)
            time.sleep(0.5)
        trickler.stop.set()
        trickler.join(timeout=10)
    finally:
        for sock in sockets:
            sock.close()
    closed = sorted(trickler.closed_at.values())
    figures.update(
        sockets=SOCKETS,
        closed=len(closed),
        closed_after_s={
            "min": round(closed[0], 2),
            "median": round(statistics.median(closed), 2),
            "max": round(closed[-1], 2),
        }
        if closed
        else None,
        healthz_ms={"median": round(statistics.median(latencies) * 1000, 1), "max": round(max(latencies) * 1000, 1)},
    )
    assert len(closed) == SOCKETS, f"{SOCKETS - len(closed)} sockets still open after {bound + SLACK} s"
    assert bound * 0.9 <= closed[0]
    assert closed[-1] < bound + SLACK


def test_200_sockets_sending_headers_a_byte_at_a_time_are_closed_at_the_header_timeout(
    tmp_path: Path, example_api: ExampleApi, dev_key: DevKey, figures: dict[str, Any]
) -> None:
    with gateway_process(tmp_path, example_api, dev_key) as (deployment, log):
        _attack(deployment, b"GET /mcp HTTP/1.1\r\n", b"X-Pad: " + b"a" * 200, HEADER_TIMEOUT, figures)
    assert "Traceback" not in log.read_text()


def test_200_sockets_sending_a_body_a_byte_at_a_time_are_closed_at_the_body_timeout(
    tmp_path: Path, example_api: ExampleApi, dev_key: DevKey, figures: dict[str, Any]
) -> None:
    # No token: the gateway answers 401 without reading the body, and the client goes on sending it.
    head = b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    with gateway_process(tmp_path, example_api, dev_key) as (deployment, log):
        _attack(deployment, head, b"x" * 200, BODY_TIMEOUT, figures)
    assert "Traceback" not in log.read_text()


# --- One caller leaves its SSE stream unread while posting calls -------------------------------------------


@pytest.fixture(scope="module")
def big_upstream() -> Iterator[ExampleApi]:
    async def answer(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await Response(BIG_ANSWER, media_type="application/json")(scope, receive, send)

    with serving(answer, header_timeout=30) as (host, port):  # type: ignore[arg-type]
        yield ExampleApi(f"http://{host}:{port}")


CALLS = 3000


def test_unread_sse_stream_under_a_call_flood_pins_bounded_memory(
    tmp_path: Path, big_upstream: ExampleApi, dev_key: DevKey, figures: dict[str, Any]
) -> None:
    with gateway_process(tmp_path, big_upstream, dev_key) as (deployment, log):
        pid = _pid_listening(deployment.port)
        # Every answer is about 60 KB; the rate limit is lifted so every call gets one.
        configure_rate(deployment)
        stream = SseStream(deployment, deployment.mint("alice", ("support",), "internal"))
        with closing(stream.sock), httpx.Client(trust_env=False, timeout=30) as client:
            stream.open_session(client)
            before = rss_mb(pid)
            started = time.monotonic()
            statuses = [stream.post(client, call(number)) for number in range(1, CALLS + 1)]
            posting = time.monotonic() - started
            time.sleep(2)
            after = rss_mb(pid)
            assert healthz(("127.0.0.1", deployment.port)) == 200
    text = log.read_text()
    figures.update(
        calls=CALLS,
        answer_bytes=len(BIG_ANSWER),
        posting_s=round(posting, 1),
        rss_before_mb=round(before, 1),
        rss_after_mb=round(after, 1),
        rss_growth_mb=round(after - before, 1),
        accepted=statuses.count(202),
        refused_after_close=statuses.count(404),
        warnings=text.count("SSE session from"),
        tracebacks=text.count("Traceback"),
    )
    assert after - before < 40, f"the unread stream pinned {after - before:.0f} MB"
    assert text.count("SSE session from 127.0.0.1 closed") == 1
    assert "Traceback" not in text


def configure_rate(deployment: Any) -> None:
    configure(deployment, "internal", rate_limit="1000000/minute")
    # The gateway reloads catalogs every policy_reload_interval (0.2 s in tests): wait for it on the trail.
    log = AuditLog(f"sqlite:///{deployment.database}")
    try:
        deadline = time.monotonic() + 10
        while not any(row["event"] == "catalog.reload" for row in log.iter_rows()):
            assert time.monotonic() < deadline, "the catalog edit was not picked up"
            time.sleep(0.1)
    finally:
        log.close()


def _pid_listening(port: int) -> int:
    local = f"0100007F:{port:04X}"
    inodes = {row.split()[9] for row in Path("/proc/net/tcp").read_text().splitlines()[1:] if row.split()[1] == local}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if fd.readlink().name.removeprefix("socket:[").rstrip("]") in inodes:
                    return int(proc.name)
        except OSError:
            continue
    raise AssertionError(f"no process listens on {port}")


# --- 200 concurrent sessions against a slow backend ---------------------------------------------------------

SESSIONS = 200
BACKEND_DELAY = 3.0  # crm.customer_lookup's timeout is 5 s: one round fits, two do not


@contextmanager
def slow_backend() -> Iterator[ExampleApi]:
    async def answer(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        await anyio.sleep(BACKEND_DELAY)
        await JSONResponse({"id": request.url.path.rsplit("/", 1)[-1], "name": "Ada"})(scope, receive, send)

    limits = {"header_timeout": 30, "max_connections_per_client": 10_000}
    with serving(answer, **limits) as (host, port):  # type: ignore[arg-type]
        yield ExampleApi(f"http://{host}:{port}")


@pytest.mark.parametrize(
    "pool_size",
    [
        pytest.param(None, id="default-pool"),
        pytest.param(100, id="pool-of-100"),
    ],
)
def test_200_concurrent_sessions_and_the_backend_pool(
    tmp_path: Path, dev_key: DevKey, figures: dict[str, Any], pool_size: int | None
) -> None:
    with slow_backend() as backend, running_receiver() as receiver:
        egress: dict[str, Any] = {"allow": [backend.url, receiver.url]}
        if pool_size is not None:
            egress["pool_size"] = pool_size
        telemetry = {"otlp_endpoint": receiver.url, "metric_interval": 0.5, "schedule_delay": 0.5}
        with gateway_process(tmp_path, backend, dev_key, egress=egress, telemetry=telemetry) as (deployment, log):
            port = deployment.port
            outcomes, peak, elapsed = anyio.run(_sessions, deployment, port)

            # Every REST call counts once: its pool wait when it got a connection, or a pool timeout when it did not.
            def counted() -> float:
                waits = receiver.metric_total("mcp_gateway.upstream.pool_wait")
                return waits + receiver.metric_total("mcp_gateway.upstream.pool_timeouts")

            receiver.wait_until(lambda: counted() >= SESSIONS, 30)
            pool_timeouts = receiver.metric_total("mcp_gateway.upstream.pool_timeouts")
        audit = AuditLog(f"sqlite:///{deployment.database}")
        rows = [
            row for row in audit.iter_rows() if row["event"].startswith("tools/call") and row["outcome"] != "started"
        ]
        audit.close()
    details = [row["detail"] if isinstance(row["detail"], dict) else json.loads(row["detail"] or "{}") for row in rows]
    failed = [detail for row, detail in zip(rows, details, strict=True) if row["outcome"] != "ok"]
    waits = sorted(detail.get("pool_wait_ms", 0) for detail in failed)
    figures.update(
        pool_size=pool_size or 256,
        sessions=SESSIONS,
        ok=outcomes.count(True),
        failed=outcomes.count(False),
        audit_failures={kind: sum(d.get("upstream") == kind for d in failed) for kind in ("timeout", "pool_timeout")},
        failed_pool_wait_ms={"min": waits[0], "max": waits[-1]} if waits else None,
        pool_timeouts_metric=pool_timeouts,
        peak_connections=peak,
        wall_s=round(elapsed, 1),
    )
    assert len(rows) == SESSIONS
    if pool_size is None:
        assert outcomes == [True] * SESSIONS, "a call failed with a pool large enough for every session"
    else:
        # One round of 100 answers. The second round waits for connections until the first is done (about 3 s
        # of its 5 s deadline): a call that then gets one times out at the backend, one that does not is a pool
        # timeout. Either way its audit row says it spent most of its deadline waiting for a connection, and the
        # metric counts the pool timeouts the rows record.
        assert outcomes.count(True) == pool_size
        assert {detail["upstream"] for detail in failed} <= {"timeout", "pool_timeout"}
        assert waits[0] >= 2000
        assert pool_timeouts == sum(detail["upstream"] == "pool_timeout" for detail in failed)
    assert "Traceback" not in log.read_text()


async def _sessions(deployment: Any, port: int) -> tuple[list[bool], int, float]:
    ready = anyio.Event()
    arrived = 0
    outcomes: list[bool] = []
    peak = 0

    async def session(index: int) -> None:
        nonlocal arrived
        token = deployment.mint(f"agent-{index}", ("support",), "internal")
        mode = "legacy" if index % 2 else "2026-07-28"
        async with (
            create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http,
            Client(
                streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=http),
                mode=mode,
                read_timeout_seconds=60,
            ) as client,
        ):
            await client.list_tools()
            arrived += 1
            if arrived == SESSIONS:
                ready.set()
            await ready.wait()
            result = await client.call_tool("crm.customer_lookup", {"customer_id": f"c-{index}"})
            outcomes.append(not result.is_error)

    async def watch() -> None:
        nonlocal peak
        while len(outcomes) < SESSIONS:
            peak = max(peak, established(port))
            await anyio.sleep(0.2)

    started = time.monotonic()
    with anyio.fail_after(240):
        async with anyio.create_task_group() as group:
            group.start_soon(watch)
            for index in range(SESSIONS):
                group.start_soon(session, index)
    return outcomes, peak, time.monotonic() - started
