"""The one way out: every outbound HTTP connection the gateway makes is built here.

Two HTTP stacks leave the process: ``httpx`` (REST tools, the JWKS fetch, and telemetry export, whose
``requests`` session hands every request to a guarded ``httpx`` client) and ``httpx2`` (the OpenAI client for
model tools; ``mcp`` 2.x uses it too). Both get the same guard:

* only origins on ``egress.allow`` (scheme, host and port) are requested; anything else is refused before a
  socket is opened;
* redirects are never followed, and proxy environment variables, ``.netrc`` and ``SSL_CERT_*`` are ignored
  (``trust_env=False``);
* the host name is resolved once per connection, every address it resolves to is checked (a name that
  resolves to an unspecified, multicast, link-local or reserved address, such as a cloud metadata endpoint,
  is refused), and the socket is opened to exactly the address that was checked. There is no second lookup
  between check and connect, so DNS rebinding cannot swap the address. A literal IP on the allowlist is
  connected to as written. TLS still verifies the certificate against the host name;
* for model clients, only an allowlist of request headers leaves (the OpenAI client adds headers from
  ``OPENAI_*`` variables of its own accord; see docs/architecture.md).

Build each client once and reuse it: a client carries the connection pool.

The guard is a package: ``addresses`` decides where a connection may go, ``clients`` builds the guarded
``httpx`` and ``httpx2`` clients over one pinned transport, and ``blocking`` holds the two synchronous users
(the start-up fetch and the telemetry exporter's ``requests`` session).
"""

from mcp_gateway.egress.addresses import AddressPinner, Resolver, SyncResolver, system_resolver
from mcp_gateway.egress.blocking import guarded_get, guarded_requests_session
from mcp_gateway.egress.clients import (
    MODEL_HEADERS,
    EgressDeniedError,
    Httpx2EgressDeniedError,
    guarded_async_client,
    guarded_client,
    guarded_httpx2_client,
)

__all__ = [
    "MODEL_HEADERS",
    "AddressPinner",
    "EgressDeniedError",
    "Httpx2EgressDeniedError",
    "Resolver",
    "SyncResolver",
    "guarded_async_client",
    "guarded_client",
    "guarded_get",
    "guarded_httpx2_client",
    "guarded_requests_session",
    "system_resolver",
]
