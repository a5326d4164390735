"""Audit search (store/search.py): keyset pages that together are exactly the matching rows, newest first."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcp_gateway.audit.log import AuditEntry, AuditLog, row_of
from mcp_gateway.store.search import AuditSearch, SearchFilter

SUBJECTS = ("alice", "bob", "carol", "50%_off")
TOOLS = ("crm.search", "crm.customer_lookup", "hr.salary_lookup")


@pytest.fixture(scope="module")
def trail(tmp_path_factory: pytest.TempPathFactory) -> AuditLog:
    log = AuditLog(f"sqlite:///{tmp_path_factory.mktemp('search')}/audit.db")
    rows = [
        row_of(
            AuditEntry(
                event="tools/call",
                decision="deny" if index % 5 == 0 else "allow",
                outcome="ok" if index % 5 else "unknown_tool",
                subject=SUBJECTS[index % 4],
                catalog="internal",
                tool=TOOLS[index % 3],
                rule=f"internal.csv:{index % 12} p, role:x, internal, crm.*, call, allow",
            )
        )
        for index in range(300)
    ]
    log._commit_rows(rows)
    return log


def _matches(row: dict[str, object], wanted: SearchFilter) -> bool:
    for name in ("subject", "tool", "decision", "outcome"):
        value = getattr(wanted, name)
        if value is not None and row[name] != value:
            return False
    return wanted.rule is None or str(row["rule"]).split(" ")[0] == wanted.rule


filters = st.builds(
    SearchFilter,
    subject=st.none() | st.sampled_from((*SUBJECTS, "nobody", "50%")),
    tool=st.none() | st.sampled_from(TOOLS),
    decision=st.none() | st.sampled_from(("allow", "deny")),
    rule=st.none() | st.sampled_from(("internal.csv:1", "internal.csv:11", "internal.csv:%", "internal.csv:_")),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(wanted=filters, window=st.integers(1, 64), limit=st.integers(1, 40))
def test_the_pages_together_are_exactly_the_matching_rows(
    trail: AuditLog, wanted: SearchFilter, window: int, limit: int
) -> None:
    # A zero budget: every page looks at one window only, so cursors are exercised hard.
    search = AuditSearch(trail._engine, window=window, budget=0.0)
    seen: list[int] = []
    before: int | None = None
    for _ in range(1000):
        page = search.page(wanted, before=before, limit=limit)
        assert len(page.rows) <= limit
        seen += [int(row["id"]) for row in page.rows]
        if page.next_before is None:
            break
        assert before is None or page.next_before < before  # the cursor always moves on
        before = page.next_before
    expected = [int(row["id"]) for row in reversed(list(trail.iter_rows())) if _matches(row, wanted)]
    assert seen == expected


def test_like_wildcards_in_a_rule_filter_match_literally(trail: AuditLog) -> None:
    assert trail.search(SearchFilter(rule="internal.csv:%")).rows == ()
    assert trail.search(SearchFilter(subject="50%")).rows == ()
    assert {row["subject"] for row in trail.search(SearchFilter(subject="50%_off")).rows} == {"50%_off"}


def test_an_empty_trail_has_one_empty_last_page(tmp_path: Path) -> None:
    log = AuditLog(f"sqlite:///{tmp_path}/empty.db")
    page = log.search(SearchFilter())
    assert page.rows == ()
    assert page.next_before is None
    log.close()
