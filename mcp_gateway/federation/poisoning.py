"""Poisoning checks on an upstream tool definition: what a reviewer must see before pinning it.

A poisoned tool steers the agent through the text the model reads, not through code (OWASP MCP03). These checks
read every string of the wire definition (name, title, description, every schema keyword, annotations, ``_meta``
and fields this gateway does not know, keys included) and report:

- ``hidden-character``: zero-width, bidirectional and other format controls, Unicode tag characters and
  variation selectors: text a person reviewing the definition does not see but the model reads;
- ``hidden-tag``: markup that poses as a higher authority (``<IMPORTANT>``, ``<system>``, ``[INST]``, chat
  template tokens, HTML comments);
- ``instruction``: text addressed to the model rather than describing the tool ("ignore previous
  instructions", "do not tell the user", "before using any other tool");
- ``file-access``: instructions to read secrets or local files (``~/.ssh``, ``.env``, ``/etc/passwd``, ...);
- ``exfiltration``: addresses and instructions to send data elsewhere (URLs, ``curl``, "send ... to");
- ``tool-reference``: names of the other tools next to it (a tool that tells the model how to use another one is
  shadowing it);
- ``encoded-text``: a long base64 or hex run, which a reviewer cannot read;
- ``long-text``: a description long enough to hide instructions below what a dialog shows.

The phrase checks run on a normalised copy (NFKC, format characters removed, case folded, whitespace collapsed),
so splitting a phrase with zero-width characters or writing it in full-width letters does not hide it. They are
heuristics for a reviewer, not a proof of innocence: ``catalog pin`` refuses a definition with findings unless
the operator accepts them, and a clean report means only that none of these patterns is there.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Finding", "findings", "other_tools"]

# A description longer than this hides text below what an approval dialog shows.
LONG_TEXT = 2048
# Characters of context quoted in a finding's detail.
_QUOTE = 60


@dataclass(frozen=True, slots=True)
class Finding:
    """One suspicious thing in a definition: its ``kind``, the ``field`` it is in, and a printable ``detail``."""

    kind: str
    field: str
    detail: str


def _is_hidden(char: str) -> bool:
    code = ord(char)
    if 0xFE00 <= code <= 0xFE0F or 0xE0100 <= code <= 0xE01EF:  # variation selectors
        return True
    if code == 0x115F or code == 0x1160 or code == 0x3164 or code == 0xFFA0:  # Hangul fillers render blank
        return True
    return unicodedata.category(char) == "Cf"  # zero-width, bidi controls, tags, soft hyphen, ...


_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(pattern))
    for kind, pattern in (
        (
            "hidden-tag",
            r"<\s*/?\s*(?:important|system|instructions?|secret|hidden|admin|override|prompt|sudo)\b[^>]{0,40}>",
        ),
        ("hidden-tag", r"<!--"),
        ("hidden-tag", r"<\|[a-z_]{2,20}\|>"),
        ("hidden-tag", r"\[/?(?:inst|sys|system)\]"),
        ("hidden-tag", r"(?:^|\s)#{2,}\s*(?:system|instructions?|important)\b"),
        (
            "instruction",
            r"\b(?:ignore|disregard|forget|override)\s+(?:all\s+|any\s+)?(?:the\s+|your\s+)?"
            r"(?:previous|prior|above|earlier|preceding|other|system)\s+(?:instructions?|messages?|prompts?|rules?|guidelines?)",
        ),
        (
            "instruction",
            r"\b(?:do\s+not|don'?t|never)\s+(?:tell|mention|inform|notify|reveal|show|alert)\b[^.]{0,30}\buser\b",
        ),
        ("instruction", r"\bwithout\s+(?:telling|informing|notifying|asking)\s+(?:the\s+)?user\b"),
        (
            "instruction",
            r"\b(?:before|after|instead\s+of)\s+(?:using|calling|running|invoking)\s+(?:this|any|every|the\s+other|other)\b",
        ),
        (
            "instruction",
            r"\b(?:you\s+are\s+now|from\s+now\s+on|new\s+instructions?|system\s+prompt|act\s+as\s+(?:an?\s+)?(?:admin|root|system))\b",
        ),
        ("instruction", r"\b(?:the\s+)?(?:assistant|ai|agent|llm)\s+(?:must|should|has\s+to)\b"),
        (
            "file-access",
            r"(?:~|\$home|%userprofile%)[/\\]|\.ssh\b|\bid_(?:rsa|dsa|ecdsa|ed25519)\b|/etc/(?:passwd|shadow|sudoers)\b"
            r"|\.aws[/\\]|\.kube[/\\]|\.gnupg\b|(?:^|[\s/\\\"'`])\.env\b|\bmcp\.json\b|\.netrc\b|\bcredentials?\.json\b",
        ),
        (
            "file-access",
            r"\b(?:read|cat|open|include|attach|load)\s+(?:the\s+)?(?:contents?\s+of\s+)?(?:any|all|every|the\s+user'?s)\s+(?:local\s+)?files?\b",
        ),
        ("exfiltration", r"\b(?:https?|ftp|wss?)://"),
        ("exfiltration", r"\b(?:curl|wget|netcat|nc\s+-)\b"),
        (
            "exfiltration",
            r"\b(?:send|forward|upload|post|transmit|exfiltrate|copy|leak|email)\s+(?:it|them|everything|all|"
            r"(?:the\s+)?(?:contents?|keys?|secrets?|tokens?|credentials?|conversation|history))\s+to\b",
        ),
        (
            "exfiltration",
            r"\b(?:pass|put|include|add)\b[^.]{0,40}\b(?:as|in|into)\s+(?:the\s+)?(?:sidenote|side\s+note|note|extra)\s+(?:parameter|argument|field)\b",
        ),
    )
)
_ENCODED = re.compile(r"[A-Za-z0-9+/]{64,}={0,2}|(?:[0-9a-fA-F]{2}){40,}")
_SPACE = re.compile(r"\s+")
_IDENTIFIERS = frozenset({"$schema", "$id", "$ref"})
# An icon's ``src`` is an address (often a ``data:`` URI in base64) by design, and no model reads it as text.
_ICON_SOURCE = re.compile(r"(?:^|\.)icons\[\d+\]\.src$")


def findings(definition: Mapping[str, Any], other_tools: Collection[str] = ()) -> list[Finding]:
    """The poisoning findings of one wire definition, each kind reported once per field.

    ``other_tools`` are the names of the tools published beside this one; a definition naming one of them is a
    ``tool-reference``. Never raises on any JSON value.
    """
    own = definition.get("name")
    others = {name.casefold() for name in other_tools if isinstance(name, str) and len(name) >= 3 and name != own}
    found: list[Finding] = []
    seen: set[tuple[str, str]] = set()
    for path, text, is_key in _strings(definition, ""):
        for finding in _scan(path, text, is_key, others):
            if (finding.kind, finding.field) not in seen:
                seen.add((finding.kind, finding.field))
                found.append(finding)
    return found


def other_tools(server: str, listed: Iterable[str], neighbours: Iterable[str]) -> frozenset[str]:
    """What a definition may not name: the server's tools (bare and published) and the catalog's other tools."""
    names = list(listed)
    return frozenset((*names, *(f"{server}.{name}" for name in names), *neighbours))


def _strings(value: Any, path: str) -> Iterator[tuple[str, str, bool]]:
    """Every string in ``value`` with its dotted path; keys too (flagged), since a key can carry hidden text."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            yield where or "(value)", item, False
        elif isinstance(item, Mapping):
            for key, child in reversed(list(item.items())):
                name = str(key)
                field = f"{where}.{name}" if where else name
                yield field, name, True
                stack.append((child, field))
        elif isinstance(item, list | tuple):
            stack.extend((child, f"{where}[{index}]") for index, child in reversed(list(enumerate(item))))


