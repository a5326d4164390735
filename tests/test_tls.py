"""Inbound TLS and mutual TLS, with a CA generated here: real gateway processes, a real MCP client over https."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

from mcp_gateway.config import load_settings
from mcp_gateway.errors import ConfigError
from mcp_gateway.transports.tls import tls_context
from tests.conftest import Deployment, ExampleApi, free_port, make_deployment, stop

NOW = datetime.datetime.now(datetime.UTC)


@dataclass
class Issued:
    cert: Path
    key: Path


class Authority:
    """A CA that issues server and client certificates into ``folder``."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.certificate = (
            self._builder(subject, self.key.public_key(), subject)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )  # keyCertSign, cRLSign
            .sign(self.key, hashes.SHA256())
        )
        self.bundle = folder / f"{name}-ca.pem"
        self.bundle.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))

    def _builder(self, subject: x509.Name, public_key: Any, issuer: x509.Name) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(minutes=5))
            .not_valid_after(NOW + datetime.timedelta(days=1))
        )

    def issue(self, common_name: str, *, server: bool) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = self._builder(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]),
            key.public_key(),
            self.certificate.subject,
        ).add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        if server:
            names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
            usage = ExtendedKeyUsageOID.SERVER_AUTH
        else:
            usage = ExtendedKeyUsageOID.CLIENT_AUTH
        certificate = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False).sign(
            self.key, hashes.SHA256()
        )
        issued = Issued(self.folder / f"{common_name}.pem", self.folder / f"{common_name}.key")
        issued.cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        issued.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        issued.key.chmod(0o600)
        return issued

    def trusting(self, client: Issued | None = None) -> ssl.SSLContext:
        """A client context that trusts this CA (and presents ``client``, if given)."""
        context = ssl.create_default_context(cafile=str(self.bundle))
        if client is not None:
            context.load_cert_chain(client.cert, client.key)
        return context


@dataclass
class TlsGateway:
    deployment: Deployment
    url: str
    audience: str
    metrics: str

    def token(self, subject: str = "alice") -> str:
        return self.deployment.mint(subject, ("support",), "internal", audience=self.audience)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Authority, Authority, Issued, Issued, Issued]:
    folder = tmp_path_factory.mktemp("pki")
    ca, stranger = Authority(folder, "gateway-test"), Authority(folder, "stranger")
    return (
        ca,
        stranger,
        ca.issue("gateway", server=True),
        ca.issue("agent", server=False),
        stranger.issue("impostor", server=False),
    )


