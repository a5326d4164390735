"""The cost of governance per call: an echo tool through the gateway against a bare ``mcp`` server.

Every variant is a real server process and a real ``mcp`` client over the same transport, in the same run,
rounds interleaved (bare, governed, bare, governed, ...) so drift hits both sides alike:

``echo`` (target: governed <= 1.3x bare p50, >= 0.8x bare calls/s), per transport (stdio, streamable HTTP in
2026-07-28 mode, streamable HTTP legacy):
    bare       the SDK's low-level server; the echo does no I/O
    governed   the gateway with identity, catalog, policy, argument limits and the audit trail (two committed
               rows per call), its REST backend answered in-process so that, like the bare echo, it does no
               I/O: the difference is governance only

``rest`` (streamable HTTP, 2026-07-28): the same REST call three ways
    httpx      ``POST /echo`` made directly with one reused httpx client (the baseline)
    bare-rest  the bare MCP server whose echo makes that call (what MCP itself adds)
    governed   the gateway's real REST backend (what MCP and governance add)

Each round runs ``calls`` sequential calls on one session, then ``sessions`` sessions calling concurrently.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from mcp.client import Client

from bench.common import (
    Deployment,
    free_port,
    http_client,
    make_deployment,
    median,
    percentile,
    python_env,
    server_process,
    stdio_client,
)

TRANSPORTS = (("stdio", "2026-07-28"), ("http", "2026-07-28"), ("http", "legacy"))
# Diagnostics, on streamable HTTP 2026-07-28 only: what the audit rows cost. Not deployable configurations.
DIAGNOSTICS = {"governed, 1 row (diagnostic)": "decision-off", "governed, no audit (diagnostic)": "off"}
ARGUMENTS = {"message": "hello from the benchmark"}

Call = Callable[[], Awaitable[Any]]
Opener = Callable[[], AbstractAsyncContextManager[Call]]


@dataclass
class Samples:
    """One variant's per-round statistics, to take medians over."""

    p50_ms: list[float] = field(default_factory=list)
    p95_ms: list[float] = field(default_factory=list)
    calls_per_s: list[float] = field(default_factory=list)

    def add(self, latencies: list[float], wall: float) -> None:
        self.p50_ms.append(percentile(latencies, 50) * 1000)
        self.p95_ms.append(percentile(latencies, 95) * 1000)
        self.calls_per_s.append(len(latencies) / wall)

    def summary(self) -> dict[str, Any]:
        return {
            "p50_ms": median(self.p50_ms),
            "p95_ms": median(self.p95_ms),
            "calls_per_s": median(self.calls_per_s),
            "rounds": len(self.p50_ms),
        }


async def _timed(call: Call, count: int) -> list[float]:
    latencies = []
    clock = time.perf_counter
    for _ in range(count):
        started = clock()
        result = await call()
        latencies.append(clock() - started)
        if getattr(result, "is_error", False):
            raise RuntimeError(f"echo failed: {result}")
    return latencies


async def measure(opener: Opener, calls: int, sessions: int, calls_each: int) -> tuple[tuple, tuple]:
    """Sequential calls on one session, then ``sessions`` concurrent sessions; (latencies, wall) for each.

    Each session lives in its own task (the SDK's clients must be closed by the task that opened them); the
    sessions open in parallel, then wait for the timed phases.
    """
    ready = asyncio.Semaphore(0)
    sequential_go, concurrent_go, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()
    sequential: list[float] = []
    parts: list[list[float]] = [[] for _ in range(sessions)]

    async def session(index: int) -> None:
        async with opener() as call:
            await _timed(call, 5)  # warm-up: first-call costs (imports, caches, connections)
            ready.release()
            await sequential_go.wait()
            if index == 0:
                sequential.extend(await _timed(call, calls))
            await concurrent_go.wait()
            parts[index] = await _timed(call, calls_each)
            await finished.wait()

    tasks = [asyncio.create_task(session(index)) for index in range(sessions)]
    try:
        for _ in range(sessions):
            await _first(ready.acquire(), tasks)
        started = time.perf_counter()
        sequential_go.set()
        while len(sequential) < calls:
            await _first(asyncio.sleep(0.01), tasks)
        sequential_wall = time.perf_counter() - started
        started = time.perf_counter()
        concurrent_go.set()
        while not all(parts):
            await _first(asyncio.sleep(0.005), tasks)
        concurrent_wall = time.perf_counter() - started
    finally:
        finished.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    return (sequential, sequential_wall), ([x for part in parts for x in part], concurrent_wall)