def _scan(path: str, text: str, is_key: bool, others: set[str]) -> Iterator[Finding]:
    hidden = [char for char in text if _is_hidden(char)]
    if hidden:
        codes = ", ".join(sorted({f"U+{ord(char):04X}" for char in hidden}))
        yield Finding("hidden-character", path, f"{len(hidden)} invisible character(s): {codes}")
    if is_key:
        return
    plain = normalise(text)
    if path.rsplit(".", 1)[-1] in _IDENTIFIERS or _ICON_SOURCE.search(path):
        return  # schema identifiers ($schema, $id, $ref) and icon sources are addresses by design
    for kind, pattern in _PATTERNS:
        match = pattern.search(plain)
        if match is not None:
            yield Finding(kind, path, f"matches {_quote(plain, match.start(), match.end())}")
    for name in sorted(name for name in others if _names(plain, name)):
        yield Finding("tool-reference", path, f"names another tool: {name!r}")
    encoded = _ENCODED.search(text)
    if encoded is not None:
        yield Finding("encoded-text", path, f"{len(encoded.group())} characters of encoded text")
    if path.endswith("description") and len(text) > LONG_TEXT:
        yield Finding("long-text", path, f"{len(text)} characters (more than {LONG_TEXT})")


def _names(text: str, name: str) -> bool:
    """Whether ``text`` names the tool ``name``: a compound name (``read_file``, ``files.search``) anywhere as a
    word, a plain word (``search``) only where it is called a tool (```search```, ``search tool``, ``search(``)."""
    word = re.escape(name)
    if re.fullmatch(r"[a-z]+", name):
        pattern = rf"`{word}`|\b{word}\s+tool\b|\b{word}\(|\btool\s+['\"]?{word}\b"
    else:
        pattern = rf"(?<![a-z0-9_.\-]){word}(?![a-z0-9_\-]|\.[a-z0-9_])"
    return re.search(pattern, text) is not None


def normalise(text: str) -> str:
    """The text the phrase checks read: NFKC, hidden characters dropped, case folded, whitespace collapsed."""
    folded = unicodedata.normalize("NFKC", text)
    visible = "".join(char for char in folded if not _is_hidden(char))
    return _SPACE.sub(" ", visible.casefold()).strip()


def _quote(text: str, start: int, end: int) -> str:
    """A short, printable quote around a match (control characters escaped, so a terminal shows only text)."""
    lo, hi = max(0, start - 10), min(len(text), max(end, start + _QUOTE // 2) + 10)
    snippet = text[lo:hi][:_QUOTE]
    return repr(("…" if lo else "") + snippet + ("…" if hi < len(text) else ""))