def _serve(root: Path, api: ExampleApi, key: Any, ca: Authority, server: Issued, mutual: bool) -> Iterator[TlsGateway]:
    deployment = make_deployment(root, api, key)
    audience = f"https://127.0.0.1:{deployment.port}/mcp"
    config = yaml.safe_load(deployment.config.read_text())
    config["identity"]["audience"] = audience
    config["http"].update({"tls_cert_file": str(server.cert), "tls_key_file": str(server.key)})
    if mutual:
        config["http"]["tls_client_ca_file"] = str(ca.bundle)
    metrics_port = free_port()
    config["metrics"] = {"enabled": True, "port": metrics_port}
    deployment.config.write_text(yaml.safe_dump(config))
    process = subprocess.Popen(
        [sys.executable, "-m", "mcp_gateway", "serve", "--transport", "streamable-http"],
        env=deployment.env(),
        cwd=deployment.root,
    )
    url = f"https://127.0.0.1:{deployment.port}"
    context = ca.trusting(ca.issue("probe", server=False) if mutual else None)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, f"the gateway exited with {process.returncode}"
            try:
                if httpx.get(f"{url}/healthz", verify=context, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the gateway did not come up over https"
                time.sleep(0.1)
        yield TlsGateway(deployment, url, audience, f"https://127.0.0.1:{metrics_port}/metrics")
    finally:
        stop(process)


@pytest.fixture(scope="module")
def tls_gateway(
    tmp_path_factory: pytest.TempPathFactory, example_api: ExampleApi, dev_key: Any, pki: Any
) -> Iterator[TlsGateway]:
    ca, _, server, _, _ = pki
    yield from _serve(tmp_path_factory.mktemp("tls"), example_api, dev_key, ca, server, mutual=False)


@pytest.fixture(scope="module")
def mtls_gateway(
    tmp_path_factory: pytest.TempPathFactory, example_api: ExampleApi, dev_key: Any, pki: Any
) -> Iterator[TlsGateway]:
    ca, _, server, _, _ = pki
    yield from _serve(tmp_path_factory.mktemp("mtls"), example_api, dev_key, ca, server, mutual=True)


async def _call_over_https(gateway: TlsGateway, context: ssl.SSLContext) -> dict[str, Any] | None:
    headers = {"Authorization": f"Bearer {gateway.token()}"}
    async with (
        httpx2.AsyncClient(verify=context, headers=headers, timeout=20) as http,
        Client(streamable_http_client(f"{gateway.url}/mcp", http_client=http), read_timeout_seconds=20) as client,
    ):
        assert "crm.customer_lookup" in [tool.name for tool in (await client.list_tools()).tools]
        result = await client.call_tool("crm.customer_lookup", {"customer_id": "c-100"})
        return result.structured_content


async def test_a_real_mcp_client_calls_over_https_with_the_ca_trusted(tls_gateway: TlsGateway, pki: Any) -> None:
    ca = pki[0]
    content = await _call_over_https(tls_gateway, ca.trusting())
    assert content is not None
    assert content["name"] == "Ada Lovelace"


def test_the_metadata_and_the_challenge_name_the_https_origin(tls_gateway: TlsGateway, pki: Any) -> None:
    context = pki[0].trusting()
    metadata_url = f"{tls_gateway.url}/.well-known/oauth-protected-resource/mcp"
    metadata = httpx.get(metadata_url, verify=context).json()
    assert metadata["resource"] == tls_gateway.audience
    assert metadata["resource"].startswith("https://")
    challenge = httpx.post(f"{tls_gateway.url}/mcp", verify=context, content=b"{}")
    assert challenge.status_code == 401
    assert f'resource_metadata="{metadata_url}"' in challenge.headers["www-authenticate"]


def test_plain_http_on_the_tls_port_is_refused(tls_gateway: TlsGateway) -> None:
    plain = tls_gateway.url.replace("https://", "http://")
    with pytest.raises(httpx.HTTPError):  # the handshake fails on the first byte: the connection is dropped
        httpx.get(f"{plain}/healthz", timeout=5)


def test_a_client_trusting_another_ca_refuses_the_gateway(tls_gateway: TlsGateway, pki: Any) -> None:
    stranger = pki[1]
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{tls_gateway.url}/healthz", verify=stranger.trusting())


def test_mutual_tls_refuses_a_client_without_a_certificate_or_with_a_foreign_one(
    mtls_gateway: TlsGateway, pki: Any
) -> None:
    ca, _, _, _, impostor = pki
    for context in (ca.trusting(), ca.trusting(impostor)):
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{mtls_gateway.url}/healthz", verify=context, timeout=5).raise_for_status()


async def test_mutual_tls_accepts_a_client_certificate_from_the_ca(mtls_gateway: TlsGateway, pki: Any) -> None:
    ca, _, _, agent, _ = pki
    assert httpx.get(f"{mtls_gateway.url}/healthz", verify=ca.trusting(agent)).status_code == 200
    content = await _call_over_https(mtls_gateway, ca.trusting(agent))
    assert content is not None
    assert content["id"] == "c-100"


def test_the_metrics_listener_serves_with_the_same_certificate_and_client_ca(
    tls_gateway: TlsGateway, mtls_gateway: TlsGateway, pki: Any
) -> None:
    ca, _, _, agent, _ = pki
    assert "mcp_gateway_calls_total" in httpx.get(tls_gateway.metrics, verify=ca.trusting()).text
    with pytest.raises(httpx.HTTPError):
        httpx.get(tls_gateway.metrics.replace("https://", "http://"), timeout=5)
    with pytest.raises(httpx.HTTPError):
        httpx.get(mtls_gateway.metrics, verify=ca.trusting(), timeout=5).raise_for_status()
    assert httpx.get(mtls_gateway.metrics, verify=ca.trusting(agent)).status_code == 200


def _config(deployment: Deployment, **http: Any) -> Path:
    config = yaml.safe_load(deployment.config.read_text())
    config["identity"]["audience"] = "https://gateway.example/mcp"
    config["http"].update(http)
    deployment.config.write_text(yaml.safe_dump(config))
    return deployment.config


def test_a_certificate_without_its_key_is_refused_at_load(deployment: Deployment, pki: Any) -> None:
    server = pki[2]
    with pytest.raises(ConfigError, match=r"set both http\.tls_cert_file and http\.tls_key_file"):
        load_settings(_config(deployment, tls_cert_file=str(server.cert)))
    with pytest.raises(ConfigError, match="tls_client_ca_file"):
        load_settings(_config(deployment, tls_cert_file=None, tls_client_ca_file=str(pki[0].bundle)))


def test_an_unreadable_file_is_named_at_load(deployment: Deployment, pki: Any, tmp_path: Path) -> None:
    server = pki[2]
    missing = tmp_path / "nowhere.key"
    with pytest.raises(ConfigError) as refused:
        load_settings(_config(deployment, tls_cert_file=str(server.cert), tls_key_file=str(missing)))
    assert "http.tls_key_file" in str(refused.value)
    assert str(missing) in str(refused.value)


def test_with_tls_the_audience_must_be_https(deployment: Deployment, pki: Any) -> None:
    server = pki[2]
    path = _config(deployment, tls_cert_file=str(server.cert), tls_key_file=str(server.key))
    config = yaml.safe_load(path.read_text())
    config["identity"]["audience"] = f"http://127.0.0.1:{deployment.port}/mcp"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"identity\.audience must be an https:// URL"):
        load_settings(path)


