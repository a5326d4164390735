"""Console sign-in with the organisation's IdP: OpenID Connect authorization code with PKCE (S256).

The discovery document and the token endpoint are reached through the egress guard, so the issuer's origin
and its token endpoint's must be on ``egress.allow``; the browser alone talks to the authorization endpoint.
The access token the IdP returns is the session's token: it is verified exactly like a caller's (issuer,
audience, keys from the configured JWKS), which is why the authorization request names this gateway as the
``resource`` (RFC 8707). The ``state`` binds the answer to the browser that asked; PKCE binds the code to this
gateway's request, so an intercepted code is useless.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx

from mcp_gateway.config import Settings
from mcp_gateway.console.session import PendingLogin
from mcp_gateway.egress import guarded_async_client
from mcp_gateway.errors import ConfigError, UnauthenticatedError

__all__ = ["OidcClient"]

_MAX_DOCUMENT = 65_536


@dataclass(frozen=True, slots=True)
class _Endpoints:
    authorization: str
    token: str


class OidcClient:
    """The console's OpenID Connect relying party (one per process)."""

    def __init__(self, settings: Settings, redirect_uri: str) -> None:
        client_id = settings.console.oidc_client_id
        if client_id is None:
            raise ConfigError("console.oidc_client_id is not set")
        self._client_id = client_id
        self._secret_env = settings.console.oidc_client_secret_env
        self._issuer = settings.identity.issuer.rstrip("/")
        self._resource = settings.identity.audience
        self._redirect_uri = redirect_uri
        self._egress = settings.egress
        self._endpoints: _Endpoints | None = None

    async def _json(self, client: httpx.AsyncClient, response: httpx.Response, what: str) -> dict[str, Any]:
        if response.status_code != 200 or len(response.content) > _MAX_DOCUMENT:
            raise UnauthenticatedError(f"sign-in failed: {what}: HTTP {response.status_code}", reason="sign-in")
        try:
            document = response.json()
        except ValueError as exc:
            raise UnauthenticatedError(f"sign-in failed: {what}: not JSON", reason="sign-in") from exc
        if not isinstance(document, dict):
            raise UnauthenticatedError(f"sign-in failed: {what}: not a JSON object", reason="sign-in")
        return document

    async def _discover(self, client: httpx.AsyncClient) -> _Endpoints:
        if self._endpoints is None:
            url = f"{self._issuer}/.well-known/openid-configuration"
            document = await self._json(client, await client.get(url), "discovery")
            if str(document.get("issuer", "")).rstrip("/") != self._issuer:
                raise UnauthenticatedError("sign-in failed: discovery: the issuer does not match", reason="sign-in")
            endpoints = _Endpoints(str(document.get("authorization_endpoint", "")), str(document.get("token_endpoint")))
            for url in (endpoints.authorization, endpoints.token):
                if urlsplit(url).scheme not in ("https", "http") or not urlsplit(url).hostname:
                    raise UnauthenticatedError(f"sign-in failed: discovery: bad endpoint {url!r}", reason="sign-in")
            self._endpoints = endpoints
        return self._endpoints

    async def authorization_url(self, pending: PendingLogin) -> str:
        """Where to send the browser to sign in.

        Raises:
            UnauthenticatedError: the IdP's discovery document cannot be read (or is not this issuer's).
        """
        async with guarded_async_client(self._egress, max_connections=4) as client:
            endpoints = await self._discover(client)
        query = {
            "response_type": "code",
            "client_id": self._client_id,
            "redirect_uri": self._redirect_uri,
            "scope": "openid",
            "state": pending.state,
            "code_challenge": pending.challenge,
            "code_challenge_method": "S256",
            "resource": self._resource,
        }
        separator = "&" if "?" in endpoints.authorization else "?"
        return f"{endpoints.authorization}{separator}{urlencode(query)}"

    async def exchange(self, code: str, pending: PendingLogin) -> str:
        """The access token for ``code`` (not yet verified: the session store verifies it).

        Raises:
            UnauthenticatedError: the token endpoint refuses or answers something else than a token.
        """
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self._redirect_uri,
            "client_id": self._client_id,
            "code_verifier": pending.verifier,
            "resource": self._resource,
        }
        if self._secret_env is not None:
            secret = os.environ.get(self._secret_env)
            if not secret:
                raise UnauthenticatedError(f"sign-in failed: ${self._secret_env} is not set", reason="sign-in")
            form["client_secret"] = secret
        async with guarded_async_client(self._egress, max_connections=4) as client:
            endpoints = await self._discover(client)
            answer = await self._json(client, await client.post(endpoints.token, data=form), "token endpoint")
        token = answer.get("access_token")
        if not isinstance(token, str) or not token:
            raise UnauthenticatedError("sign-in failed: token endpoint: no access_token", reason="sign-in")
        return token
