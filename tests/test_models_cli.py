"""``mcp-gateway models list | verify | import`` and ``config check`` against an inventory in ``tmp_path``."""

from __future__ import annotations

import hashlib
from pathlib import Path

from typer.testing import CliRunner, Result

from mcp_gateway.cli.app import app
from tests.model_setup import model, model_tool, write_deployment

URL = "http://127.0.0.1:9/v1"
WEIGHTS = b"GGUF" + bytes(range(256)) * 4096  # ~1 MiB of pretend weights
DIGEST = hashlib.sha256(WEIGHTS).hexdigest()


def run(config: Path, *args: str) -> Result:
    return CliRunner().invoke(app, [*args, "--config", str(config)], env={"COLUMNS": "200"}, catch_exceptions=False)


def deployment(tmp_path: Path, **entry: object) -> Path:
    models = [
        model("gemma", URL, "gemma-3-270m", sha256=DIGEST, weights="gemma.gguf", **entry),
        model("spare", URL, "spare", approved=False),
    ]
    return write_deployment(
        tmp_path, models, [model_tool("llm.s", "gemma")], allow=["http://127.0.0.1:9"], artifacts_dir="../models"
    )


def test_list_shows_the_inventory(tmp_path: Path) -> None:
    result = run(deployment(tmp_path), "models", "list")
    assert result.exit_code == 0
    assert "gemma-3-270m" in result.output
    assert "ml-platform" in result.output


def test_import_copies_only_matching_weights_and_verify_rehashes(tmp_path: Path) -> None:
    config = deployment(tmp_path)
    source = tmp_path / "usb" / "gemma.gguf"
    source.parent.mkdir()
    source.write_bytes(WEIGHTS)
    placed = tmp_path / "models" / "gemma.gguf"

    assert run(config, "models", "verify").exit_code == 1  # missing before the import

    wrong = run(config, "models", "import", str(source), "--name", "gemma", "--sha256", "0" * 64)
    assert wrong.exit_code == 1
    assert not placed.exists()

    source.write_bytes(WEIGHTS[:-1] + b"X")  # tampered in transit: the inventory's hash no longer matches
    tampered = run(config, "models", "import", str(source), "--name", "gemma", "--sha256", DIGEST)
    assert tampered.exit_code == 1
    assert "nothing imported" in tampered.output
    assert not placed.exists()
    assert list(placed.parent.iterdir()) == []  # no partial file left behind

    source.write_bytes(WEIGHTS)
    imported = run(config, "models", "import", str(source), "--name", "gemma", "--sha256", DIGEST)
    assert imported.exit_code == 0, imported.output
    assert placed.read_bytes() == WEIGHTS
    assert run(config, "models", "verify").exit_code == 0

    placed.write_bytes(WEIGHTS + b"!")
    verify = run(config, "models", "verify")
    assert verify.exit_code == 1
    assert "gemma: mismatch" in verify.output


def test_config_check_counts_models_and_refuses_an_unapproved_one(tmp_path: Path) -> None:
    good = run(deployment(tmp_path / "good"), "config", "check")
    assert good.exit_code == 0, good.output
    assert "2 in the inventory, 1 approved" in good.output

    bad = run(deployment(tmp_path / "bad", approved=False), "config", "check")
    assert bad.exit_code == 2
    assert "'gemma' is not approved" in bad.output
