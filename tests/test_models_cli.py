"""``mcp-gateway models list | verify | import`` and ``config check`` against an inventory in ``tmp_path``;
``import`` runs as a verified operator with a policy role and is an audit record with the digest it verified."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from mcp_gateway.audit.log import AuditLog
from mcp_gateway.cli.app import app
from mcp_gateway.config import load_settings
from mcp_gateway.devkeys import ensure_dev_key
from tests.conftest import ISSUER
from tests.model_setup import model, model_tool, write_deployment

URL = "http://127.0.0.1:9/v1"
WEIGHTS = b"GGUF" + bytes(range(256)) * 4096  # ~1 MiB of pretend weights
DIGEST = hashlib.sha256(WEIGHTS).hexdigest()


def run(config: Path, *args: str) -> Result:
    env = {"COLUMNS": "200", "MCP_GATEWAY_TOKEN": None, "MCP_GATEWAY_TOKEN_FILE": None}
    return CliRunner().invoke(app, [*args, "--config", str(config)], env=env, catch_exceptions=False)


def token(config: Path, subject: str = "ml-ops", roles: tuple[str, ...] = ("policy-admin",)) -> str:
    """A token file for ``subject``, signed by the deployment's own dev key (write_deployment trusts it)."""
    key = ensure_dev_key(config.parent / "keys")
    minted = key.mint(subject, roles=roles, catalog="internal", issuer=ISSUER, audience="http://127.0.0.1:1/mcp",
                      amr=("pwd", "hwk"))  # fmt: skip
    path = config.parent / f"{subject}.token"
    path.write_text(minted)
    return str(path)


def rows(config: Path) -> list[dict[str, Any]]:
    log = AuditLog(load_settings(config).database_url)
    try:
        return list(log.iter_rows())
    finally:
        log.close()


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

    operator = token(config)

    assert run(config, "models", "verify").exit_code == 1  # missing before the import

    wrong = run(
        config, "models", "import", str(source), "--name", "gemma", "--sha256", "0" * 64, "--token-file", operator
    )
    assert wrong.exit_code == 1
    assert not placed.exists()

    source.write_bytes(WEIGHTS[:-1] + b"X")  # tampered in transit: the inventory's hash no longer matches
    tampered = run(
        config, "models", "import", str(source), "--name", "gemma", "--sha256", DIGEST, "--token-file", operator
    )
    assert tampered.exit_code == 1
    assert "nothing imported" in tampered.output
    assert not placed.exists()
    assert list(placed.parent.iterdir()) == []  # no partial file left behind
    refused = [json.loads(str(row["detail"])) for row in rows(config) if row["event"] == "models.import"]
    assert [row["error"].split(":")[0] for row in refused] == ["models import", "models import"]

    source.write_bytes(WEIGHTS)
    imported = run(
        config, "models", "import", str(source), "--name", "gemma", "--sha256", DIGEST, "--token-file", operator
    )
    assert imported.exit_code == 0, imported.output
    assert placed.read_bytes() == WEIGHTS
    record = rows(config)[-1]
    detail = json.loads(str(record["detail"]))
    assert (record["event"], record["outcome"], record["subject"]) == ("models.import", "ok", "ml-ops")
    assert detail["sha256"] == DIGEST
    assert (detail["model"], detail["actor"]["sub"], detail["actor"]["amr"]) == ("gemma", "ml-ops", ["pwd", "hwk"])
    assert detail["actor"]["jti"]
    assert run(config, "models", "verify").exit_code == 0

    placed.write_bytes(WEIGHTS + b"!")
    verify = run(config, "models", "verify")
    assert verify.exit_code == 1
    assert "gemma: mismatch" in verify.output


@pytest.mark.parametrize(
    "who",
    [pytest.param(None, id="no-token"), pytest.param(("support",), id="under-privileged")],
)
def test_import_needs_a_verified_operator_with_a_policy_role(tmp_path: Path, who: tuple[str, ...] | None) -> None:
    config = deployment(tmp_path)
    source = tmp_path / "gemma.gguf"
    source.write_bytes(WEIGHTS)
    args = ["models", "import", str(source), "--name", "gemma", "--sha256", DIGEST]
    result = run(config, *args, *(["--token-file", token(config, "bob", who)] if who else []))
    assert result.exit_code == 1
    assert ("no operator token" if who is None else "models import needs a token role") in result.output
    assert not (tmp_path / "models" / "gemma.gguf").exists()
    assert not [row for row in rows(config) if row["event"] == "models.import"]


def test_list_and_verify_need_no_token(tmp_path: Path) -> None:
    config = deployment(tmp_path)
    assert run(config, "models", "list").exit_code == 0
    assert run(config, "models", "verify").exit_code == 1  # the weights are missing: the verdict, not a refusal


def test_config_check_counts_models_and_refuses_an_unapproved_one(tmp_path: Path) -> None:
    good = run(deployment(tmp_path / "good"), "config", "check")
    assert good.exit_code == 0, good.output
    assert "2 in the inventory, 1 approved" in good.output

    bad = run(deployment(tmp_path / "bad", approved=False), "config", "check")
    assert bad.exit_code == 2
    assert "'gemma' is not approved" in bad.output
