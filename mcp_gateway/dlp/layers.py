"""Encoding layers: what base64, hex, percent-encoding and backslash escapes hide is scanned too, within bounds.

At each text the scanner looks for:

* ``url`` / ``escape``: one round of percent-encoding and backslash escapes undone (:func:`views.unescaped`),
  mapped back character by character, so a finding is redacted in place; up to :data:`MAX_ROUNDS` rounds.
* ``base64`` (and base64url) runs of :data:`MIN_BASE64` characters or more (``a@b.cc``, the shortest finding,
  is 8), decoded from their first character; ``hex`` runs of :data:`MIN_HEX` or more, at both alignments.
  Decoded bytes with no stretch of six text-like bytes are dropped at once; the rest is decoded as UTF-8
  (errors replaced) and scanned like any text. A finding inside removes the whole run.

Bounds: :data:`MAX_DEPTH` nested base64/hex decodings, :data:`MAX_ROUNDS` unescaping rounds at each level, and
in all at most ``BUDGET_FACTOR * n + BUDGET_BASE`` decoded characters for a text of ``n``. Past any bound
the text counts as a finding of rule ``encoded``: what it hides cannot be known, so it is not let through.
Every pattern is linear, so a text costs O(n) in total.
"""

from __future__ import annotations

import binascii
import re
from typing import NamedTuple

from mcp_gateway.dlp.rules import TEXT_RULES, Match, Spans, direct
from mcp_gateway.dlp.views import View, unescaped

__all__ = ["BUDGET_BASE", "BUDGET_FACTOR", "MAX_DEPTH", "MAX_ROUNDS", "MIN_BASE64", "MIN_HEX", "Hit", "inspect"]

MAX_DEPTH = 3
MAX_ROUNDS = 3
BUDGET_FACTOR = 8
BUDGET_BASE = 4096
MIN_BASE64 = 8
MIN_HEX = 12

_BASE64_RUN = re.compile(rf"[A-Za-z0-9+/_-]{{{MIN_BASE64},}}={{0,2}}")
_HEX_RUN = re.compile(rf"[0-9A-Fa-f]{{{MIN_HEX},}}")
# An ordinary word (8-11 letters, lowercase after an optional capital) is not decoded: it is at most 8 bytes, every
# finding needs 9 or more except an address, and no quartet of such letters decodes to an "@" (checked over all).
_WORD = re.compile(r"[A-Za-z][a-z]{7,10}")
_URLSAFE = str.maketrans("-_", "+/")
_UTF8 = rb"[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3}"
_TEXTISH = re.compile(rb"(?:[\x00-\x7f]|" + _UTF8 + rb"){6,}")
_TEXTUAL = re.compile(rb"(?:[\t\n\r\x20-\x7e]|" + _UTF8 + rb")+")


class Hit(NamedTuple):
    """A finding in a text: ``encoding`` names the layers around it (``"hex/base64"``), outermost first.

    ``start``/``end`` are offsets in that text, or both 0 when spans were not asked for.
    """

    rule: str
    encoding: str | None
    start: int
    end: int


class _Walk:
    """One text's inspection: whether spans are wanted, and the decoding budget left."""

    def __init__(self, size: int, spans: bool) -> None:
        self.spans = spans
        self.budget = BUDGET_FACTOR * size + BUDGET_BASE

    def spend(self, size: int) -> bool:
        self.budget -= size
        return self.budget >= 0


def inspect(text: str, *, spans: bool) -> list[Hit]:
    """Every finding in ``text`` and in what its encodings hide; offsets only when ``spans``."""
    return _inspect(text, _Walk(len(text), spans), depth=0, rounds=0)


