"""``mcp-gateway sbom``: a CycloneDX 1.6 document of the installed distributions, valid against the schema the
CycloneDX library ships, built with every socket refused.

The environment is this test run's own (the project's venv); hostile metadata comes from real ``.dist-info``
folders put first on ``sys.path``, which ``importlib.metadata`` reads like any other.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import json
import re
import socket
from pathlib import Path
from typing import Any

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packageurl import PackageURL
from packaging.utils import canonicalize_name
from typer.testing import CliRunner

from mcp_gateway.cli.app import app
from mcp_gateway.errors import ConfigError
from mcp_gateway.sbom import GATEWAY, build_sbom, render_sbom, wheel_digests

# The gateway's direct dependencies an assessor asks about first (pycasbin is the distribution casbin comes in).
DIRECT = ("mcp", "pydantic", "httpx", "pyjwt", "pycasbin", "sqlmodel", "openai", "opentelemetry-sdk")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to resolve or connect fails the test: the document is built from local files only."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access during SBOM generation: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _document(wheelhouse: Path | None = None) -> dict[str, Any]:
    text = render_sbom(build_sbom(wheelhouse))
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    assert error is None, str(error)
    document: dict[str, Any] = json.loads(text)
    return document


def _by_name(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    everything = [document["metadata"]["component"], *document["components"]]
    return {canonicalize_name(component["name"]): component for component in everything}


def test_the_environment_sbom_validates_and_lists_the_gateway_and_its_direct_dependencies(no_network: None) -> None:
    document = _document()
    assert document["bomFormat"] == "CycloneDX"
    assert document["specVersion"] == "1.6"
    assert re.fullmatch(r"urn:uuid:[0-9a-f-]{36}", document["serialNumber"])
    subject = document["metadata"]["component"]
    assert (subject["name"], subject["type"]) == (GATEWAY, "application")
    assert subject["version"] == metadata.version(GATEWAY)
    components = _by_name(document)
    for name in DIRECT:
        assert components[name]["version"] == metadata.version(name), name
    # The gateway depends on each of them in the graph.
    edges = {entry["ref"]: set(entry.get("dependsOn", ())) for entry in document["dependencies"]}
    assert {components[name]["bom-ref"] for name in DIRECT} <= edges[subject["bom-ref"]]


def test_every_installed_distribution_is_a_component_once_with_a_well_formed_purl(no_network: None) -> None:
    document = _document()
    everything = [document["metadata"]["component"], *document["components"]]
    names = (dist.metadata.get_all("Name") or [""] for dist in metadata.distributions())
    installed = {canonicalize_name(name[0]) for name in names if name[0]}
    assert {canonicalize_name(component["name"]) for component in everything} == installed
    refs = [component["bom-ref"] for component in everything]
    assert len(refs) == len(set(refs))
    for component in everything:
        purl = PackageURL.from_string(component["purl"])
        assert (purl.type, purl.name) == ("pypi", canonicalize_name(component["name"]))
        assert purl.version == component["version"] == metadata.version(component["name"])
        assert purl.to_string() == component["purl"] == component["bom-ref"]
    # Without a wheelhouse there is nothing to hash.
    assert not any("hashes" in component for component in everything)


def test_licences_come_from_the_metadata_as_spdx_ids_or_expressions_where_declared(no_network: None) -> None:
    components = _by_name(_document())
    assert components[GATEWAY]["licenses"] == [{"license": {"id": "Apache-2.0", "acknowledgement": "declared"}}]
    assert components["pyjwt"]["licenses"][0]["license"]["id"] == "MIT"


def _dist_info(root: Path, folder: str, lines: list[str]) -> None:
    (root / folder).mkdir(parents=True)
    (root / folder / "METADATA").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _wheel(folder: Path, name: str, version: str, content: bytes) -> str:
    folder.mkdir(exist_ok=True)
    (folder / f"{name}-{version}-py3-none-any.whl").write_bytes(content)
    return hashlib.sha256(content).hexdigest()


def test_a_wheelhouse_adds_the_sha256_of_the_wheel_of_the_same_name_and_version(
    tmp_path: Path, no_network: None
) -> None:
    house = tmp_path / "wheelhouse"
    # Wheel file names spell the name their own way (PyJWT, typing_extensions): matched by canonical name.
    pyjwt = _wheel(house, "PyJWT", metadata.version("pyjwt"), b"pyjwt wheel")
    typing = _wheel(house, "typing_extensions", metadata.version("typing-extensions"), b"typing wheel")
    _wheel(house, "httpx", "0.0.1", b"another version of httpx")
    components = _by_name(_document(house))
    assert components["pyjwt"]["hashes"] == [{"alg": "SHA-256", "content": pyjwt}]
    assert components["typing-extensions"]["hashes"] == [{"alg": "SHA-256", "content": typing}]
    assert "hashes" not in components["httpx"]  # a wheel of another version vouches for nothing installed


def test_a_distribution_installed_from_a_folder_gets_no_wheel_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    # As pip records an editable or directory install: that wheel did not deliver what is installed.
    _dist_info(tmp_path, "checkout-1.0.dist-info", ["Name: checkout", "Version: 1.0"])
    (tmp_path / "checkout-1.0.dist-info" / "direct_url.json").write_text('{"url": "file:///src", "dir_info": {}}')
    _dist_info(tmp_path, "wheeled-1.0.dist-info", ["Name: wheeled", "Version: 1.0"])
    monkeypatch.syspath_prepend(str(tmp_path))
    house = tmp_path / "wheelhouse"
    _wheel(house, "checkout", "1.0", b"a wheel this checkout was not installed from")
    digest = _wheel(house, "wheeled", "1.0", b"the wheel it was installed from")
    components = _by_name(_document(house))
    assert "hashes" not in components["checkout"]
    assert components["wheeled"]["hashes"] == [{"alg": "SHA-256", "content": digest}]


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        pytest.param(None, "not a folder", id="missing"),
        pytest.param({}, "no wheels", id="empty"),
        pytest.param({"requirements.lock": b"x"}, "no wheels", id="no-wheel-only-other-files"),
        pytest.param({"evil.whl": b"x"}, "not a wheel's file name", id="not-a-wheel-name"),
        pytest.param({"a b-1.0-py3-none-any.whl": b"x"}, "not a wheel's file name", id="space-in-name"),
        pytest.param({"pyjwt-not.a.version-py3-none-any.whl": b"x"}, "not a wheel's file name", id="bad-version"),
    ],
)
def test_a_bad_wheelhouse_is_refused(tmp_path: Path, files: dict[str, bytes] | None, problem: str) -> None:
    house = tmp_path / "house"
    if files is not None:
        house.mkdir()
        for name, content in files.items():
            (house / name).write_bytes(content)
    with pytest.raises(ConfigError, match=problem):
        wheel_digests(house)


HOSTILE = [
    pytest.param(["Name: Evil_Pkg", "Version: 1.0+local.7", "License: " + "MIT " * 60], id="licence-text-in-field"),
    pytest.param(["Name: evil-pkg", "Version: 2", "License: UNKNOWN"], id="unknown-licence"),
    pytest.param(
        ["Name: evil-pkg", "Version: 3", "License-Expression: MIT OR (Apache-2.0 AND BSD-3-Clause)"], id="expr"
    ),
    pytest.param(["Name: evil-pkg", "Version: 4", "License-Expression: not ( an expression"], id="bad-expression"),
    pytest.param(["Name: evil-pkg", "Version: 5", "Classifier: License :: OSI Approved"], id="classifier-without-name"),
    pytest.param(["Name: evil-pkg", "Version: 6", 'Summary: "}], "x": {"<script>'], id="json-in-summary"),
    pytest.param(["Name: evil-pkg", "Version: 7", "Requires-Dist: ??? not a requirement"], id="bad-requirement"),
    pytest.param(["Name: evil-pkg", "Version: 8", "Requires-Dist: evil-pkg"], id="requires-itself"),
    pytest.param(["Name: evil-pkg", "Version: 9", "Requires-Dist: pyjwt; extra == 'x'"], id="extra-only-requirement"),
]


@pytest.mark.parametrize("lines", HOSTILE)
def test_hostile_metadata_still_makes_a_valid_document(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lines: list[str], no_network: None
) -> None:
    _dist_info(tmp_path, "evil_pkg-0.dist-info", lines)
    monkeypatch.syspath_prepend(str(tmp_path))
    document = _document()
    component = _by_name(document)["evil-pkg"]
    assert component["version"] == lines[1].removeprefix("Version: ")
    assert PackageURL.from_string(component["purl"]).name == "evil-pkg"
    edges = {entry["ref"]: entry.get("dependsOn", []) for entry in document["dependencies"]}
    assert edges[component["bom-ref"]] == []  # no self-loop, no edge an extra or bad line would have made
    for entry in component.get("licenses", []):
        assert len(entry.get("license", {}).get("name", "")) <= 100


def test_licence_text_pasted_into_the_field_falls_back_to_the_classifiers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = "Permission is hereby granted, free of charge,\n to any person obtaining a copy"
    lines = ["Name: pasted", "Version: 1", f"License: {text}", "Classifier: License :: OSI Approved :: MIT License"]
    _dist_info(tmp_path, "pasted-1.dist-info", lines)
    monkeypatch.syspath_prepend(str(tmp_path))
    licences = _by_name(_document())["pasted"]["licenses"]
    assert licences == [{"license": {"name": "MIT License", "acknowledgement": "declared"}}]


def test_the_first_distribution_on_the_path_is_the_one_listed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _dist_info(tmp_path, "PyJWT-0.0.1.dist-info", ["Name: PyJWT", "Version: 0.0.1"])
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _by_name(_document())["pyjwt"]["version"] == "0.0.1" == metadata.version("pyjwt")


def test_the_command_writes_a_valid_document_to_a_file_or_standard_output(tmp_path: Path, no_network: None) -> None:
    target = tmp_path / "sbom.cdx.json"
    house = tmp_path / "wheelhouse"
    digest = _wheel(house, "PyJWT", metadata.version("pyjwt"), b"pyjwt wheel")
    result = CliRunner().invoke(app, ["sbom", "--wheelhouse", str(house), "--output", str(target)])
    assert result.exit_code == 0, result.output
    written = target.read_text(encoding="utf-8")
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(written) is None
    assert _by_name(json.loads(written))["pyjwt"]["hashes"][0]["content"] == digest
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []  # no temporary left
    printed = CliRunner().invoke(app, ["sbom"])
    assert printed.exit_code == 0
    assert _by_name(json.loads(printed.stdout))[GATEWAY]["version"] == metadata.version(GATEWAY)


def test_the_command_exits_2_on_a_bad_wheelhouse_and_writes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "sbom.cdx.json"
    result = CliRunner().invoke(app, ["sbom", "--wheelhouse", str(tmp_path / "none"), "--output", str(target)])
    assert result.exit_code == 2
    assert "not a folder" in result.stderr
    assert not target.exists()
