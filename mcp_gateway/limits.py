"""The limits stage's checks on one call: argument shape, size and schema, and the tool's DLP action.

These run after the policy decision (a hidden tool's limits and schema reveal nothing) and before any backend
work. Each raises a :class:`~mcp_gateway.errors.CallError` naming the argument path or the DLP rule, never a
matched value; the audit entry of the call collects the rule ids and paths.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import mcp_types as types

from mcp_gateway import dlp
from mcp_gateway.audit.log import AuditEntry
from mcp_gateway.canonical import canonical_json, digest
from mcp_gateway.catalog import ToolSpec
from mcp_gateway.errors import DlpBlockedError, InvalidArgumentsError

__all__ = ["check_arguments", "depth", "scan_arguments", "scan_result"]

_MAX_FINDINGS = 32  # per audit row; the count says how many there were


def depth(value: Any, limit: int) -> int:
    """Nesting depth of a JSON value, iteratively (no recursion for an attacker to exhaust); stops past ``limit``."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((child, level + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, level + 1) for child in item)
    return deepest


def check_arguments(tool: ToolSpec, arguments: Mapping[str, Any], *, max_depth: int, max_bytes: int) -> bytes:
    """Depth, canonical size and JSON Schema; returns the canonical bytes the argument digest is taken over.

    Raises:
        InvalidArgumentsError: too deep, not JSON, too large, or not matching the tool's schema.
    """
    # Depth first, iteratively: json.dumps recurses and would hit the interpreter's limit on hostile nesting.
    if depth(arguments, max_depth) > max_depth:
        raise InvalidArgumentsError(
            f"arguments nest deeper than {max_depth}", public_detail=f"nested deeper than {max_depth}"
        )
    canonical = _canonical_arguments(arguments)
    if len(canonical) > max_bytes:
        raise InvalidArgumentsError(
            f"arguments are {len(canonical)} bytes, over {max_bytes}", public_detail=f"larger than {max_bytes} bytes"
        )
    error = next(iter(tool.validator.iter_errors(arguments)), None)
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "(root)"
        raise InvalidArgumentsError(f"schema: {where}: {error.message}", public_detail=f"{where}: {error.validator}")
    return canonical


def _canonical_arguments(arguments: Mapping[str, Any]) -> bytes:
    try:
        return canonical_json(arguments)
    except (TypeError, ValueError) as exc:  # NaN, Infinity, lone surrogates (UnicodeEncodeError is a ValueError)
        raise InvalidArgumentsError(f"arguments are not JSON: {exc}") from exc


def scan_arguments(
    tool: ToolSpec, arguments: Mapping[str, Any], entry: AuditEntry
) -> tuple[Mapping[str, Any], AuditEntry]:
    """Apply the tool's DLP action to its arguments; returns what the backend gets and the updated entry.

    Raises:
        DlpBlockedError: a finding under ``block``, or redacted arguments that no longer match the schema.
    """
    found = dlp.scan(arguments, "arguments")
    if not found:
        return arguments, entry
    entry = _with_findings(entry, tool.dlp, found)
    if tool.dlp == "block":
        raise DlpBlockedError(
            f"arguments: {_rules(found)}",
            public_detail=f"{_rules(found)} in {_paths(found, 'arguments')}",
            audit_detail=entry.detail,
        )
    if tool.dlp == "flag":
        return arguments, entry
    redacted = dlp.redact(arguments)
    # Redaction must not smuggle arguments past the schema the backend relies on.
    if next(iter(tool.validator.iter_errors(redacted)), None) is not None:
        raise DlpBlockedError(
            f"arguments: {_rules(found)}; redacted arguments no longer match the schema",
            public_detail=f"{_rules(found)} in {_paths(found, 'arguments')}",
            audit_detail=entry.detail,
        )
    forwarded = _forwarded_digest(redacted)
    return redacted, replace(entry, detail={**(entry.detail or {}), "forwarded_digest": forwarded})


def scan_result(
    tool: ToolSpec, result: types.CallToolResult, entry: AuditEntry
) -> tuple[types.CallToolResult, AuditEntry]:
    """Apply the tool's DLP action to a backend's result; returns what the caller gets and the updated entry.

    Raises:
        DlpBlockedError: a finding under ``block``.
    """
    texts = [block.text for block in result.content if isinstance(block, types.TextContent)]
    found = dlp.scan({"content": texts, "structured": result.structured_content}, "result")
    if not found:
        return result, entry
    entry = _with_findings(entry, tool.dlp, found)
    if tool.dlp == "block":
        raise DlpBlockedError(
            f"result: {_rules(found)}", public_detail=f"{_rules(found)} in the result", audit_detail=entry.detail
        )
    if tool.dlp == "flag":
        return result, entry
    content = [
        types.TextContent(text=dlp.redact(block.text)) if isinstance(block, types.TextContent) else block
        for block in result.content
    ]
    structured = dlp.redact(result.structured_content) if result.structured_content is not None else None
    return result.model_copy(update={"content": content, "structured_content": structured}), entry


def _with_findings(entry: AuditEntry, action: str, found: list[dlp.Finding]) -> AuditEntry:
    """Record rule ids and paths (never matched values) in the row's detail."""
    unique = list(dict.fromkeys(found))
    detail = dict(entry.detail or {})
    records = [*detail.get("dlp", []), *(finding.as_record() for finding in unique[:_MAX_FINDINGS])]
    detail.update(dlp=records, dlp_action=action, dlp_count=detail.get("dlp_count", 0) + len(unique))
    return replace(entry, detail=detail)


def _rules(found: list[dlp.Finding]) -> str:
    return ", ".join(dict.fromkeys(finding.rule for finding in found))


def _paths(found: list[dlp.Finding], root: str) -> str:
    return ", ".join(dict.fromkeys(finding.path for finding in found))[:200] or root


def _forwarded_digest(value: Any) -> str:
    try:
        return digest(value)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentsError(f"redacted arguments are not JSON: {exc}") from exc
