"""Audit export: JSON lines and CEF for a SIEM, and a self-contained bundle that verifies with no database.

All three stream: rows are read in batches and written one line at a time. JSON lines and CEF carry each
record's severity and class and its rule ids as fields a SIEM filters on (the table is audit/severity.py's,
printed in docs/audit.md).

A bundle is JSON lines: a header, the signed checkpoints, every record, and a trailer with the record count::

    {"bundle": "mcp-gateway-audit", "version": 1, "exported_at": ..., "since": ..., "key_id": ...}
    {"checkpoint": {"ts": ..., "record_id": ..., "record_hash": ..., "key_id": ..., "signature": ...}}
    {"record": {"id": 1, "ts": ..., ..., "prev_hash": ..., "hash": ...}}
    {"end": {"records": 1234}}

It carries no key: the verifier brings the public key it trusts (``audit verify --bundle B --public-key K``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from mcp_gateway import __version__
from mcp_gateway.audit.checkpoint import CHECKPOINT_FIELDS
from mcp_gateway.audit.severity import classify, rule_fields
from mcp_gateway.errors import ConfigError

__all__ = ["BUNDLE_MAGIC", "Bundle", "cef_line", "jsonl_line", "open_bundle", "printable_text", "write_bundle"]

BUNDLE_MAGIC = "mcp-gateway-audit"


def jsonl_line(row: dict[str, Any], tamper: str | None = None) -> str:
    """One row as a JSON object, with its severity, its class and its rule ids as fields of their own
    (audit/severity.py); ``tamper`` is what the export found wrong with the row, if anything."""
    kind = classify(row, tampered=tamper is not None)
    fields = {"severity": kind.severity, "severity_class": kind.name, **rule_fields(row)}
    if tamper is not None:
        fields["tamper"] = tamper
    # The row's own columns win over nothing: the added names are not audit columns, so none is shadowed.
    # ASCII-only: U+2028, U+0085 and friends are line breaks to some JSON-lines readers.
    return json.dumps({**fields, **row}, sort_keys=True, ensure_ascii=True) + "\n"


def _cef_header(value: Any) -> str:
    return printable_text(str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " "))


def _cef_value(value: Any) -> str:
    text = str(value).replace("\\", "\\\\").replace("=", "\\=")
    return printable_text(text.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\r"))


def printable_text(text: str) -> str:
    """Control and format characters (ESC, U+0085, U+2028, ...) written as escapes: some readers break lines
    on them, and terminals act on them."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else ascii(char)[1:-1] for char in text)


def cef_line(row: dict[str, Any], tamper: str | None = None) -> str:
    """One row in ArcSight Common Event Format (CEF:0). Header pipes and extension ``=`` are escaped, and no
    caller-supplied text can start a new line.

    The header's severity is the row's class's (audit/severity.py), the class is ``cat``, and the rule ids are
    extension keys of their own: ``flexString1`` the policy rule, ``flexString2`` the DLP rule ids (comma
    separated), ``reason`` the deciding rule as recorded (``breakglass:ID`` for a grant). ``tamper`` is what
    the export found wrong with the row (``msg``), if anything."""
    decision = str(row.get("decision") or "")
    timestamp = datetime.fromisoformat(str(row["ts"]))
    kind = classify(row, tampered=tamper is not None)
    rules = rule_fields(row)
    extensions = {
        "rt": int(timestamp.timestamp() * 1000),
        "externalId": row.get("id"),
        "suser": row.get("subject"),
        "act": decision,
        "outcome": row.get("outcome"),
        "reason": row.get("rule"),
        "requestClientApplication": row.get("catalog"),
        "cs1Label": "tool",
        "cs1": row.get("tool"),
        "cs2Label": "requestId",
        "cs2": row.get("request_id"),
        "cs3Label": "traceId",
        "cs3": row.get("trace_id"),
        "cs4Label": "policyVersion",
        "cs4": row.get("policy_version"),
        "cs5Label": "argsDigest",
        "cs5": row.get("args_digest"),
        "cs6Label": "recordHash",
        "cs6": row.get("hash"),
        "cn1Label": "latencyMs",
        "cn1": row.get("latency_ms"),
        "cat": kind.name,
        "flexString1Label": "policyRule",
        "flexString1": rules["policy_rule"],
        "flexString2Label": "dlpRules",
        "flexString2": ",".join(rules["dlp_rules"]) or None,
        "msg": f"tamper: {tamper}" if tamper is not None else None,
    }
    extension = " ".join(
        f"{key}={_cef_value(value)}"
        for key, value in extensions.items()
        if value is not None and not (key.endswith("Label") and extensions.get(key.removesuffix("Label")) is None)
    )
    header = "|".join(
        _cef_header(part)
        for part in (
            "CEF:0",
            "mcp-gateway",
            "mcp-gateway",
            __version__,
            row.get("event"),
            f"{row.get('event')} {decision}",
            kind.severity,
        )
    )
    return f"{header}|{extension}\n"


