"""``mcp-gateway doctor``: the air-gap self-test an operator runs before go-live and an assessor can re-run.

Each check is a row: what was checked, on what, pass / warn / fail, and why. A fail means the deployment does
not hold a guarantee the gateway makes (an endpoint outside the boundary, a key others can read, a plain-HTTP
port on a network interface); a warn means a choice the operator should be able to defend (durability at
``process`` level, long token lifetimes, an allowlist entry no endpoint uses). ``doctor`` exits 1 on any fail.

The checks that concern the egress guard are demonstrations, not readings of the configuration: the refusal of
an address off the allowlist and the indifference to proxy variables are shown by sending real requests
through the gateway's own clients to listeners this process opens on 127.0.0.1 (``doctor.probes``).

* ``doctor.endpoints``  every configured endpoint: on ``egress.allow``, resolving only to allowed addresses
* ``doctor.probes``     the guard refuses what is off the list; proxy variables are ignored
* ``doctor.host``       key and database permissions, token lifetimes, TLS on non-loopback binds, durability
"""

from __future__ import annotations

from mcp_gateway.config import Settings
from mcp_gateway.doctor.endpoints import endpoint_checks
from mcp_gateway.doctor.finding import Finding, Status
from mcp_gateway.doctor.host import host_checks
from mcp_gateway.doctor.probes import probe_checks
from mcp_gateway.egress.addresses import SyncResolver

__all__ = ["Finding", "Status", "run_checks"]


def run_checks(settings: Settings, *, resolver: SyncResolver | None = None) -> list[Finding]:
    """Every check of the doctor, in the order of its table; ``resolver`` replaces the system resolver for the
    configured endpoints (tests)."""
    return [*endpoint_checks(settings, resolver), *probe_checks(settings), *host_checks(settings)]
