"""A chat completion through the gateway vs the same call with the OpenAI client directly, in one run.

Both go to the same llama.cpp server (Gemma 3 270M, one thread) on 127.0.0.1 with the same request (4 tokens,
temperature 0, fixed seed). "direct" is an ``AsyncOpenAI`` client built once. "gateway" is a real MCP client
session (JSON-RPC over in-memory streams) to the governed gateway: policy, schema, two audit rows on SQLite, the
model router and the egress guard. Calls alternate, so engine drift hits both sides alike.

Run ``.venv/bin/python bench/model_bench.py [--calls N]`` (needs the models extra). Reports the median and p90 of
each, the added milliseconds (median gateway - median direct) and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import openai  # noqa: E402
from mcp.client import Client  # noqa: E402
from mcp.client._memory import InMemoryTransport  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from mcp_gateway.transports.handlers import build_server  # noqa: E402
from tests.conftest import free_port, gemma_gguf, stop, wait_http  # noqa: E402
from tests.model_setup import ALICE, build, close, model, model_tool, write_deployment  # noqa: E402

TOKENS = 4
PROMPT = "Summarise: the quarterly report"


async def run(calls: int, url: str, model_id: str, folder: Path) -> dict[str, list[float]]:
    models = [model("gemma", f"{url}/v1", model_id, max_tokens=TOKENS, timeout=60)]
    tool = model_tool("llm.summarise", "gemma", system_prompt=None, prompt="Summarise: {text}")
    gateway = build(write_deployment(folder, models, [tool], allow=[url]))
    direct = openai.AsyncOpenAI(api_key="no-key", base_url=f"{url}/v1", max_retries=0, timeout=60)
    times: dict[str, list[float]] = {"direct": [], "gateway": []}
    try:
        async with Client(InMemoryTransport(build_server(gateway, lambda: ALICE))) as client:
            for index in range(calls + 3):
                started = time.perf_counter()
                answer = await direct.chat.completions.create(
                    model=model_id,
                    messages=[{"role": "user", "content": PROMPT}],
                    max_tokens=TOKENS,
                    temperature=0,
                    seed=1,
                )
                direct_ms = (time.perf_counter() - started) * 1000
                started = time.perf_counter()
                result = await client.call_tool("llm.summarise", {"text": "the quarterly report", "temperature": 0})
                gateway_ms = (time.perf_counter() - started) * 1000
                assert not result.is_error, result.content
                assert answer.usage is not None
                assert result.structured_content is not None
                assert result.structured_content["usage"]["completion_tokens"] == answer.usage.completion_tokens
                if index >= 3:  # warm-up: first connections, first prompt evaluation
                    times["direct"].append(direct_ms)
                    times["gateway"].append(gateway_ms)
    finally:
        await direct.close()
        await close(gateway)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()
    gguf, _ = gemma_gguf()
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--chat_format", "gemma", "--n_threads", "1", "--n_ctx", "512"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/v1/models", server, timeout=60)
        model_id = httpx.get(f"{url}/v1/models", trust_env=False).json()["data"][0]["id"]
        with tempfile.TemporaryDirectory() as folder:
            times = asyncio.run(run(args.calls, url, model_id, Path(folder)))
    finally:
        stop(server)
    direct, gateway = statistics.median(times["direct"]), statistics.median(times["gateway"])
    table = Table("path", "median ms", "p90 ms")
    for name, values in times.items():
        table.add_row(name, f"{statistics.median(values):.1f}", f"{statistics.quantiles(values, n=10)[-1]:.1f}")
    console = Console()
    console.print(table)
    console.print(f"added by the gateway: {gateway - direct:.1f} ms per call; ratio {gateway / direct:.2f}")
    result = {"direct_ms": direct, "gateway_ms": gateway, "added_ms": gateway - direct, "ratio": gateway / direct}
    (ROOT / "bench" / "results.json").write_text(json.dumps({"model_bench": result}, indent=2))


if __name__ == "__main__":
    main()
