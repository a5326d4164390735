"""How loud each audit record is in a SIEM: one table of event classes and severities, for CEF and JSON export.

:data:`SEVERITIES` is the single source: export reads it, and docs/audit.md prints it (a test compares the two).
Each record gets exactly one class, tested from the most severe down (tamper first); a record no class
describes is ``other``, ranked above the routine classes, so a new kind of record is never buried among
allowed calls.

Tamper findings come from the export itself: as rows stream out, each is re-hashed and checked against the one
before it (:class:`TamperWatch`), so a SIEM learns of a changed or unlinked record without running ``audit
verify``. It is a first warning, not the verifier: signed checkpoints are checked only by ``audit verify``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mcp_gateway.audit.log import GENESIS, record_hash
from mcp_gateway.audit.story import row_detail

__all__ = ["SEVERITIES", "SeverityClass", "TamperWatch", "classify", "rule_fields", "severity_table"]

_CHANGE_PREFIXES = ("policy.", "catalog.", "models.", "config.", "approval.")
_DENIALS = frozenset({"unauthenticated", "unknown_tool", "invalid_arguments", "approval_required"})
_ROUTINE = frozenset({"ok", "started", ""})


@dataclass(frozen=True, slots=True)
class SeverityClass:
    """An event class: its name (CEF ``cat``, JSON ``severity_class``), CEF severity (0-10), and what it holds."""

    name: str
    severity: int
    meaning: str


SEVERITIES: tuple[SeverityClass, ...] = (
    SeverityClass("tamper", 10, "a record whose hash does not verify, or that does not follow the record before it"),
    SeverityClass(
        "breakglass", 10, "a call allowed by a break-glass grant (rule `breakglass:ID`); any `breakglass.*` record"
    ),
    SeverityClass("dlp_block", 8, "a call or a result blocked by DLP (outcome `dlp_blocked`)"),
    SeverityClass(
        "change", 8, "a `policy.*`, `catalog.*`, `models.*`, `config.*` or `approval.*` record, accepted or not"
    ),
    SeverityClass("rate_limit", 6, "a call refused by a rate limit (outcome `rate_limited`)"),
    SeverityClass(
        "denial",
        6,
        "a request refused: decision `deny`, or outcome `unauthenticated`, `unknown_tool`, `invalid_arguments` "
        "or `approval_required`",
    ),
    SeverityClass("other", 5, "any record no other class describes"),
    SeverityClass(
        "failure", 4, "an allowed call that failed: upstream failure or timeout, unavailable, cancelled, internal error"
    ),
    SeverityClass("allowed", 2, "an allowed call or listing, and the gateway's start"),
)
_BY_NAME = {item.name: item for item in SEVERITIES}


def classify(row: dict[str, Any], tampered: bool = False) -> SeverityClass:
    """The class of one record (``tampered``: the export found it changed or unlinked)."""
    event, outcome = str(row.get("event") or ""), str(row.get("outcome") or "")
    decision, rule = str(row.get("decision") or ""), str(row.get("rule") or "")
    if tampered:
        name = "tamper"
    elif event.startswith("breakglass.") or rule.startswith("breakglass:"):
        name = "breakglass"
    elif outcome == "dlp_blocked":
        name = "dlp_block"
    elif event.startswith(_CHANGE_PREFIXES):
        name = "change"
    elif outcome == "rate_limited":
        name = "rate_limit"
    elif decision == "deny" or outcome in _DENIALS:
        name = "denial"
    elif decision == "allow" and outcome in _ROUTINE:
        name = "allowed"
    elif decision in ("allow", "error") and event.startswith("tools/"):
        name = "failure"
    else:
        name = "other"
    return _BY_NAME[name]


def rule_fields(row: dict[str, Any]) -> dict[str, Any]:
    """The rule ids a SIEM filters on, as flat fields: the policy rule that decided (for a break-glass call, the
    one the grant overrode), the grant id, and the DLP rule ids that matched."""
    detail = row_detail(row)
    rule = str(row.get("rule") or "")
    findings = detail.get("dlp")
    listed = findings if isinstance(findings, list) else []
    dlp = sorted({str(item["rule"]) for item in listed if isinstance(item, dict) and "rule" in item})
    return {
        "policy_rule": detail.get("policy_rule") if rule.startswith("breakglass:") else (rule or None),
        "grant_id": rule.removeprefix("breakglass:") if rule.startswith("breakglass:") else None,
        "dlp_rules": dlp,
    }


class TamperWatch:
    """Re-hashes each exported row and checks its link to the one before; says what is wrong, if anything.

    ``partial``: the export starts after the genesis (``--since``), so the first row's link cannot be checked.
    """

    def __init__(self, *, partial: bool = False) -> None:
        self._previous: str | None = None if partial else GENESIS

    def check(self, row: dict[str, Any]) -> str | None:
        finding = None
        if record_hash(row) != row.get("hash"):
            finding = "contents do not match the record's hash"
        elif self._previous is not None and row.get("prev_hash") != self._previous:
            finding = "does not follow the record before it"
        self._previous = str(row.get("hash"))
        return finding


def severity_table() -> str:
    """:data:`SEVERITIES` as the Markdown table docs/audit.md holds."""
    lines = ["| class | severity | records |", "|---|---|---|"]
    lines += [f"| `{item.name}` | {item.severity} | {item.meaning} |" for item in SEVERITIES]
    return "\n".join(lines) + "\n"