def test_a_key_that_is_not_the_certificates_or_not_pem_is_named(deployment: Deployment, pki: Any) -> None:
    ca, _, server, agent, _ = pki
    settings = load_settings(_config(deployment, tls_cert_file=str(server.cert), tls_key_file=str(agent.key)))
    with pytest.raises(ConfigError, match="cannot load the certificate and its key") as refused:
        tls_context(settings.http)
    assert str(server.cert) in str(refused.value)
    settings = load_settings(
        _config(deployment, tls_key_file=str(server.key), tls_client_ca_file=str(server.key))  # a key, not a CA
    )
    with pytest.raises(ConfigError, match=r"http\.tls_client_ca_file"):
        tls_context(settings.http)
    good = load_settings(_config(deployment, tls_client_ca_file=str(ca.bundle)))
    context = tls_context(good.http)
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_config_check_names_a_key_that_does_not_fit_its_certificate(deployment: Deployment, pki: Any) -> None:
    from typer.testing import CliRunner

    from mcp_gateway.cli.app import app

    _, _, server, agent, _ = pki
    config = _config(deployment, tls_cert_file=str(server.cert), tls_key_file=str(agent.key))
    result = CliRunner().invoke(app, ["config", "check", "--config", str(config)], env=deployment.env())
    assert result.exit_code == 2
    assert str(server.cert) in "".join(result.output.split())  # rich may wrap a long path
    good = _config(deployment, tls_key_file=str(server.key))
    result = CliRunner().invoke(app, ["config", "check", "--config", str(good)], env=deployment.env())
    assert result.exit_code == 0, result.output
