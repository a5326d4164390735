"""The console's routes under ``/console``: sign-in, sessions and the guard every page goes through.

Sign-in is by OpenID Connect (``console.oidc_client_id``) or, where ``console.token_sign_in`` allows, by pasting
a token; either way the token is verified exactly like a caller's and its roles decide what the operator may
do: an auditor role reads, an approver role approves. Every state-changing request is a POST carrying the
session's CSRF token, from this origin (a foreign ``Origin`` is refused before anything else).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import anyio
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_gateway.config import Settings
from mcp_gateway.console.oidc import OidcClient
from mcp_gateway.console.render import SECURITY_HEADERS, asset, page
from mcp_gateway.console.session import COOKIE, LOGIN_COOKIE, Session, SessionStore
from mcp_gateway.errors import UnauthenticatedError
from mcp_gateway.gateway import Gateway
from mcp_gateway.identity import JwtVerifier

__all__ = ["Console", "console_mount"]

Handler = Callable[[Request, Session], Awaitable[Response]]
_MAX_FORM_BYTES = 65_536


class Console:
    """The console of one gateway process: its sessions, its sign-in client and its role checks."""

    def __init__(self, settings: Settings, gateway: Gateway, verifier: JwtVerifier) -> None:
        self.settings = settings
        self.gateway = gateway
        console = settings.console
        self.sessions = SessionStore(verifier, float(console.session_idle), console.max_sessions)
        base = settings.http.base_url
        self.origin = f"{urlsplit(base).scheme}://{urlsplit(base).netloc}"
        self.secure = urlsplit(base).scheme == "https"
        port = settings.http.port
        self.hosts = frozenset({urlsplit(base).netloc.lower(), f"127.0.0.1:{port}", f"localhost:{port}"})
        self.oidc = OidcClient(settings, f"{base}/console/callback") if console.oidc_client_id else None
        self.approver_roles = frozenset(settings.breakglass.approver_roles)
        self.reader_roles = frozenset(console.auditor_roles) | self.approver_roles

    # -- roles ----------------------------------------------------------------------------------------------

    def can_read(self, session: Session) -> bool:
        return bool(self.reader_roles & set(session.principal.roles))

    def can_approve(self, session: Session) -> bool:
        return bool(self.approver_roles & set(session.principal.roles))

    # -- the guard ------------------------------------------------------------------------------------------

    def foreign(self, request: Request) -> bool:
        """A request a page of another origin sent (browsers send ``Origin`` on every cross-origin POST)."""
        origin = request.headers.get("origin")
        return origin is not None and not hmac.compare_digest(origin.encode(), self.origin.encode())

    def guard(self, handler: Handler, *, post: bool = False) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` behind the guard: a live session with a console role, and for a POST, this origin and
        the session's CSRF token."""

        async def guarded(request: Request) -> Response:
            if post and self.foreign(request):
                return self.refusal(request, None, 403, "This request came from another site and was refused.")
            session = self.sessions.get(request.cookies.get(COOKIE))
            if session is None:
                return RedirectResponse("/console/login", status_code=303, headers=SECURITY_HEADERS)
            if not self.can_read(session):
                roles = ", ".join(sorted(self.reader_roles))
                return self.refusal(request, session, 403, f"Your token carries none of the console's roles ({roles}).")
            if post:
                form = await request.form(max_fields=64, max_part_size=_MAX_FORM_BYTES)
                sent = form.get("csrf")
                if not session.csrf_matches(sent if isinstance(sent, str) else None):
                    return self.refusal(request, session, 403, "The form's CSRF token is missing or wrong.")
            return await handler(request, session)

        return guarded

    def refusal(self, request: Request, session: Session | None, status: int, message: str) -> Response:
        return page("error.html", status, console=self, session=session, message=message)

    def set_session_cookie(self, response: Response, session: Session) -> None:
        response.set_cookie(
            COOKIE,
            session.id,
            max_age=self.sessions.max_age(session),
            path="/console",
            secure=self.secure,
            httponly=True,
            samesite="strict",
        )

    # -- sign-in --------------------------------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        return page("login.html", console=self, session=None, message=None)

    async def login_with_token(self, request: Request) -> Response:
        if self.foreign(request):
            return self.refusal(request, None, 403, "This request came from another site and was refused.")
        if not self.settings.console.token_sign_in:
            return self.refusal(request, None, 403, "Signing in with a token is switched off here.")
        form = await request.form(max_fields=8, max_part_size=_MAX_FORM_BYTES)
        token = form.get("token")
        return await self._signed_in(str(token).strip() if isinstance(token, str) else "")

    async def _signed_in(self, token: str, *, interstitial: bool = False) -> Response:
        try:
            session = await anyio.to_thread.run_sync(self.sessions.start, token)
        except UnauthenticatedError as exc:
            message = f"Sign-in refused: the token is not valid here ({exc.reason})."
            return page("login.html", 401, console=self, session=None, message=message)
        if interstitial:
            # Back from the IdP, the browser is in a navigation another site began, so it would not send a
            # SameSite=Strict cookie on a redirect; a page of ours that moves on starts a navigation of ours.
            response = page("signed_in.html", console=self, session=session)
        else:
            response = RedirectResponse("/console/access", status_code=303, headers=SECURITY_HEADERS)
        self.set_session_cookie(response, session)
        response.delete_cookie(LOGIN_COOKIE, path="/console")
        return response

    async def login_with_idp(self, request: Request) -> Response:
        if self.oidc is None:
            return self.refusal(request, None, 404, "Sign-in with the IdP is not configured here.")
        pending = self.sessions.begin_login()
        try:
            target = await self.oidc.authorization_url(pending)
        except UnauthenticatedError:
            return self.refusal(request, None, 502, "The IdP's discovery document could not be read.")
        response = RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)
        # Lax, not Strict: it must come back on the IdP's redirect, a top-level navigation from another site.
        response.set_cookie(
            LOGIN_COOKIE, pending.state, max_age=600, path="/console", secure=self.secure, httponly=True, samesite="lax"
        )
        return response

    async def callback(self, request: Request) -> Response:
        pending = self.sessions.finish_login(request.query_params.get("state"), request.cookies.get(LOGIN_COOKIE))
        code = request.query_params.get("code")
        if self.oidc is None or pending is None or not code:
            return self.refusal(request, None, 400, "This sign-in answer does not belong to a sign-in begun here.")
        try:
            token = await self.oidc.exchange(code, pending)
        except UnauthenticatedError:
            return self.refusal(request, None, 401, "The IdP refused the sign-in.")
        return await self._signed_in(token, interstitial=True)

    async def logout(self, request: Request, session: Session) -> Response:
        self.sessions.end(session.id)
        response = RedirectResponse("/console/login", status_code=303, headers=SECURITY_HEADERS)
        response.delete_cookie(COOKIE, path="/console")
        return response


