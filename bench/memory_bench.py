"""Resident memory of the server process: idle, and with 100 open sessions, gateway against bare.

Both servers are real processes serving streamable HTTP on 127.0.0.1. "Idle" is after start-up and one
session that listed and called a tool, then closed. "Loaded" is with ``sessions`` sessions open at once, each
having called ``echo`` once, in legacy mode (stateful: the server keeps a task group and streams per session)
and in 2026-07-28 mode. Targets: gateway <= 120 MB idle and <= 250 MB loaded; the bare server's figures are
the baseline measured in the same run.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import free_port, http_client, make_deployment, median, rss_mb, server_process

SESSIONS = 100


async def _hold_sessions(url: str, mode: str, token: str | None, sessions: int, pid: int) -> float:
    """Open ``sessions`` sessions (each calls echo once), read the server's RSS while all are open."""
    ready = asyncio.Semaphore(0)
    release = asyncio.Event()

    async def session() -> None:
        async with http_client(url, mode, token) as client:
            await client.call_tool("echo", {"message": "hello"})
            ready.release()
            await release.wait()

    tasks = [asyncio.create_task(session()) for _ in range(sessions)]
    try:
        async with asyncio.timeout(120):
            for _ in range(sessions):
                waiter = asyncio.ensure_future(ready.acquire())
                done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
                failed = [task for task in tasks if task in done]
                if failed:
                    waiter.cancel()
                    raise RuntimeError("a session ended early") from failed[0].exception()
        await asyncio.sleep(0.5)  # let the server settle (buffers, GC) before reading
        return rss_mb(pid)
    finally:
        release.set()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _idle(url: str, token: str | None, pid: int) -> float:
    async with http_client(url, "2026-07-28", token) as client:
        await client.list_tools()
        await client.call_tool("echo", {"message": "hello"})
    await asyncio.sleep(0.5)
    return rss_mb(pid)


def run(quick: bool = False, rounds: int = 3, sessions: int = SESSIONS) -> dict[str, Any]:
    samples: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="mcp-gateway-bench-") as tmp:
        for index in range(1 if quick else rounds):
            deployment = make_deployment(Path(tmp) / f"memory-{index}", "http://127.0.0.1:9")
            port = free_port()
            bare_url = f"http://127.0.0.1:{port}"
            servers = {
                "bare": (["bare", "--port", str(port)], bare_url, None, None),
                "governed": (
                    ["governed", "--echo", "local", "--config", str(deployment.config)],
                    deployment.url,
                    deployment.token,
                    deployment.env(),
                ),
            }
            for name, (args, url, token, env) in servers.items():
                with server_process(args, f"{url}/healthz", env) as process:
                    figures = samples.setdefault(name, {})
                    figures.setdefault("started_mb", []).append(rss_mb(process.pid))
                    figures.setdefault("idle_mb", []).append(asyncio.run(_idle(url, token, process.pid)))
                    for mode in ("legacy", "2026-07-28"):
                        loaded = asyncio.run(_hold_sessions(url, mode, token, sessions, process.pid))
                        figures.setdefault(f"loaded_{mode}_mb", []).append(loaded)
                    time.sleep(0.2)
    result: dict[str, Any] = {"benchmark": "memory", "quick": quick, "sessions": sessions}
    for name, figures in samples.items():
        result[name] = {key: median(values) for key, values in figures.items()}
    result["ratio"] = {key: result["governed"][key] / result["bare"][key] for key in result["bare"]}
    return result
