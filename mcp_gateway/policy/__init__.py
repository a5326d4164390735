"""Tool-call policy: Casbin's model and file format, compiled into an index that decides in microseconds.

Security teams edit ``policies/*.csv`` (read in name order) against the shipped ``policies/model.conf``::

    p, role:analyst, internal, crm.*, call, allow
    p, user:mallory, internal, *, call, deny
    g, user:alice, role:analyst
    g, role:analyst, role:reader

A caller's effective subjects are ``user:<sub>``, ``role:<r>`` for each token role, and every role reachable
from those through ``g`` lines. Deny wins, and the default is deny (see :mod:`.snapshot`).

* :mod:`.snapshot`: :class:`PolicySnapshot`, the compiled rules and the decision hot path.
* :mod:`.files`: :func:`load_policy` (strict parsing, failing closed with a :class:`ConfigError` naming file
  and line) and :func:`casbin_enforcer` over the same files.
* :mod:`.engine`: :class:`PolicyEngine`, the snapshot in force and its hot reload.
* :mod:`.reference`: Casbin itself, the only module that imports it; never on the request path.
* :mod:`.tools`: lint, effective-access diff and decision tests for the people who edit the CSVs.
"""

from __future__ import annotations

from mcp_gateway.policy.engine import PolicyEngine, ReloadResult
from mcp_gateway.policy.files import casbin_enforcer, load_policy
from mcp_gateway.policy.snapshot import (
    ACTION,
    DEFAULT_DENY,
    MAX_ROLE_DEPTH,
    Decision,
    Explanation,
    PolicySnapshot,
    Rule,
)

__all__ = [
    "ACTION",
    "DEFAULT_DENY",
    "MAX_ROLE_DEPTH",
    "Decision",
    "Explanation",
    "PolicyEngine",
    "PolicySnapshot",
    "ReloadResult",
    "Rule",
    "casbin_enforcer",
    "load_policy",
]
