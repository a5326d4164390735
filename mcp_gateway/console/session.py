"""Console sessions: a random id in an HttpOnly, SameSite=Strict cookie, bound to the token it was made from.

The session keeps the operator's token and re-verifies it on every request (the verifier caches), so a session
never outlives its token, a rotated-out key ends it, and it ends after ``console.session_idle`` seconds without
a request. Each session has its own CSRF token, which every state-changing form carries. Sessions live in this
process: behind a load balancer, keep /console on one replica per client (or sign in again).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from mcp_gateway.errors import UnauthenticatedError
from mcp_gateway.identity import JwtVerifier, Principal

__all__ = ["COOKIE", "LOGIN_COOKIE", "PendingLogin", "Session", "SessionStore"]

COOKIE = "mcpgw_console"
LOGIN_COOKIE = "mcpgw_console_login"  # the OpenID Connect state, for the one redirect back from the IdP
_LOGIN_TTL = 600.0
_MAX_PENDING = 1024


@dataclass(slots=True)
class Session:
    """One signed-in operator."""

    id: str
    token: str
    principal: Principal
    csrf: str
    last_seen: float

    def csrf_matches(self, sent: str | None) -> bool:
        return sent is not None and hmac.compare_digest(sent.encode(), self.csrf.encode())


@dataclass(frozen=True, slots=True)
class PendingLogin:
    """An authorization request sent to the IdP and not yet answered."""

    state: str
    verifier: str  # the PKCE code_verifier
    started: float

    @property
    def challenge(self) -> str:
        digest = hashlib.sha256(self.verifier.encode()).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass
class SessionStore:
    """Sessions by id, bounded in number (the oldest goes first), idle ones ended."""

    verifier: JwtVerifier
    idle: float
    capacity: int
    clock: Callable[[], float] = time.time
    _sessions: OrderedDict[str, Session] = field(default_factory=OrderedDict)
    _pending: OrderedDict[str, PendingLogin] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, token: str) -> Session:
        """A new session for ``token``.

        Raises:
            UnauthenticatedError: the verifier refuses the token.
        """
        principal = self.verifier.verify(token)
        session = Session(secrets.token_urlsafe(32), token, principal, secrets.token_urlsafe(32), self.clock())
        with self._lock:
            self._sessions[session.id] = session
            while len(self._sessions) > self.capacity:
                self._sessions.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id, its token verified again now; ``None`` if there is none."""
        if not session_id:
            return None
        now = self.clock()
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if now - session.last_seen > self.idle:
                del self._sessions[session_id]
                return None
        try:
            session.principal = self.verifier.verify(session.token)
        except UnauthenticatedError:
            self.end(session_id)
            return None
        session.last_seen = now
        return session

    def end(self, session_id: str | None) -> None:
        with self._lock:
            self._sessions.pop(session_id or "", None)

    def max_age(self, session: Session) -> int:
        """Seconds the cookie may live: no later than the token's expiry, nor the idle limit."""
        return max(0, min(int(session.principal.expires_at - self.clock()), int(self.idle)))

    def begin_login(self) -> PendingLogin:
        pending = PendingLogin(secrets.token_urlsafe(32), secrets.token_urlsafe(64), self.clock())
        with self._lock:
            self._pending[pending.state] = pending
            while len(self._pending) > _MAX_PENDING:
                self._pending.popitem(last=False)
        return pending

    def finish_login(self, state: str | None, cookie_state: str | None) -> PendingLogin | None:
        """The pending login for ``state``, once: only if the browser that began it returns it, in time."""
        if not state or not cookie_state or not hmac.compare_digest(state.encode(), cookie_state.encode()):
            return None
        with self._lock:
            pending = self._pending.pop(state, None)
        if pending is None or self.clock() - pending.started > _LOGIN_TTL:
            return None
        return pending
