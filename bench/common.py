"""What every benchmark shares: statistics, processes on 127.0.0.1, a throw-away deployment, MCP clients.

Every figure is the median over rounds of a per-round statistic, and every target is a ratio against a
baseline measured in the same run (the machine here is small and noisy; absolute numbers drift by tens of
per cent between runs, ratios much less).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from bench.servers import ECHO_SCHEMA
from mcp_gateway.devkeys import ensure_dev_key

ROOT = Path(__file__).resolve().parents[1]
ISSUER = "https://idp.bench.internal"
SUBJECT = "bench-user"
ROLE = "bench"
MODES = ("2026-07-28", "legacy")


def percentile(values: Sequence[float], percent: int) -> float:
    """The ``percent``-th percentile (inclusive method), as the policy benchmark computes it."""
    if len(values) == 1:
        return float(values[0])
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mb(pid: int) -> float:
    """Resident set size of one process, MB (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def python_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(extra or {})}
    for name in [name for name in env if name.startswith("MCP_GATEWAY_")]:
        if extra is None or name not in extra:
            del env[name]
    return env


def wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready after {timeout}s")


@contextmanager
def server_process(args: list[str], health_url: str, env: dict[str, str] | None = None) -> Any:
    """Start ``python -m bench.servers ARGS`` and stop it afterwards (terminate, then kill after 10 s)."""
    process = subprocess.Popen([sys.executable, "-m", "bench.servers", *args], env=env or python_env(), cwd=ROOT)
    try:
        wait_http(health_url, process)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Deployment:
    """A throw-away gateway configuration: one catalog with ``echo`` (REST backend) and a token for it."""

    root: Path
    config: Path
    port: int
    token: str
    echo_api_url: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return python_env({"MCP_GATEWAY_TOKEN": self.token})


def make_deployment(
    root: Path,
    echo_api_url: str,
    *,
    filler_tools: int = 0,
    settings: dict[str, Any] | None = None,
    echo_keys: dict[str, Any] | None = None,
) -> Deployment:
    """Write catalogs, policies, keys and config under ``root``; ``settings`` are merged into the config and
    ``echo_keys`` into the echo tool's catalog entry."""
    port = free_port()
    audience = f"http://127.0.0.1:{port}/mcp"
    (root / "catalogs").mkdir(parents=True)
    (root / "policies").mkdir()
    (root / "policies" / "model.conf").write_text((ROOT / "policies" / "model.conf").read_text())
    (root / "policies" / "bench.csv").write_text(
        f"p, role:{ROLE}, internal, echo, call, allow\n"
        f"p, role:{ROLE}, internal, svc1*, call, allow\n"
        f"p, role:{ROLE}, internal, svc2*, call, allow\n"
        f"p, role:{ROLE}, internal, svc3.*, call, deny\n"
        "p, role:other, internal, *, call, allow\n"
    )
    tools: list[dict[str, Any]] = [
        {
            "name": "echo",
            "description": "Echo the message back.",
            "input_schema": ECHO_SCHEMA,
            "backend": {
                "type": "http",
                "method": "POST",
                "url": f"{echo_api_url}/echo",
                "body": {"message": "message"},
            },
            **(echo_keys or {}),
        }
    ]
    tools += [
        {
            "name": f"svc{index % 50}.op{index}",
            "description": f"Filler tool {index} for the listing benchmark.",
            "input_schema": {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]},
            "backend": {"type": "http", "method": "GET", "url": f"{echo_api_url}/items/{{id}}"},
        }
        for index in range(1, filler_tools + 1)
    ]
    (root / "catalogs" / "internal.yaml").write_text(yaml.safe_dump({"tools": tools}, sort_keys=False))
    key = ensure_dev_key(root / "keys")
    (root / "jwks.json").write_text(json.dumps(key.jwks()))
    config: dict[str, Any] = {
        "identity": {"issuer": ISSUER, "audience": audience, "jwks_file": "jwks.json", "algorithms": ["EdDSA"]},
        "http": {"host": "127.0.0.1", "port": port},
        "egress": {"allow": [echo_api_url]},
        "state_dir": "state",
    }
    for name, value in (settings or {}).items():
        if isinstance(value, dict):
            config.setdefault(name, {}).update(value)
        else:
            config[name] = value
    path = root / "mcp-gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    token = key.mint(SUBJECT, roles=(ROLE,), catalog="internal", issuer=ISSUER, audience=audience, ttl=3000)
    return Deployment(root, path, port, token, echo_api_url)


@asynccontextmanager
async def http_client(url: str, mode: str, token: str | None = None) -> AsyncIterator[Client]:
    """A real ``mcp`` client over streamable HTTP (``mode``: ``2026-07-28`` or ``legacy``)."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with (
        create_mcp_http_client(headers=headers) as http,
        Client(streamable_http_client(f"{url}/mcp", http_client=http), mode=mode, read_timeout_seconds=30) as client,
    ):
        yield client


@asynccontextmanager
async def stdio_client(args: list[str], mode: str, env: dict[str, str]) -> AsyncIterator[Client]:
    """A real ``mcp`` client that launches ``python -m bench.servers ARGS`` over stdio."""
    params = StdioServerParameters(command=sys.executable, args=["-m", "bench.servers", *args], env=env, cwd=str(ROOT))
    async with Client(params, mode=mode, read_timeout_seconds=30) as client:
        yield client


def machine() -> dict[str, Any]:
    """Where and with what the figures were taken."""
    import platform
    from importlib.metadata import version

    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    packages = ("mcp", "mcp-gateway", "sqlalchemy", "pycasbin", "httpx", "uvicorn", "starlette")
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average_at_start": [round(value, 2) for value in os.getloadavg()],
        "sqlite": __import__("sqlite3").sqlite_version,
        "versions": {name: version(name) for name in packages},
    }