def _inspect(text: str, walk: _Walk, depth: int, rounds: int) -> list[Hit]:
    matches, view = direct(text)
    hits = [_hit(match, None, walk) for match in matches] if matches else []
    text_spans = [(match.start, match.end) for match in matches if match.rule in TEXT_RULES] if matches else None
    covered = Spans(text_spans) if text_spans else None
    for start, end, name, raw in _runs(view.form, covered):
        hits += _decoded(view, start, end, name, raw, walk, depth)
    if "%" in text or "\\" in text:  # last: its scan-only results are compared with everything above
        hits += _unescaped(text, hits, walk, depth, rounds)
    return hits


def _hit(match: Match, encoding: str | None, walk: _Walk) -> Hit:
    start, end = match.view.span(match.start, match.end) if walk.spans else (0, 0)
    return Hit(match.rule, encoding, start, end)


def _unescaped(text: str, hits: list[Hit], walk: _Walk, depth: int, rounds: int) -> list[Hit]:
    view = unescaped(text)
    if view is None:
        return []
    name = "url" if "%" in text else "escape"
    if rounds >= MAX_ROUNDS or not walk.spend(len(view.form)):
        return [Hit("encoded", name, 0, len(text))]
    inner = _inspect(view.form, walk, depth, rounds + 1)
    if walk.spans:
        return [_through(view, hit, name) for hit in inner]
    # Scanning only: what the unchanged parts hold is already in ``hits``.
    seen = {(hit.rule, hit.encoding) for hit in hits}
    return [_through(view, hit, name) for hit in inner if (hit.rule, hit.encoding) not in seen]


def _through(view: View, hit: Hit, name: str) -> Hit:
    start, end = view.span(hit.start, hit.end) if hit.end > hit.start else (0, 0)
    encoding = name if hit.encoding is None else f"{name}/{hit.encoding}"
    return Hit(hit.rule, encoding, start, end)


def _runs(form: str, covered: Spans | None) -> list[tuple[int, int, str, bytes]]:
    """Base64 and hex runs outside text findings (a private key's body), decoded to bytes that may be text.

    A hex run is always inside a run of the base64 alphabet, so one pass over the text finds both.
    """
    found: list[tuple[int, int, str, bytes]] = []
    for run in _BASE64_RUN.finditer(form):
        text = run.group()
        start, end = run.span()
        if _WORD.fullmatch(text) or (covered is not None and covered.covers(start, end)):
            continue
        found.extend((start, end, "base64", raw) for raw in _base64(text) if _TEXTISH.search(raw))
        if end - start >= MIN_HEX:
            for hex_run in _HEX_RUN.finditer(form, start, end):
                low, high = hex_run.span()
                found.extend((low, high, "hex", raw) for raw in _hex(hex_run.group()) if _TEXTISH.search(raw))
    return found


def _base64(run: str) -> list[bytes]:
    body = run.rstrip("=").translate(_URLSAFE)
    if len(body) % 4 == 1:
        body = body[:-1]
    try:
        return [binascii.a2b_base64(body + "=" * (-len(body) % 4))]
    except binascii.Error:
        return []


def _hex(run: str) -> list[bytes]:
    # Both alignments: a hex run glued to a hex-looking letter starts one character late.
    return [bytes.fromhex(run[offset : offset + (len(run) - offset) // 2 * 2]) for offset in (0, 1)]


def _decoded(view: View, start: int, end: int, name: str, raw: bytes, walk: _Walk, depth: int) -> list[Hit]:
    """Findings in one decoded run, each spanning the whole run: a secret cannot be cut out of an encoding."""
    low, high = view.span(start, end) if walk.spans else (0, 0)
    if depth >= MAX_DEPTH:
        # One layer too many to open: a run that decodes to text is refused rather than let through.
        return [Hit("encoded", name, low, high)] if _TEXTUAL.fullmatch(raw) else []
    inner = raw.decode("utf-8", "replace")
    if not walk.spend(len(inner)):
        return [Hit("encoded", name, low, high)]
    return [
        Hit(hit.rule, name if hit.encoding is None else f"{name}/{hit.encoding}", low, high)
        for hit in _inspect(inner, walk, depth + 1, 0)
    ]
