"""The story of each call under a trace id, told from the trail alone (``mcp-gateway audit trace``).

A trace id is not a call: an agent run makes several calls under one trace, and callers choose their trace ids
(``traceparent`` in ``_meta``), so two callers' rows can share one. The rows are therefore told as one
:class:`Story` per call: grouped by request id (which the gateway draws for every request, so a caller cannot
choose it) and by subject, never merged across either. The trace's first caller is the subject of its first
record; a story of any other subject is marked :attr:`Story.foreign`, so a caller who reuses someone else's
trace id shows up as exactly that instead of in their story.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Story", "TraceStories", "row_detail", "tell"]


def row_detail(row: dict[str, Any]) -> dict[str, Any]:
    """A row's ``detail`` as a dict; empty when it holds none or is not a JSON object."""
    try:
        value = json.loads(row["detail"]) if row.get("detail") else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True, slots=True)
class Story:
    """One call: the rows that share its request id and subject, in chain order."""

    request_id: str | None
    subject: str | None
    foreign: bool  # a different subject than the trace's first caller
    rows: tuple[dict[str, Any], ...]

    def facts(self) -> list[tuple[str, Any]]:
        """What the call was, field by field, for the table ``audit trace`` prints (empty values included)."""
        first, last = self.rows[0], self.rows[-1]
        details = [row_detail(row) for row in self.rows]
        merged: dict[str, Any] = {}
        for detail in details:
            merged.update(detail)
        roles = _roles(first)
        identity = f"{first['subject'] or '(unauthenticated)'}  roles {', '.join(roles) or '-'}"
        if merged.get("token_id"):
            identity += f"  token {merged['token_id']}"
        if merged.get("amr"):
            identity += f"  amr {','.join(str(method) for method in merged['amr'])}"
        error = merged.get("error")
        return [
            ("identity", identity),
            ("catalog", first["catalog"]),
            ("tool", f"{first['tool']}  definition {str(first['tool_digest'] or '')[:16]}" if first["tool"] else None),
            ("decision", f"{last['decision']} by {last['rule']}" if last["rule"] else last["decision"]),
            ("break-glass grant", merged.get("breakglass")),
            ("policy rule", merged.get("policy_rule")),
            ("policy version", last["policy_version"]),
            ("limits", _limits(last, merged)),
            ("approval", merged.get("approval")),
            ("backend request", merged.get("backend")),
            ("result", f"{last['outcome']}" + (f"  ({error})" if error else "")),
            ("latency", f"{last['latency_ms']} ms" if last["latency_ms"] is not None else None),
            ("request id", self.request_id),
            ("span ids", sorted({str(d["span_id"]) for d in details if "span_id" in d})),
            ("records", [row["id"] for row in self.rows]),
        ]


def _roles(row: dict[str, Any]) -> list[str]:
    try:
        roles = json.loads(row["roles"]) if row.get("roles") else []
    except json.JSONDecodeError:
        return []
    return [str(role) for role in roles] if isinstance(roles, list) else []


def _limits(row: dict[str, Any], detail: dict[str, Any]) -> str | None:
    parts: list[str] = []
    if row["outcome"] in ("rate_limited", "invalid_arguments", "dlp_blocked"):
        parts.append(f"refused: {row['outcome']}")
    elif row["args_digest"]:
        parts.append("arguments accepted")
    if row["args_digest"]:
        parts.append(f"sha256 {row['args_digest']}")
    findings = detail.get("dlp")
    if isinstance(findings, list) and findings:
        rules = sorted({str(item.get("rule")) for item in findings if isinstance(item, dict)})
        parts.append(f"DLP {detail.get('dlp_action', '')} {', '.join(rules)}".replace("  ", " "))
    return "; ".join(parts) or None


@dataclass(frozen=True, slots=True)
class TraceStories:
    """Every call under one trace id (or one request id), in the order their first records were written."""

    stories: tuple[Story, ...]

    @property
    def first_subject(self) -> str | None:
        return self.stories[0].subject if self.stories else None

    @property
    def subjects(self) -> tuple[str | None, ...]:
        """The distinct subjects, in order of first appearance (the first is the trace's first caller)."""
        return tuple(dict.fromkeys(story.subject for story in self.stories))

    @property
    def foreign(self) -> tuple[Story, ...]:
        return tuple(story for story in self.stories if story.foreign)


def tell(rows: Sequence[dict[str, Any]]) -> TraceStories:
    """Group ``rows`` (in chain order) into one story per call.

    A row with no request id is a story of its own: nothing else ties it to another row.
    """
    groups: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
    for row in rows:
        key = (str(row["request_id"]) if row.get("request_id") else f"record {row['id']}", row.get("subject"))
        groups.setdefault(key, []).append(row)
    first_subject = rows[0].get("subject") if rows else None
    return TraceStories(tuple(_story(group, first_subject) for group in groups.values()))


def _story(rows: Iterable[dict[str, Any]], first_subject: str | None) -> Story:
    ordered = tuple(rows)
    subject = ordered[0].get("subject")
    return Story(ordered[0].get("request_id"), subject, subject != first_subject, ordered)
