"""``audit verify``'s check of the grant tables: every break-glass grant and held call must match the chain.

A grant or held-call row is what the gateway consults, but only its hash-chain record makes it real (see
mcp_gateway/grantchain.py). This check reads the chain's records of grants and held calls and every row of both
tables, and names each row that matches no record:

=======================  ========================================================================================
kind                     meaning
=======================  ========================================================================================
``unrecorded-grant``     a grant row with no chain record (inserted by SQL), or that differs from its latest one
                         (edited, or rolled back to an earlier state); the gateway does not honour it
``unrecorded-approval``  the same for a held call's approval
=======================  ========================================================================================

A row whose latest record was written but whose own update was lost (a crash between the two) is reported too:
it is not honoured either, so the report says what enforcement does.
"""

from __future__ import annotations

from mcp_gateway.audit.verify import Problem
from mcp_gateway.grantchain import CHAIN_EVENTS, ChainLedger, mismatch
from mcp_gateway.store.grants import BreakGlassStore

__all__ = ["GrantCheck"]

_KINDS = {"grant": ("unrecorded-grant", "grant"), "call": ("unrecorded-approval", "held call")}


class GrantCheck:
    """The grant tables of the trail at ``database_url`` against its chain; :meth:`problems` runs the check."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url

    def problems(self) -> list[Problem]:
        """One problem per grant or held-call row that matches no chain record, oldest first.

        Raises:
            UnavailableError: the database cannot be read.
        """
        store = BreakGlassStore(self._url)
        try:
            ledger = ChainLedger(lambda after: store.chain_records(after, CHAIN_EVENTS)).refresh()
            found = []
            for kind, (problem_kind, noun) in _KINDS.items():
                entries = ledger.grants if kind == "grant" else ledger.calls
                for row in reversed(store.all(kind)):
                    why = mismatch(row, entries.get(row["id"]), kind)
                    if why is not None:
                        seq = row.get("chain_seq")
                        message = f"{noun} {row['id']} ({row['subject']} -> {row['catalog']}/{row['tool']}): {why}"
                        found.append(Problem(problem_kind, seq if isinstance(seq, int) else None, message))
            return found
        finally:
            store.close()
