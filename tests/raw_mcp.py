"""MCP spoken by hand, for what the SDK's client cannot send (a member named twice, a bad header): a gateway over
stdio line by line, and a streamable HTTP session over raw requests."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from tests.conftest import Deployment, HttpGateway

PROTOCOL = "2025-11-25"
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {"protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


def call_line(arguments: str, *, request_id: int = 7, name: str = "crm.customer_lookup") -> str:
    """A tools/call written out by hand: no JSON library emits a duplicate member."""
    params = f'"name":"{name}","arguments":{arguments}'
    return f'{{"jsonrpc":"2.0","id":{request_id},"method":"tools/call","params":{{{params}}}}}'


class RawStdio:
    """A gateway process spoken to over stdio line by line: the SDK's client cannot send a duplicate member."""

    def __init__(self, deployment: Deployment, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mcp_gateway", "serve", "--transport", "stdio"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**deployment.env(), **env},
            cwd=deployment.root,
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.stderr: list[bytes] = []
        self.readers = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=lambda: self.stderr.extend(self.process.stderr or ()), daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    def _read(self) -> None:
        for line in self.process.stdout or ():
            self.lines.put(json.loads(line))

    def send(self, line: str | dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(((line if isinstance(line, str) else json.dumps(line)) + "\n").encode())
        self.process.stdin.flush()

    def receive(self) -> dict[str, Any]:
        return self.lines.get(timeout=30)

    def initialize(self) -> None:
        self.send(INITIALIZE)
        assert "result" in self.receive()
        self.send(INITIALIZED)

    def close(self) -> str:
        """End the session (EOF on stdin) and return everything the process wrote to stderr."""
        assert self.process.stdin is not None
        if not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for reader in self.readers:
            reader.join(timeout=10)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()
        return b"".join(self.stderr).decode()


@contextmanager
def raw_stdio(deployment: Deployment, **env: str) -> Iterator[RawStdio]:
    session = RawStdio(deployment, env)
    try:
        yield session
    finally:
        session.close()


def mcp_headers(token: str, session: str | None = None) -> dict[str, str]:
    headers = {
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "Authorization": f"Bearer {token}",
        "MCP-Protocol-Version": PROTOCOL,
    }
    return headers | ({"Mcp-Session-Id": session} if session else {})


def jsonrpc_body(response: httpx.Response) -> dict[str, Any]:
    if response.headers["content-type"].startswith("text/event-stream"):
        data = [line.removeprefix("data:").strip() for line in response.text.splitlines() if line.startswith("data:")]
        return dict(json.loads(data[-1]))
    return dict(response.json())


@contextmanager
def streamable_session(gateway: HttpGateway, token: str) -> Iterator[tuple[httpx.Client, dict[str, str]]]:
    with httpx.Client(base_url=gateway.url, trust_env=False, timeout=20) as client:
        opened = client.post("/mcp", json=INITIALIZE, headers=mcp_headers(token))
        assert opened.status_code == 200, opened.text
        headers = mcp_headers(token, opened.headers["mcp-session-id"])
        assert client.post("/mcp", json=INITIALIZED, headers=headers).status_code == 202
        yield client, headers