def console_mount(settings: Settings, gateway: Gateway, verifier: JwtVerifier) -> Mount:
    """The console's routes, to mount on the gateway's HTTP app."""
    from mcp_gateway.console.pages import page_routes

    console = Console(settings, gateway, verifier)

    async def home(request: Request) -> Response:
        return RedirectResponse("/console/access", status_code=303, headers=SECURITY_HEADERS)

    async def static(request: Request) -> Response:
        return asset(str(request.path_params["name"]))

    routes = [
        Route("/", home, methods=["GET"]),
        Route("/static/{name}", static, methods=["GET"]),
        Route("/login", console.login_form, methods=["GET"]),
        Route("/login", console.login_with_token, methods=["POST"]),
        Route("/login/idp", console.login_with_idp, methods=["GET"]),
        Route("/callback", console.callback, methods=["GET"]),
        Route("/logout", console.guard(console.logout, post=True), methods=["POST"]),
        *page_routes(console),
    ]
    return Mount("/console", app=_HostGuard(Router(routes=routes), console.hosts))


class _HostGuard:
    """Answers only requests addressed to this gateway by name (DNS rebinding: a page of another site that
    resolves its own name to this address must not reach the console with the operator's cookie)."""

    def __init__(self, app: ASGIApp, hosts: frozenset[str]) -> None:
        self._app = app
        self._hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1").lower()
            if host not in self._hosts:
                response = Response("misdirected request", status_code=421, headers=SECURITY_HEADERS)
                await response(scope, receive, send)
                return
        await self._app(scope, receive, send)
