"""A small OpenID Connect provider for the console's tests, speaking the real protocol on 127.0.0.1.

Discovery (``/.well-known/openid-configuration``), the authorization endpoint (a sign-in form: pick a user),
the token endpoint (authorization code with PKCE S256: a wrong or missing ``code_verifier`` is refused, a code
works once) and the JWKS. Access tokens are signed with a development key and carry the users' roles.

Run: ``python -m tests.oidc_provider --port N --key-dir DIR --audience AUD --users JSON``, where JSON maps a
subject to ``{"roles": [...], "amr": [...], "catalog": "internal"}``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import json
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from mcp_gateway.devkeys import ensure_dev_key


def build(issuer: str, key_dir: str, audience: str, users: dict[str, dict[str, Any]], client_id: str) -> Starlette:
    key = ensure_dev_key(Path(key_dir))
    codes: dict[str, dict[str, str]] = {}

    async def discovery(request: Request) -> Response:
        return JSONResponse(
            {
                "issuer": issuer,
                "authorization_endpoint": f"{issuer}/authorize",
                "token_endpoint": f"{issuer}/token",
                "jwks_uri": f"{issuer}/jwks",
                "response_types_supported": ["code"],
                "code_challenge_methods_supported": ["S256"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["EdDSA"],
            }
        )

    async def jwks(request: Request) -> Response:
        return JSONResponse(key.jwks())

    async def authorize_form(request: Request) -> Response:
        query = request.query_params
        if query.get("client_id") != client_id or query.get("code_challenge_method") != "S256":
            return HTMLResponse("unknown client or no PKCE", status_code=400)
        hidden = "".join(
            f'<input type="hidden" name="{html.escape(name)}" value="{html.escape(value)}">'
            for name, value in query.items()
        )
        options = "".join(f'<option value="{html.escape(user)}">{html.escape(user)}</option>' for user in users)
        body = (
            "<!doctype html><title>Test IdP</title><h1>Test IdP sign-in</h1>"
            f'<form method="post" action="/authorize">{hidden}'
            f'<label for="user">User</label><select id="user" name="user">{options}</select>'
            '<button type="submit">Sign in</button></form>'
        )
        return HTMLResponse(body)

    async def authorize(request: Request) -> Response:
        form = await request.form()
        user = str(form.get("user"))
        if user not in users:
            return HTMLResponse("no such user", status_code=400)
        if form.get("resource") != audience:  # RFC 8707: a token only for the one resource this IdP knows
            return HTMLResponse("invalid_target", status_code=400)
        code = secrets.token_urlsafe(24)
        codes[code] = {
            "user": user,
            "challenge": str(form.get("code_challenge")),
            "redirect_uri": str(form.get("redirect_uri")),
        }
        query = urlencode({"code": code, "state": str(form.get("state"))})
        return RedirectResponse(f"{form.get('redirect_uri')}?{query}", status_code=303)

    async def token(request: Request) -> Response:
        form = await request.form()
        grant = codes.pop(str(form.get("code")), None)
        if grant is None or form.get("client_id") != client_id or form.get("redirect_uri") != grant["redirect_uri"]:
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        verifier = str(form.get("code_verifier", ""))
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if not verifier or not secrets.compare_digest(challenge, grant["challenge"]):
            return JSONResponse({"error": "invalid_grant", "error_description": "PKCE"}, status_code=400)
        who = users[grant["user"]]
        access = key.mint(
            grant["user"],
            roles=who.get("roles", []),
            catalog=who.get("catalog", "internal"),
            issuer=issuer,
            audience=audience,
            ttl=int(who.get("ttl", 300)),
            amr=who.get("amr", ["pwd"]),
        )
        return JSONResponse({"access_token": access, "token_type": "Bearer", "expires_in": 300})

    return Starlette(
        routes=[
            Route("/.well-known/openid-configuration", discovery),
            Route("/jwks", jwks),
            Route("/authorize", authorize_form, methods=["GET"]),
            Route("/authorize", authorize, methods=["POST"]),
            Route("/token", token, methods=["POST"]),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key-dir", required=True)
    parser.add_argument("--audience", required=True)
    parser.add_argument("--users", required=True)
    parser.add_argument("--client-id", default="console")
    args = parser.parse_args()
    issuer = f"http://127.0.0.1:{args.port}"
    app = build(issuer, args.key_dir, args.audience, json.loads(args.users), args.client_id)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
