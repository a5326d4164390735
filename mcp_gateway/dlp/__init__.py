"""Data-loss prevention: find personal data and secrets in arguments and results, then block, redact or flag.

Rules (``rule_id``: what it finds):

* ``email``           addresses
* ``phone``           international (``+`` and 8-15 digits) or grouped national numbers (10-15 digits)
* ``national_id``     US social security numbers and UK national insurance numbers
* ``card``            payment card numbers (13-19 digits) that pass the Luhn check
* ``iban``            IBANs that pass the ISO 13616 mod-97 check
* ``api_key``         well-known key formats (AWS, GitHub, Slack, Google, Stripe, OpenAI-style ``sk-``) and
                      ``api_key=...``/``secret: ...`` assignments
* ``private_key``     PEM private keys, from the BEGIN line through the END line (or the end of the text)
* ``jwt``             JSON Web Tokens (three base64url segments, the first two JSON objects)
* ``encoded``         text nested in more encodings than the scanner opens (see below): it is not let through

Normalisation, before matching (:mod:`~mcp_gateway.dlp.views`): format characters (zero-width space and
joiners, word joiner, BOM, soft hyphen, every Unicode ``Cf``), lone surrogates, private-use and unassigned code
points, and combining marks are removed; any Unicode
digit counts as its digit (fullwidth, Arabic-Indic, superscript, circled); and in numbers any
run of separators counts as one: :data:`~mcp_gateway.dlp.views.SEPARATORS` defines the class once (Unicode
whitespace and controls, dashes and minus signs, slashes, dots, commas, underscores). A card is any window of
13-19 digits between digit-group edges that passes Luhn, so extra digits around it do not hide it.

Encodings (:mod:`~mcp_gateway.dlp.layers`): base64, base64url and hex runs at any length that could hold a
finding, percent-encoding and backslash escapes (``\\t``, ``\\u0034``), nested in any order up to three
base64/hex layers deep, with the total decoding work bounded by eight times the text's length. Findings inside
are reported with ``encoding`` (``"base64"``, ``"url/base64"``).

JSON values: every string, every object key, and every number (an integer as its JSON text; a float by its
integer digits, since its fraction is representation noise); booleans and null never match.

Each :class:`Finding` holds the rule id and the JSON path where it was found, never the matched text, so
findings can go into the audit trail. :func:`redact` replaces each finding's whole original span (hidden
characters, separators and every line of a key included) with ``[REDACTED:<rule>]``; a finding inside base64
or hex removes the whole run (``[REDACTED:base64]``); a number with a finding becomes the string
``[REDACTED:<rule>]``.

The patterns are written here rather than taken from presidio-analyzer: measured in ``bench/dlp_bench.py``,
its pattern recognisers cost several times more per string, need spaCy installed even when no NLP model is
used, and do not check IBAN/Luhn on whitespace- or zero-width-split numbers (docs/architecture.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from mcp_gateway.dlp.layers import Hit, inspect

__all__ = ["ACTIONS", "RULES", "Action", "Finding", "redact", "scan", "scan_text"]

Action = Literal["block", "redact", "flag"]
ACTIONS: tuple[Action, ...] = ("block", "redact", "flag")
RULES = ("email", "phone", "national_id", "card", "iban", "api_key", "private_key", "jwt", "encoded")

_SHORTEST = 6  # characters: shorter than anything a rule matches (``a@b.cc``)


@dataclass(frozen=True, slots=True)
class Finding:
    """One rule that matched, and where: ``path`` is a JSON-pointer-like path such as ``arguments/query``."""

    rule: str
    path: str
    encoding: str | None = None

    def as_record(self) -> dict[str, str]:
        record = {"rule": self.rule, "path": self.path}
        if self.encoding:
            record["encoding"] = self.encoding
        return record


def scan_text(text: str, path: str = "") -> list[Finding]:
    """Findings in one string (for prompts and other free text)."""
    if len(text) < _SHORTEST or not (hits := inspect(text, spans=False)):
        return []
    return list(dict.fromkeys(Finding(hit.rule, path, hit.encoding) for hit in hits))


def _number_text(value: Any) -> str | None:
    """The digits a JSON number shows, or ``None`` for anything that is not a number (booleans included)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        value = int(value)
    return str(value)


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def scan(value: Any, root: str) -> list[Finding]:
    """Findings in every string, number and object key of a JSON value, with paths under ``root``."""
    found: list[Finding] = []
    stack: list[tuple[Any, str]] = [(value, root)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            found += scan_text(item, path)
        elif isinstance(item, Mapping):
            for key, child in item.items():
                text = key if isinstance(key, str) else (_number_text(key) or str(key))
                shown = _escape(text)
                if in_key := scan_text(text, f"{path}/*"):
                    # A sensitive key must not appear in a path: it would leak into the audit trail.
                    found += in_key
                    shown = "*"
                stack.append((child, f"{path}/{shown}"))
        elif isinstance(item, list | tuple):
            stack.extend((child, f"{path}/{index}") for index, child in enumerate(item))
        elif (digits := _number_text(item)) is not None:
            found += scan_text(digits, path)
    return found


def _label(hit: Hit) -> str:
    """What replaces a finding: its rule, or the encoding it was cut out of (a run cannot be cut into)."""
    layers = [layer for layer in (hit.encoding or "").split("/") if layer not in ("", "url", "escape")]
    return "encoded" if hit.rule == "encoded" else (layers[0] if layers else hit.rule)


def _redact_text(text: str) -> str:
    if len(text) < _SHORTEST:
        return text
    hits = sorted(inspect(text, spans=True), key=lambda hit: (hit.start, -hit.end))
    if not hits:
        return text
    out: list[str] = []
    cursor = 0
    for hit in hits:
        if hit.start < cursor:  # overlaps a span already replaced: widen that one
            cursor = max(cursor, hit.end)
            continue
        out.append(text[cursor : hit.start])
        out.append(f"[REDACTED:{_label(hit)}]")
        cursor = hit.end
    out.append(text[cursor:])
    return "".join(out)


def redact(value: Any) -> Any:
    """A copy of a JSON value with every finding replaced by ``[REDACTED:<rule>]`` (keys and numbers included).

    A number with a finding becomes a string, so a schema that asks for a number refuses the redacted value.
    """
    if isinstance(value, str):
        return _redact_text(value)
    if isinstance(value, Mapping):
        return {redact(key): redact(child) for key, child in value.items()}
    if isinstance(value, list | tuple):
        return [redact(child) for child in value]
    digits = _number_text(value)
    if digits is not None and len(digits) >= _SHORTEST and (hits := inspect(digits, spans=False)):
        return f"[REDACTED:{_label(hits[0])}]"
    return value
