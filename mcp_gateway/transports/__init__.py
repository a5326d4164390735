"""Transports: the MCP SDK's server around the core, served over stdio, SSE and streamable HTTP.

``handlers`` turns SDK requests into calls on the transport-free :class:`~mcp_gateway.gateway.Gateway`;
``http`` serves it as an OAuth 2.1 resource server, with ``sse`` (the SSE endpoints, their backlog bounded) and
``guards`` (the HTTP protocol that bounds slow clients); ``stdio`` serves one client with a token from the
environment; ``background`` runs the loops every transport needs while it serves (reload, checkpoints).
Nothing below this package imports it.
"""

__all__: list[str] = []
