"""One named test per fixed vulnerability, as PyJWT's ``test_advisory.py`` keeps them: each failed before its fix.

Issue #15 (hostile run): timing that tells hidden tools from unknown ones, duplicate JSON keys in arguments, a
challenge that names an error when no credentials were sent, allowlisted addresses the egress guard would refuse
anyway, tokens minted longer than the gateway accepts and a lifetime measured from the wrong start.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import AsyncIterator

import pytest
from mcp.shared.exceptions import MCPError

from mcp_gateway.config import load_settings
from mcp_gateway.gateway import Gateway
from mcp_gateway.identity import Principal
from mcp_gateway.server import build_gateway
from tests.conftest import API_KEY, Deployment

ALICE = Principal("alice", ("support",), "internal", (), None, "test", 2**40)


@pytest.fixture
async def gateway(deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Gateway]:
    monkeypatch.setenv("INVENTORY_API_KEY", API_KEY)
    gateway = build_gateway(load_settings(deployment.config))
    yield gateway
    await gateway.aclose()
    gateway.audit.close()


# --- Hidden tools enumerable by timing -------------------------------------------------------------------------

TIMING_CALLS = 2000  # per name; ~0.3 ms each in-process, so the test takes about two seconds
# Before the fix the hidden path did one more database query than the unknown path: +0.28 ms on a 0.06 ms call
# here (+480 %), ~3 ms on the hostile run's database. Interleaved medians of the same path differ by ~1 %; 15 %
# leaves room for a loaded CI host and is still far below the cost of any extra query (~60 % of the call).
TIMING_BOUND = 0.15


async def _median_ms(gateway: Gateway, names: list[str], rounds: int = TIMING_CALLS) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(rounds):
        # Interleaved, in rotated order, so drift in the host's load falls on every name alike.
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            with pytest.raises(MCPError):
                await gateway.call_tool(ALICE, name, {"employee_id": "e-7"}, "req-timing")
            samples[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) * 1000 for name, values in samples.items()}


@pytest.mark.slow
async def test_hidden_tool_cannot_be_told_from_an_unknown_name_by_timing(gateway: Gateway) -> None:
    hidden, unknown, glob = "hr.salary_lookup", "hr.nothing", "crm.nothing"  # glob: a policy allow matches it
    await _median_ms(
        gateway, [hidden, unknown, glob], rounds=200
    )  # warm-up: caches, connection pool, branch predictors
    medians = await _median_ms(gateway, [hidden, unknown, glob])
    print(f"timing medians (ms): {medians}")
    for other in (unknown, glob):
        assert abs(medians[hidden] - medians[other]) < TIMING_BOUND * medians[other], medians
