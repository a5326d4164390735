"""The operator of a state-changing command is a verified token with a role: refused without one, recorded by
``sub``, ``jti`` and ``amr``."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mcp_gateway.config import Settings, load_settings
from mcp_gateway.devkeys import ensure_dev_key
from mcp_gateway.errors import ForbiddenError, UnauthenticatedError
from mcp_gateway.operators import Operator, operator_for, require_role, role_names, verified_operator
from tests.conftest import Deployment


@pytest.fixture
def settings(deployment: Deployment) -> Settings:
    return load_settings(deployment.config)


def _file(tmp_path: Path, token: str, name: str = "token") -> Path:
    path = tmp_path / name
    path.write_text(token + "\n")
    return path


def test_a_verified_operator_carries_sub_jti_amr_and_roles(
    deployment: Deployment, settings: Settings, tmp_path: Path
) -> None:
    token = deployment.mint("ops-alice", ("policy-admin", "support"), "internal", amr=("pwd", "mfa"))
    operator = verified_operator(settings, _file(tmp_path, token), environ={})
    assert operator.sub == operator.label == "ops-alice"
    assert operator.roles == frozenset({"policy-admin", "support"})
    actor = operator.actor()
    assert set(actor) == {"sub", "jti", "amr"}
    assert actor["sub"] == "ops-alice"
    assert actor["amr"] == ["pwd", "mfa"]
    assert isinstance(actor["jti"], str)
    assert len(actor["jti"]) == 32


def test_the_token_comes_from_the_file_option_then_the_environment(
    deployment: Deployment, settings: Settings, tmp_path: Path
) -> None:
    from_env = deployment.mint("env-user", ("policy-admin",), "internal")
    from_env_file = _file(tmp_path, deployment.mint("env-file-user", ("policy-admin",), "internal"), "env-file")
    from_option = _file(tmp_path, deployment.mint("option-user", ("policy-admin",), "internal"), "option")
    both = {"MCP_GATEWAY_TOKEN": from_env, "MCP_GATEWAY_TOKEN_FILE": str(from_env_file)}
    assert verified_operator(settings, from_option, environ=both).sub == "option-user"
    assert verified_operator(settings, environ=both).sub == "env-user"
    assert verified_operator(settings, environ={"MCP_GATEWAY_TOKEN_FILE": str(from_env_file)}).sub == "env-file-user"


def _forged(deployment: Deployment, tmp_path: Path) -> str:
    # Signed by a key the gateway does not trust, under the trusted key's id.
    other = ensure_dev_key(tmp_path / "other-key")
    return other.mint(
        "mallory",
        roles=("policy-admin",),
        catalog="internal",
        issuer="https://idp.test.internal",
        audience=deployment.audience,
        headers={"kid": deployment.key.kid},
    )


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        pytest.param("expired", "expired", id="expired"),
        pytest.param("forged", "bad signature", id="forged"),
        pytest.param("wrong-audience", "wrong audience", id="wrong-audience"),
        pytest.param("wrong-issuer", "wrong issuer", id="wrong-issuer"),
        pytest.param("garbage", "malformed", id="not-a-jwt"),
    ],
)
def test_an_unverified_operator_is_refused_with_the_reason(
    deployment: Deployment, settings: Settings, tmp_path: Path, case: str, reason: str
) -> None:
    tokens = {
        "expired": lambda: deployment.mint("ops", ("policy-admin",), "internal", now=time.time() - 3600),
        "forged": lambda: _forged(deployment, tmp_path),
        "wrong-audience": lambda: deployment.mint("ops", ("policy-admin",), "internal", audience="https://other/mcp"),
        "wrong-issuer": lambda: deployment.mint("ops", ("policy-admin",), "internal", issuer="https://evil.test"),
        "garbage": lambda: "not.a.token",
    }
    token = tokens[case]()
    with pytest.raises(UnauthenticatedError) as refused:
        verified_operator(settings, _file(tmp_path, token), environ={})
    assert refused.value.reason == reason
    assert "operator token --token-file" in str(refused.value)
    assert token not in str(refused.value)  # never the token itself


def test_a_partner_token_never_operates_the_gateway_whatever_its_roles(
    deployment: Deployment, settings: Settings, tmp_path: Path
) -> None:
    token = deployment.mint("acme-admin", ("policy-admin", "breakglass-approver"), "partner")
    with pytest.raises(ForbiddenError, match="only 'internal' tokens may change the gateway"):
        verified_operator(settings, _file(tmp_path, token), environ={})


def test_no_token_or_an_unreadable_one_is_refused(settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(UnauthenticatedError, match="no operator token: pass --token-file") as none:
        verified_operator(settings, environ={})
    assert none.value.reason == "no token"
    with pytest.raises(UnauthenticatedError, match="cannot read") as missing:
        verified_operator(settings, tmp_path / "absent", environ={})
    assert missing.value.reason == "unreadable"
    with pytest.raises(UnauthenticatedError, match="is empty"):
        verified_operator(settings, _file(tmp_path, "  "), environ={})
    with pytest.raises(UnauthenticatedError, match="larger than a token") as huge:
        verified_operator(settings, Path("/dev/zero"), environ={})
    assert huge.value.reason == "malformed"
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe token")
    with pytest.raises(UnauthenticatedError, match="not UTF-8"):
        verified_operator(settings, binary, environ={})
    with pytest.raises(UnauthenticatedError, match="MCP_GATEWAY_TOKEN_FILE"):
        verified_operator(settings, environ={"MCP_GATEWAY_TOKEN_FILE": str(tmp_path / "absent")})


def test_an_under_privileged_operator_is_refused_naming_the_action_and_roles(settings: Settings) -> None:
    support = Operator("bob", "j1", ("pwd",), frozenset({"support", "breakglass-approver"}))
    with pytest.raises(ForbiddenError) as refused:
        require_role(support, settings, "policy", "policy add")
    message = str(refused.value)
    assert "policy add needs a token role in admin.policy_roles (policy-admin)" in message
    assert "'bob' has: breakglass-approver, support" in message
    assert refused.value.exit_code == 1
    require_role(support, settings, "approver", "breakglass approve")  # the break-glass approver list, reused
    with pytest.raises(ForbiddenError, match=r"admin\.reviewer_roles \(breakglass-reviewer\)"):
        require_role(support, settings, "reviewer", "breakglass review")
    nobody = Operator("eve", None, (), frozenset())
    with pytest.raises(ForbiddenError, match="'eve' has: none"):
        require_role(nobody, settings, "approver", "approval approve")


def test_roles_are_configurable(deployment: Deployment, tmp_path: Path) -> None:
    import yaml

    data = yaml.safe_load(deployment.config.read_text())
    data["admin"] = {"policy_roles": ["secops"], "reviewer_roles": ["audit-team"]}
    data["breakglass"] = {"approver_roles": ["duty-manager"]}
    deployment.config.write_text(yaml.safe_dump(data))
    settings = load_settings(deployment.config)
    assert role_names(settings, "policy") == ("secops",)
    assert role_names(settings, "reviewer") == ("audit-team",)
    assert role_names(settings, "approver") == ("duty-manager",)
    token = _file(tmp_path, deployment.mint("carol", ("secops",), "internal"))
    assert operator_for(settings, "policy", "policy add", token).sub == "carol"
    with pytest.raises(ForbiddenError, match="duty-manager"):
        operator_for(settings, "approver", "breakglass approve", token)


def test_operator_for_verifies_before_it_checks_the_role(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MCP_GATEWAY_TOKEN", raising=False)
    monkeypatch.delenv("MCP_GATEWAY_TOKEN_FILE", raising=False)
    with pytest.raises(UnauthenticatedError):
        operator_for(settings, "policy", "policy add", tmp_path / "absent")