async def _first(awaitable: Awaitable[Any], tasks: list[asyncio.Task[None]]) -> None:
    """Await ``awaitable``, but re-raise at once if a session task failed."""
    waiter = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait([waiter, *tasks], timeout=120, return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        if task in done and task.exception() is not None:
            waiter.cancel()
            raise task.exception()  # type: ignore[misc]
    if waiter not in done:
        waiter.cancel()
        if not done:
            raise TimeoutError("a benchmark phase took longer than 120 s")
        await waiter


def _mcp_call(client: Client) -> Call:
    return lambda: client.call_tool("echo", ARGUMENTS)


def http_opener(url: str, mode: str, token: str | None) -> Opener:
    @asynccontextmanager
    async def open_() -> AsyncIterator[Call]:
        async with http_client(url, mode, token) as client:
            yield _mcp_call(client)

    return open_


def _stdio_opener(args: list[str], mode: str, env: dict[str, str]) -> Opener:
    @asynccontextmanager
    async def open_() -> AsyncIterator[Call]:
        async with stdio_client(args, mode, env) as client:
            yield _mcp_call(client)

    return open_


def _httpx_opener(url: str) -> Opener:
    @asynccontextmanager
    async def open_() -> AsyncIterator[Call]:
        async with httpx.AsyncClient(trust_env=False) as client:

            async def call() -> Any:
                response = await client.post(f"{url}/echo", json=ARGUMENTS)
                response.raise_for_status()
                return response.json()

            yield call

    return open_


def _ratios(base: dict[str, Any], other: dict[str, Any]) -> dict[str, float]:
    return {
        "p50": other["p50_ms"] / base["p50_ms"],
        "p95": other["p95_ms"] / base["p95_ms"],
        "throughput": other["calls_per_s"] / base["calls_per_s"],
    }


def _report(samples: dict[str, dict[str, Samples]], baseline: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for load in ("sequential", "concurrent"):
        figures = {name: per_load[load].summary() for name, per_load in samples.items()}
        base = figures[baseline]
        for name, values in figures.items():
            if name != baseline:
                values["ratio"] = _ratios(base, values)
        out[load] = figures
    return out


async def _rounds(
    openers: dict[str, Opener], rounds: int, calls: int, sessions: int, calls_each: int
) -> dict[str, dict[str, Samples]]:
    samples = {name: {"sequential": Samples(), "concurrent": Samples()} for name in openers}
    for index in range(rounds):
        # Alternate the order so neither side always runs first (warm caches, CPU frequency).
        names = list(openers) if index % 2 == 0 else list(reversed(openers))
        for name in names:
            (seq, seq_wall), (conc, conc_wall) = await measure(openers[name], calls, sessions, calls_each)
            samples[name]["sequential"].add(seq, seq_wall)
            samples[name]["concurrent"].add(conc, conc_wall)
    return samples


# Measured beside the default in every run: the issue asks for the power durability level next to it.
POWER = "governed, power durability"
DEFAULT_VARIANTS: dict[str, dict[str, Any]] = {POWER: {"audit": {"durability": "power"}}}
READ_ONLY = "governed, read-only tool (1 row)"
READ_ONLY_KEYS = {"annotations": {"read_only_hint": True}, "audit": "outcome-only"}


def run(
    quick: bool = False,
    *,
    rounds: int = 3,
    sessions: int = 8,
    variants: dict[str, dict[str, Any]] | None = None,
    diagnostics: bool = True,
) -> dict[str, Any]:
    """Run both comparisons. ``variants`` adds governed variants: name -> settings merged into the config.

    Extra variants (for example an audit durability level, once the audit module has one) are measured beside
    ``governed`` against the same ``bare`` baseline.
    """
    calls = 200 if quick else 500
    calls_each = 50 if quick else 150
    with tempfile.TemporaryDirectory(prefix="mcp-gateway-bench-") as tmp:
        api_port = free_port()
        api_url = f"http://127.0.0.1:{api_port}"
        with server_process(["echo-api", "--port", str(api_port)], f"{api_url}/healthz"):
            deployments = {"governed": make_deployment(Path(tmp) / "governed", api_url)}
            # The same echo declared read-only with one audit row after the answer (audit: outcome-only): a
            # catalog option for tools with no side effects, not the default.
            deployments[READ_ONLY] = make_deployment(Path(tmp) / "read-only", api_url, echo_keys=READ_ONLY_KEYS)
            for name, settings in (variants or {}).items():
                deployments[name] = make_deployment(Path(tmp) / name, api_url, settings=settings)
            echo = asyncio.run(_echo(deployments, rounds, calls, sessions, calls_each, diagnostics))
            rest = asyncio.run(_rest(deployments["governed"], api_url, rounds, calls, sessions, calls_each))
    return {
        "benchmark": "echo",
        "quick": quick,
        "calls_sequential": calls,
        "sessions": sessions,
        "calls_per_session_concurrent": calls_each,
        "rounds": rounds,
        "echo": echo,
        "rest": rest,
    }


async def _echo(
    deployments: dict[str, Deployment], rounds: int, calls: int, sessions: int, calls_each: int, diagnostics: bool
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for transport, mode in TRANSPORTS:
        key = f"{transport}-{mode}"
        async with AsyncExitStack() as stack:
            openers: dict[str, Opener] = {}
            if transport == "stdio":
                openers["bare"] = _stdio_opener(["bare", "--transport", "stdio"], mode, python_env())
                for name, deployment in deployments.items():
                    args = ["governed", "--transport", "stdio", "--echo", "local", "--config", str(deployment.config)]
                    openers[name] = _stdio_opener(args, mode, deployment.env())
            else:
                port = free_port()
                url = f"http://127.0.0.1:{port}"
                stack.enter_context(server_process(["bare", "--port", str(port)], f"{url}/healthz"))
                openers["bare"] = http_opener(url, mode, None)
                servers = [(name, deployment, "full") for name, deployment in deployments.items()]
                if diagnostics and mode == "2026-07-28":
                    servers += [(name, deployments["governed"], audit) for name, audit in DIAGNOSTICS.items()]
                for name, deployment, audit in servers:
                    # A diagnostic shares the governed configuration but listens on its own port.
                    port = deployment.port if audit == "full" else free_port()
                    url = f"http://127.0.0.1:{port}"
                    args = ["governed", "--echo", "local", "--audit", audit, "--config", str(deployment.config)]
                    env = deployment.env()
                    if audit != "full":
                        database = f"sqlite:///{deployment.root / 'state' / f'diagnostic-{audit}.db'}"
                        env |= {"MCP_GATEWAY_HTTP__PORT": str(port), "MCP_GATEWAY_DATABASE_URL": database}
                    stack.enter_context(server_process(args, f"{url}/healthz", env))
                    openers[name] = http_opener(url, mode, deployment.token)
            samples = await _rounds(openers, rounds, calls, sessions, calls_each)
        results[key] = _report(samples, "bare")
    return results


async def _rest(
    deployment: Deployment, api_url: str, rounds: int, calls: int, sessions: int, calls_each: int
) -> dict[str, Any]:
    mode = "2026-07-28"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (
        server_process(["bare", "--port", str(port), "--rest-url", api_url], f"{url}/healthz"),
        server_process(["governed", "--config", str(deployment.config)], f"{deployment.url}/healthz", deployment.env()),
    ):
        openers = {
            "httpx": _httpx_opener(api_url),
            "bare-rest": http_opener(url, mode, None),
            "governed": http_opener(deployment.url, mode, deployment.token),
        }
        samples = await _rounds(openers, rounds, calls, sessions, calls_each)
    report = _report(samples, "httpx")
    for load in ("sequential", "concurrent"):
        figures = report[load]
        figures["governed"]["ratio_to_bare_rest"] = _ratios(figures["bare-rest"], figures["governed"])
    return {"transport": f"http-{mode}", **report}
