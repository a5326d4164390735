"""Inbound TLS: the server context for ``http.tls_cert_file`` / ``http.tls_key_file``, and mutual TLS when
``http.tls_client_ca_file`` is set (a client certificate from that CA is then required on every connection).

The context is built here rather than by uvicorn so that a bad file stops the start with a ``ConfigError`` naming
it (``config check`` builds it too), and so that its floor is explicit: TLS 1.2 at least, forward-secret AEAD
ciphers only for TLS 1.2 (TLS 1.3's suites are all of that kind), no compression, no renegotiation.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

from mcp_gateway.config import HttpSettings
from mcp_gateway.errors import ConfigError

__all__ = ["TLS12_CIPHERS", "tls_context", "uvicorn_tls_options"]

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS"


def tls_context(http: HttpSettings) -> ssl.SSLContext | None:
    """The server TLS context for ``http``'s files; None when TLS is not configured.

    Raises:
        ConfigError: a file cannot be read, is not PEM of the right kind, or the key does not match the certificate;
            the message names the setting and the file.
    """
    if http.tls_cert_file is None or http.tls_key_file is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        context.load_cert_chain(http.tls_cert_file, http.tls_key_file)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"http.tls_cert_file {http.tls_cert_file} / http.tls_key_file {http.tls_key_file}: cannot load the "
            f"certificate and its key: {_why(exc)}"
        ) from exc
    if http.tls_client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(http.tls_client_ca_file))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"http.tls_client_ca_file {http.tls_client_ca_file}: cannot load: {_why(exc)}") from exc
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def uvicorn_tls_options(http: HttpSettings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config``: the context of ``tls_context``, or none for plain HTTP.

    Raises:
        ConfigError: see ``tls_context``.
    """
    context = tls_context(http)
    if context is None:
        return {}

    def factory(config: object, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        return context

    return {"ssl_context_factory": factory}


def _why(exc: ssl.SSLError | OSError) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return exc.strerror or str(exc)
