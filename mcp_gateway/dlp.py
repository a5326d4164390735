"""Data-loss prevention: find personal data and secrets in arguments and results, then block, redact or flag.

Rules (``rule_id``: what it finds):

* ``email``           addresses
* ``phone``           international (``+`` and 8-15 digits) or grouped national numbers (10-15 digits)
* ``national_id``     US social security numbers and UK national insurance numbers
* ``card``            payment card numbers (13-19 digits) that pass the Luhn check
* ``iban``            IBANs that pass the ISO 13616 mod-97 check
* ``api_key``         well-known key formats (AWS, GitHub, Slack, Google, Stripe, OpenAI-style ``sk-``) and
                      ``api_key=...``/``secret: ...`` assignments
* ``private_key``     PEM private key headers
* ``jwt``             JSON Web Tokens (three base64url segments, the first two JSON objects)

Simple evasions are undone before matching: format characters (zero-width space, joiner, soft hyphen, BOM)
are removed, spaces, dots and dashes may separate the digits of a number, non-ASCII decimal digits count as
digits, and a base64 or base64url run that decodes to text is scanned again (a secret inside it is reported
with ``encoding: base64``).

Each :class:`Finding` holds the rule id and the JSON path where it was found, never the matched text, so
findings can go into the audit trail. :func:`redact` replaces matched spans with ``[REDACTED:<rule>]``.

The patterns are written here rather than taken from presidio-analyzer: measured in ``bench/dlp_bench.py``,
its pattern recognisers cost several times more per string, need spaCy installed even when no NLP model is
used, and do not check IBAN/Luhn on whitespace- or zero-width-split numbers (docs/architecture.md).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["ACTIONS", "RULES", "Action", "Finding", "redact", "scan", "scan_text"]

Action = Literal["block", "redact", "flag"]
ACTIONS: tuple[Action, ...] = ("block", "redact", "flag")
RULES = ("email", "phone", "national_id", "card", "iban", "api_key", "private_key", "jwt")

# Digits may be split by one space, dot or dash (people write 4111 1111 ...); \d matches any decimal digit.
_SEP = r"[ .\-]?"
# Three groups, each run only when a cheap test says it could match: most strings hold no '@', no digit and no
# key-like word, and then scanning costs about a microsecond.
_SECRETS = re.compile(
    r"(?P<private_key>-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----)"
    r"|(?P<jwt>\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*)"
    r"|(?P<api_key>\b(?:AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,}"
    r"|xox[abposr]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35}|[rs]k_live_[0-9A-Za-z]{16,}"
    r"|sk-(?:proj-)?[A-Za-z0-9_-]{20,})"
    r"|(?i:\b(?:api[_-]?key|secret(?:[_-]?key)?|access[_-]?token|password|passwd)\b[\"']?\s*[:=]\s*[\"']?"
    r"[^\s\"',;]{8,}))"
)
# Lower-case marks of anything _SECRETS can match: a cheap superset test before the expensive pattern.
_SECRET_MARKS = (
    "private key", "eyj", "akia", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "xox", "aiza", "k_live_",
    "sk-", "key", "secret", "token", "passw",
)  # fmt: skip
_EMAIL = re.compile(
    r"(?P<email>\b[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*\.[A-Za-z]{2,24}\b)"
)
_NUMBERS = re.compile(
    r"(?P<iban>\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b)"
    r"|(?P<national_id>\b(?!000|666|9\d\d)\d{3}[ \-]?(?!00)\d{2}[ \-]?(?!0000)\d{4}\b"
    r"|\b[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b)"
    rf"|(?P<card>(?<![\d.\-])\d(?:{_SEP}\d){{12,18}}(?!\d))"
    rf"|(?P<phone>(?<![\w+])\+\d(?:{_SEP}\(?\d\)?){{7,14}}(?!\d)"
    rf"|(?<![\w.\-])\(?\d{{2,5}}\)?[ .\-]\d{{2,5}}[ .\-]\d{{3,5}}(?:[ .\-]\d{{2,5}})?(?!\w))"
)
_DIGIT = re.compile(r"\d")
_BASE64 = re.compile(r"[A-Za-z0-9+/_-]{24,}={0,2}")
# Characters people hide inside numbers and keys: zero-width space/joiners, word joiner, BOM, soft hyphen, ...
_INVISIBLE = {ord(c): None for c in "\u00ad\u180e\u200b\u200c\u200d\u2060\u2061\u2062\u2063\u2064\ufeff"}
_MAX_DECODE = 16_384  # longest base64 run decoded for a second look


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


def _digits(text: str) -> list[int]:
    return [unicodedata.digit(c) for c in text if c.isdecimal()]


def _luhn(digits: list[int]) -> bool:
    total = 0
    for index, digit in enumerate(reversed(digits)):
        if index % 2:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def _iban_ok(text: str) -> bool:
    compact = text.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34:
        return False
    moved = compact[4:] + compact[:4]
    try:
        number = int("".join(str(int(c, 36)) for c in moved))
    except ValueError:
        return False
    return number % 97 == 1


def _jwt_ok(text: str) -> bool:
    head = text.split(".", 1)[0]
    try:
        return isinstance(json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))), dict)
    except (ValueError, binascii.Error):
        return False


def _valid(rule: str, text: str) -> bool:
    if rule == "card":
        digits = _digits(text)
        return 13 <= len(digits) <= 19 and _luhn(digits)
    if rule == "iban":
        return _iban_ok(text)
    if rule == "jwt":
        return _jwt_ok(text)
    if rule == "phone":
        # With a country code 8-15 digits (E.164); national numbers written without one have at least 10.
        return (8 if text.startswith("+") else 10) <= len(_digits(text)) <= 15
    return True


def _may_hold_secret(text: str) -> bool:
    lowered = text.lower()
    for mark in _SECRET_MARKS:
        if mark in lowered:
            return True
    return False


def _matches(text: str) -> Iterator[tuple[str, int, int]]:
    groups: list[re.Pattern[str]] = []
    if "@" in text:
        groups.append(_EMAIL)
    if _DIGIT.search(text):
        groups.append(_NUMBERS)
    if _may_hold_secret(text):
        groups.append(_SECRETS)
    for pattern in groups:
        for match in pattern.finditer(text):
            rule = match.lastgroup
            if rule is not None and _valid(rule, match.group()):
                yield rule, match.start(), match.end()


def _decoded(run: str) -> str | None:
    if len(run) > _MAX_DECODE:
        return None
    padded = run + "=" * (-len(run) % 4)
    try:
        raw = base64.urlsafe_b64decode(padded) if ("-" in run or "_" in run) else base64.b64decode(padded)
        text = raw.decode("utf-8")
    except (ValueError, binascii.Error):
        return None
    return text if text.isprintable() or all(c.isprintable() or c in "\r\n\t" for c in text) else None


def _spans(text: str) -> tuple[list[tuple[str, int, int]], list[str]]:
    """Matched spans in ``text`` (original offsets) and the rules found inside base64 runs."""
    visible = text if text.isascii() else text.translate(_INVISIBLE)
    if len(visible) == len(text):
        spans = list(_matches(text))
    else:
        # Map offsets in the cleaned text back to the original, so redaction covers the hidden characters too.
        origin = [i for i, c in enumerate(text) if ord(c) not in _INVISIBLE]
        origin.append(len(text))
        spans = [(rule, origin[start], origin[end - 1] + 1) for rule, start, end in _matches(visible)]
    encoded: list[str] = []
    if len(visible) >= 24:
        for run in _BASE64.finditer(visible):
            if any(start <= run.start() < end for _, start, end in spans):
                continue
            inner = _decoded(run.group())
            if inner is not None:
                encoded.extend(rule for rule, _, _ in _matches(inner.translate(_INVISIBLE)))
    return spans, encoded


def scan_text(text: str, path: str = "") -> list[Finding]:
    """Findings in one string (for prompts and other free text)."""
    spans, encoded = _spans(text)
    if not spans and not encoded:
        return []
    found = [Finding(rule, path) for rule in dict.fromkeys(rule for rule, _, _ in spans)]
    found += [Finding(rule, path, "base64") for rule in dict.fromkeys(encoded)]
    return found


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def scan(value: Any, root: str) -> list[Finding]:
    """Findings in every string (and object key) of a JSON value, with paths under ``root``."""
    found: list[Finding] = []
    stack: list[tuple[Any, str]] = [(value, root)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if len(item) >= 6:  # shorter than anything a rule matches
                found += scan_text(item, path)
        elif isinstance(item, Mapping):
            for key, child in item.items():
                shown = _escape(str(key))
                if len(shown) >= 6 and (in_key := scan_text(str(key), f"{path}/*")):
                    # A sensitive key must not appear in a path: it would leak into the audit trail.
                    found += in_key
                    shown = "*"
                stack.append((child, f"{path}/{shown}"))
        elif isinstance(item, list | tuple):
            stack.extend((child, f"{path}/{index}") for index, child in enumerate(item))
    return found


def _redact_text(text: str) -> str:
    spans, encoded = _spans(text)
    if encoded:
        # A secret inside base64 cannot be cut out of the encoding: the whole run goes.
        visible = text.translate(_INVISIBLE)
        if len(visible) == len(text):
            for run in _BASE64.finditer(text):
                inner = _decoded(run.group())
                if inner is not None and any(True for _ in _matches(inner)):
                    spans.append(("base64", run.start(), run.end()))
        else:
            return "[REDACTED]"
    if not spans:
        return text
    out: list[str] = []
    cursor = 0
    for rule, start, end in sorted(spans, key=lambda span: (span[1], -span[2])):
        if start < cursor:  # overlaps a span already replaced: widen that one
            cursor = max(cursor, end)
            continue
        out.append(text[cursor:start])
        out.append(f"[REDACTED:{rule}]")
        cursor = end
    out.append(text[cursor:])
    return "".join(out)


def redact(value: Any) -> Any:
    """A copy of a JSON value with every matched span replaced by ``[REDACTED:<rule>]`` (keys included)."""
    if isinstance(value, str):
        return _redact_text(value) if len(value) >= 6 else value
    if isinstance(value, Mapping):
        return {redact(key) if isinstance(key, str) else key: redact(child) for key, child in value.items()}
    if isinstance(value, list | tuple):
        return [redact(child) for child in value]
    return value