def write_bundle(
    out: IO[str],
    rows: Iterable[dict[str, Any]],
    checkpoints: Iterable[dict[str, Any]],
    *,
    since: str | None,
    key_id: str | None,
) -> int:
    """Write a bundle to ``out``; returns how many records it holds."""
    header = {
        "bundle": BUNDLE_MAGIC,
        "version": 1,
        "exported_at": datetime.now(UTC).isoformat(timespec="microseconds"),
        "since": since,
        "key_id": key_id,
    }
    out.write(json.dumps(header, sort_keys=True) + "\n")
    for checkpoint in checkpoints:
        out.write(json.dumps({"checkpoint": {k: checkpoint[k] for k in CHECKPOINT_FIELDS}}, sort_keys=True) + "\n")
    count = 0
    for row in rows:
        out.write(json.dumps({"record": row}, sort_keys=True, ensure_ascii=True) + "\n")
        count += 1
    out.write(json.dumps({"end": {"records": count}}) + "\n")
    return count


@dataclass
class Bundle:
    """An opened bundle: header and checkpoints read, records streamed by :meth:`records`."""

    path: Path
    header: dict[str, Any]
    checkpoints: list[dict[str, Any]]
    _handle: IO[str]
    _pending: str | None
    problems: list[str] = field(default_factory=list)

    def records(self) -> Iterator[dict[str, Any]]:
        """Every record in file order; a malformed line or a missing or wrong trailer is noted in ``problems``."""
        count = 0
        ended = False
        line = self._pending
        number = len(self.checkpoints) + 2
        while line is not None:
            if line.strip():
                item = _parse(line)
                if ended:
                    self.problems.append(f"line {number}: content after the end marker")
                elif item is not None and isinstance(item.get("record"), dict):
                    count += 1
                    yield item["record"]
                elif item is not None and isinstance(item.get("end"), dict):
                    ended = True
                    if item["end"].get("records") != count:
                        self.problems.append(f"end marker says {item['end'].get('records')} records, found {count}")
                else:
                    self.problems.append(f"line {number}: not a record")
            line = self._handle.readline() or None
            number += 1
        if not ended:
            self.problems.append("no end marker: the bundle was truncated")
        self._handle.close()


def _parse(line: str) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def open_bundle(path: Path) -> Bundle:
    """Open a bundle and read its header and checkpoints.

    Raises:
        ConfigError: the file cannot be read or is not a bundle.
    """
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    header = _parse(handle.readline())
    if header is None or header.get("bundle") != BUNDLE_MAGIC or header.get("version") != 1:
        handle.close()
        raise ConfigError(f"{path}: not an mcp-gateway audit bundle (version 1)")
    checkpoints: list[dict[str, Any]] = []
    line = handle.readline()
    while line:
        item = _parse(line)
        if item is None or not isinstance(item.get("checkpoint"), dict):
            break
        checkpoints.append(item["checkpoint"])
        line = handle.readline()
    return Bundle(path, header, checkpoints, handle, line or None)
