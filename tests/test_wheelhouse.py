"""The offline bundle: requirements.lock pins every runtime dependency by hash, and ``make wheelhouse``'s bundle
installs into a fresh venv with every index switched off, then runs.

The slow test builds the bundle with scripts/wheelhouse.sh (PyPI is needed for that step only), or uses the
one in $MCP_GATEWAY_WHEELHOUSE if set; everything after the build runs with pip's config files ignored, no
find-links but the bundle, ``--no-index`` and an index URL on a closed 127.0.0.1 port.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.lock"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) \\$")
_HASH = re.compile(r"^ +--hash=sha256:[0-9a-f]{64}( \\)?$")


def _entries(text: str) -> dict[str, list[str]]:
    """Each pinned requirement and its hash lines; any other non-comment line fails the test."""
    entries: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if match := _PIN.match(line):
            current = canonicalize_name(match[1])
            entries[current] = []
        else:
            assert current is not None, f"a hash before any pin: {line!r}"
            assert _HASH.match(line), f"not a pin or a hash: {line!r}"
            entries[current].append(line)
    return entries


def test_every_locked_requirement_is_pinned_with_a_sha256() -> None:
    entries = _entries(LOCK.read_text(encoding="utf-8"))
    assert len(entries) >= 50
    assert all(entries.values()), [name for name, hashes in entries.items() if not hashes]


def test_the_lock_covers_every_runtime_dependency_and_the_postgres_extra() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["postgres"]]
    missing = {canonicalize_name(Requirement(line).name) for line in declared} - set(_entries(LOCK.read_text()))
    assert not missing, f"run make lock: {sorted(missing)}"


@pytest.mark.parametrize("line", ["requests==2.0", "requests>=2.32 \\\n    --hash=sha256:" + "0" * 64, "-e ."])
def test_a_lock_line_without_an_exact_pin_and_hash_is_refused(line: str) -> None:
    with pytest.raises(AssertionError):
        assert all(_entries(line + "\n").values())


def _offline_env(home: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PIP_", "VIRTUAL_ENV"))}
    closed = "http://127.0.0.1:9/simple"  # the discard port: nothing listens, a connection is refused at once
    env.update(
        PIP_CONFIG_FILE=os.devnull,
        PIP_NO_INDEX="1",
        PIP_INDEX_URL=closed,
        PIP_NO_CACHE_DIR="1",
        HTTP_PROXY=closed,
        HTTPS_PROXY=closed,
        HOME=str(home),
        COLUMNS="1000",
    )
    return env


def _pip_offline(venv: Path) -> list[str | Path]:
    return [venv / "bin" / "python", "-m", "pip", "install", "--no-index", "--require-hashes"]


def _run(args: list[str | Path], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600, check=False
    )


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    prebuilt = os.environ.get("MCP_GATEWAY_WHEELHOUSE")
    if prebuilt:
        return Path(prebuilt)
    out = tmp_path_factory.mktemp("dist") / "wheelhouse"
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "wheelhouse.sh"), sys.executable, str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return out


@pytest.mark.slow
def test_the_bundle_installs_with_no_index_and_runs(wheelhouse: Path, tmp_path: Path) -> None:
    files = sorted(path.name for path in wheelhouse.iterdir())
    assert {"requirements.lock", "sbom.cdx.json", "SHA256SUMS"} <= set(files)
    assert not [name for name in files if name.endswith((".tar.gz", ".zip", ".tar.bz2"))]  # wheels only
    checked = subprocess.run(
        ["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=wheelhouse, capture_output=True, check=False
    )
    assert checked.returncode == 0, checked.stdout
    lock = (wheelhouse / "requirements.lock").read_text(encoding="utf-8")
    assert all(_entries(lock).values())
    assert "mcp-gateway" in _entries(lock)

    env = _offline_env(tmp_path)
    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", venv], env, tmp_path).returncode == 0
    bin_ = venv / "bin"
    done = _run(
        [*_pip_offline(venv), "-r", wheelhouse / "requirements.lock", "--find-links", wheelhouse], env, tmp_path
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    assert _run([bin_ / "mcp-gateway", "--help"], env, tmp_path).returncode == 0
    deploy = tmp_path / "deploy"
    assert _run([bin_ / "mcp-gateway", "init", deploy], env, tmp_path).returncode == 0
    config = deploy / "mcp-gateway.yaml"
    checked_config = _run([bin_ / "mcp-gateway", "config", "check", "--config", config], env, tmp_path)
    assert checked_config.returncode == 0, checked_config.stderr
    assert "configuration OK" in checked_config.stdout
    token = _run(
        [
            bin_ / "mcp-gateway",
            "token",
            "issue",
            "--config",
            config,
            "-s",
            "alice",
            "-r",
            "support",
            "--catalog",
            "internal",
        ],
        env,
        tmp_path,
    )
    assert token.returncode == 0, token.stderr
    assert token.stdout.count(".") == 2  # a compact JWS, signed by the bundle's cryptography

    sbom = tmp_path / "sbom.cdx.json"
    made = _run([bin_ / "mcp-gateway", "sbom", "--wheelhouse", wheelhouse, "--output", sbom], env, tmp_path)
    assert made.returncode == 0, made.stderr
    for document in (sbom, wheelhouse / "sbom.cdx.json"):
        text = document.read_text(encoding="utf-8")
        assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
        parsed = json.loads(text)
        # Every component installed from the bundle carries the very hash the install lock pinned.
        for component in [parsed["metadata"]["component"], *parsed["components"]]:
            name = canonicalize_name(component["name"])
            if name in _entries(lock):
                (digest,) = (entry["content"] for entry in component["hashes"])
                assert f"--hash=sha256:{digest}" in lock, name


@pytest.mark.slow
def test_a_tampered_wheel_is_refused_by_the_hash_pin(wheelhouse: Path, tmp_path: Path) -> None:
    house = tmp_path / "house"
    shutil.copytree(wheelhouse, house)
    (victim,) = house.glob("pyjwt-*.whl")
    victim.write_bytes(victim.read_bytes() + b"\0")
    env = _offline_env(tmp_path)
    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", venv], env, tmp_path).returncode == 0
    done = _run(
        [*_pip_offline(venv), "-r", house / "requirements.lock", "--find-links", house],
        env,
        tmp_path,
    )
    assert done.returncode != 0
    assert "DO NOT MATCH THE HASHES" in done.stderr
    assert not list((venv / "lib").glob("python3.11/site-packages/mcp_gateway"))
