"""Slow and greedy HTTP clients: real uvicorn on 127.0.0.1 with the guarded protocol, and raw sockets that trickle.

The bounds are short here (half a second) so each case takes about that long; tests/test_faults.py runs the same
attacks at scale (200 sockets) against a gateway process with its default bounds, in the slow suite.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from mcp_gateway.config import HttpSettings
from mcp_gateway.transports.guards import guarded_protocol
from tests.conftest import Deployment, ExampleApi, make_deployment, stop, wait_http

BOUND = 0.5  # every timeout under test
SLACK = 1.5  # what a loaded machine may add before a bound is seen to act
STREAM_BYTES = 32 * 1024 * 1024


# --- A small app under real uvicorn, with the guarded protocol ------------------------------------------------


class App:
    """``/healthz``; ``/read`` reads its body; ``/refuse`` answers 401 without reading; ``/stream`` sends 32 MiB."""

    def __init__(self) -> None:
        self.streamed_to_a_gone_client = threading.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        response: Response
        if request.url.path == "/read":
            response = PlainTextResponse(str(len(await request.body())))
        elif request.url.path == "/refuse":
            response = PlainTextResponse("no token", status_code=401)
        elif request.url.path == "/stream":
            response = StreamingResponse(self._chunks(request))
        else:
            response = PlainTextResponse("ok")
        await response(scope, receive, send)

    async def _chunks(self, request: Request) -> Any:
        chunk = b"x" * 65536
        for _ in range(STREAM_BYTES // len(chunk)):
            yield chunk
        if await request.is_disconnected():
            self.streamed_to_a_gone_client.set()


@contextmanager
def serving(app: App, **limits: Any) -> Iterator[tuple[str, int]]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    protocol = guarded_protocol(HttpSettings(**limits))
    config = uvicorn.Config(app, http=protocol, ws="none", lifespan="off", log_level="critical", access_log=False)
    config.timeout_graceful_shutdown = 1
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.started, "the server did not start"
        yield "127.0.0.1", sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()


@pytest.fixture
def app() -> App:
    return App()


def healthz(address: tuple[str, int]) -> int:
    with httpx.Client(trust_env=False, timeout=5) as client:
        return client.get(f"http://{address[0]}:{address[1]}/healthz").status_code


class Trickle(threading.Thread):
    """Sends ``data`` one byte every ``gap`` seconds until it is sent or the server has had enough."""

    def __init__(self, sock: socket.socket, data: bytes, gap: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.sock, self.data, self.gap = sock, data, gap
        self.sent = 0

    def run(self) -> None:
        for index in range(len(self.data)):
            try:
                self.sock.send(self.data[index : index + 1])
            except OSError:
                return
            self.sent += 1
            time.sleep(self.gap)


def until_closed(sock: socket.socket, within: float) -> bytes:
    """Everything the server sends until it closes the connection (FIN or reset); fails if it is still open."""
    received = bytearray()
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return bytes(received)
        if not data:
            return bytes(received)
        received += data
    raise AssertionError(f"the connection is still open after {within} s ({len(received)} bytes received)")


def connect(address: tuple[str, int], receive_buffer: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect(address)
    return sock


# --- Time to headers ------------------------------------------------------------------------------------------


def test_headers_sent_a_byte_at_a_time_are_cut_off_at_the_header_timeout(app: App) -> None:
    with serving(app, header_timeout=BOUND) as address, closing(connect(address)) as sock:
        started = time.monotonic()
        trickle = Trickle(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 4000)
        trickle.start()
        assert healthz(address) == 200  # a normal client is served meanwhile
        until_closed(sock, BOUND + SLACK)
        elapsed = time.monotonic() - started
        trickle.join(timeout=5)
    assert BOUND * 0.9 <= elapsed < BOUND + SLACK
    assert trickle.sent < len(trickle.data)


def test_partial_headers_are_answered_408_then_closed(app: App) -> None:
    with serving(app, header_timeout=BOUND) as address, closing(connect(address)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        answer = until_closed(sock, BOUND + SLACK)
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_connection_that_never_sends_a_byte_is_closed_at_the_header_timeout(app: App) -> None:
    with serving(app, header_timeout=BOUND) as address, closing(connect(address)) as sock:
        started = time.monotonic()
        answer = until_closed(sock, BOUND + SLACK)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started >= BOUND * 0.9


def test_kept_alive_connection_trickling_its_next_request_is_cut_off(app: App) -> None:
    # uvicorn's keep-alive timer is cancelled by any byte received: only the header bound ends this.
    with serving(app, header_timeout=BOUND, body_timeout=30) as address, closing(connect(address)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = sock.recv(65536)
        started = time.monotonic()
        trickle = Trickle(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 4000)
        trickle.start()
        until_closed(sock, BOUND + SLACK)
        elapsed = time.monotonic() - started
        trickle.join(timeout=5)
    assert first.startswith(b"HTTP/1.1 200 ")
    assert elapsed < BOUND + SLACK


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=8, unique=True))
def test_request_split_anywhere_but_complete_within_the_bound_is_served(cuts: list[int], app: App) -> None:
    request = b"POST /read HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    pieces = [request[start:end] for start, end in zip([0, *sorted(cuts)], [*sorted(cuts), len(request)], strict=True)]
    with serving(app, header_timeout=2, body_timeout=2) as address, closing(connect(address)) as sock:
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(0.01)
        sock.settimeout(5)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.endswith(b"\r\n\r\n5")


# --- Time to body ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/read", id="app-reads-the-body"),
        pytest.param("/refuse", id="app-answers-401-without-reading"),
    ],
)
def test_body_sent_a_byte_at_a_time_is_cut_off_at_the_body_timeout(app: App, path: str) -> None:
    with serving(app, header_timeout=30, body_timeout=BOUND) as address, closing(connect(address)) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 4000\r\n\r\n".encode())
        started = time.monotonic()
        trickle = Trickle(sock, b"b" * 4000)
        trickle.start()
        assert healthz(address) == 200
        answer = until_closed(sock, BOUND + SLACK)
        elapsed = time.monotonic() - started
        trickle.join(timeout=5)
    assert BOUND * 0.9 <= elapsed < BOUND + SLACK
    assert trickle.sent < len(trickle.data)
    if path == "/refuse" and answer:
        assert answer.startswith(b"HTTP/1.1 401 ")


# --- Output left unread ---------------------------------------------------------------------------------------


def test_client_that_stops_reading_is_dropped_at_the_send_timeout(app: App) -> None:
    with serving(app, send_timeout=BOUND) as address, closing(connect(address, receive_buffer=4096)) as sock:
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(BOUND + SLACK)  # the client reads nothing for longer than the bound
        received = until_closed(sock, 10)
        assert healthz(address) == 200
    assert len(received) < STREAM_BYTES
    assert app.streamed_to_a_gone_client.wait(5)


def test_client_that_reads_a_long_stream_gets_all_of_it(app: App) -> None:
    with serving(app, send_timeout=BOUND) as address, closing(connect(address)) as sock:
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        received = until_closed(sock, 30)
    assert len(received) > STREAM_BYTES
    assert not app.streamed_to_a_gone_client.is_set()


# --- Connections per client -----------------------------------------------------------------------------------


def test_connections_past_the_per_client_cap_are_refused_with_503(app: App) -> None:
    with serving(app, header_timeout=30, max_connections_per_client=3) as address:
        held = [connect(address) for _ in range(3)]
        try:
            with closing(connect(address)) as extra:
                answer = until_closed(extra, SLACK)
            assert answer.startswith(b"HTTP/1.1 503 ")
            held.pop().close()
            deadline = time.monotonic() + 5
            while (status := _status(address)) != 200 and time.monotonic() < deadline:
                time.sleep(0.05)  # the server sees the close a moment later
            assert status == 200
        finally:
            for sock in held:
                sock.close()


def _status(address: tuple[str, int]) -> int:
    try:
        return healthz(address)
    except httpx.HTTPError:
        return 0


@pytest.mark.parametrize(
    ("key", "value"),
    [
        pytest.param("header_timeout", 0, id="header-timeout-zero"),
        pytest.param("body_timeout", -1, id="body-timeout-negative"),
        pytest.param("send_timeout", 0, id="send-timeout-zero"),
        pytest.param("max_connections_per_client", 0, id="no-connections"),
        pytest.param("max_queued_messages", 0, id="no-queue"),
    ],
)
def test_bounds_that_would_refuse_everything_are_invalid(key: str, value: float) -> None:
    with pytest.raises(ValueError, match=key):
        HttpSettings(**{key: value})


# --- Wired into the gateway process ---------------------------------------------------------------------------


@contextmanager
def gateway_process(root: Path, api: ExampleApi, key: Any, **settings: Any) -> Iterator[tuple[Deployment, Path]]:
    """``mcp-gateway serve`` with ``settings`` (sections as in ``make_deployment``), its log captured in a file."""
    deployment = make_deployment(root, api, key, **settings)
    log = root / "gateway.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "mcp_gateway", "serve", "--transport", "sse"],
            env=deployment.env(),
            cwd=deployment.root,
            stdout=sink,
            stderr=sink,
        )
        try:
            wait_http(f"http://127.0.0.1:{deployment.port}/healthz", process)
            yield deployment, log
        finally:
            stop(process)


def test_gateway_process_cuts_off_slow_headers(tmp_path: Path, example_api: ExampleApi, dev_key: Any) -> None:
    with gateway_process(tmp_path, example_api, dev_key, http={"header_timeout": 1}) as (deployment, _):
        address = ("127.0.0.1", deployment.port)
        with closing(connect(address)) as sock:
            started = time.monotonic()
            Trickle(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 4000).start()
            assert healthz(address) == 200
            until_closed(sock, 1 + SLACK)
            assert time.monotonic() - started >= 0.9


# --- SSE: a stream left unread, a stream closed while calls arrive ----------------------------------------------


class SseStream:
    """A raw ``GET /sse`` that reads its endpoint event and then, unless told, nothing more."""

    def __init__(self, deployment: Deployment, token: str) -> None:
        self.port = deployment.port
        self.token = token
        self.sock = connect(("127.0.0.1", deployment.port), receive_buffer=4096)
        self.sock.sendall(
            f"GET /sse HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nAuthorization: Bearer {token}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        head = b""
        self.sock.settimeout(10)
        while b"session_id=" not in head or b"\r\n" not in head.split(b"session_id=", 1)[1]:
            head += self.sock.recv(4096)
        self.session = head.split(b"session_id=", 1)[1].split(b"\r\n", 1)[0].decode().strip()

    def post(self, client: httpx.Client, message: dict[str, Any]) -> int:
        response = client.post(
            f"http://127.0.0.1:{self.port}/messages/?session_id={self.session}",
            content=json.dumps(message),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        return response.status_code

    def open_session(self, client: httpx.Client) -> None:
        params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}
        assert self.post(client, {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params}) == 202
        assert self.post(client, {"jsonrpc": "2.0", "method": "notifications/initialized"}) == 202


BIG_ANSWER = json.dumps({"results": [{"id": f"c-{n}", "name": "x" * 200} for n in range(256)]}).encode()


@pytest.fixture(scope="module")
def big_api() -> Iterator[ExampleApi]:
    """An upstream whose every answer is about 60 KB: an unread stream fills its socket buffers in a few dozen."""

    async def answer(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await Response(BIG_ANSWER, media_type="application/json")(scope, receive, send)

    with serving(answer, header_timeout=30) as (host, port):  # type: ignore[arg-type]
        yield ExampleApi(f"http://{host}:{port}")


def call(number: int) -> dict[str, Any]:
    params = {"name": "crm.search", "arguments": {"query": "a"}}
    return {"jsonrpc": "2.0", "id": number, "method": "tools/call", "params": params}


def test_unread_sse_stream_is_closed_past_its_cap_with_one_warning_and_no_traceback(
    tmp_path: Path, big_api: ExampleApi, dev_key: Any
) -> None:
    limits = {"max_queued_messages": 8, "send_timeout": 1, "header_timeout": 2}
    with gateway_process(tmp_path, big_api, dev_key, http=limits) as (deployment, log):
        stream = SseStream(deployment, deployment.mint("alice", ("support",), "internal"))
        with closing(stream.sock), httpx.Client(trust_env=False, timeout=10) as client:
            stream.open_session(client)
            posted = 0
            while "SSE session" not in log.read_text() and posted < 2000:
                posted += 1
                assert stream.post(client, call(posted)) in (202, 404)
            after = [stream.post(client, call(posted + number)) for number in range(1, 51)]
            # The session is gone; its connection goes at send_timeout, as the client still reads nothing.
            time.sleep(1 + SLACK)
            until_closed(stream.sock, 10)
            assert healthz(("127.0.0.1", deployment.port)) == 200
    text = log.read_text()
    assert posted < 2000, "the cap never closed the session"
    assert after == [404] * 50  # refused as an unknown session would be: nothing more is queued for it
    assert text.count("SSE session from 127.0.0.1 closed") == 1
    assert "Traceback" not in text
    assert "ClosedResourceError" not in text


def test_sse_client_that_reads_is_not_cut_off_by_many_calls_at_once(
    tmp_path: Path, example_api: ExampleApi, dev_key: Any
) -> None:
    import anyio
    from mcp.client import Client
    from mcp.client.sse import sse_client

    with gateway_process(tmp_path, example_api, dev_key, http={"max_queued_messages": 8}) as (deployment, log):
        token = deployment.mint("alice", ("support",), "internal")

        async def many() -> list[bool]:
            url = f"http://127.0.0.1:{deployment.port}/sse"
            results: list[bool] = []
            async with Client(sse_client(url, headers={"Authorization": f"Bearer {token}"}), mode="legacy") as mcp:

                async def one() -> None:
                    results.append((await mcp.call_tool("crm.search", {"query": "ada"})).is_error is False)

                with anyio.fail_after(60):
                    async with anyio.create_task_group() as group:
                        for _ in range(40):
                            group.start_soon(one)
            return results

        results = anyio.run(many)
    assert results == [True] * 40
    assert "closed" not in log.read_text()


def test_sse_stream_closed_while_calls_arrive_logs_no_traceback(
    tmp_path: Path, example_api: ExampleApi, dev_key: Any
) -> None:
    with gateway_process(tmp_path, example_api, dev_key) as (deployment, log):
        stream = SseStream(deployment, deployment.mint("alice", ("support",), "internal"))
        with httpx.Client(trust_env=False, timeout=10) as client:
            stream.open_session(client)
        stop_posting = threading.Event()
        statuses: list[int] = []

        def poster(offset: int) -> None:
            with httpx.Client(trust_env=False, timeout=10) as client:
                number = offset
                while not stop_posting.is_set():
                    number += 10
                    try:
                        statuses.append(stream.post(client, call(number)))
                    except httpx.HTTPError:
                        statuses.append(0)

        posters = [threading.Thread(target=poster, args=(offset,)) for offset in range(8)]
        for thread in posters:
            thread.start()
        time.sleep(1.0)
        stream.sock.close()
        time.sleep(1.0)
        stop_posting.set()
        for thread in posters:
            thread.join(timeout=20)
    text = log.read_text()
    assert 202 in statuses
    assert "Traceback" not in text
    assert "ClosedResourceError" not in text
