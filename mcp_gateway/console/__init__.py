"""The web console: server-rendered pages for security teams, approvers and assessors, inside the gateway.

``app`` holds sign-in, sessions and the guard; ``pages`` the read pages; ``views`` what they show; ``render``
the templates and the security headers; ``oidc`` the IdP sign-in; ``session`` the session store.
"""

__all__: list[str] = []
