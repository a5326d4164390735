"""The detectors: each rule matched on a normalised view, then checked by its validator.

Addresses, keys and tokens are matched on the folded view; numbers (cards, IBANs, national ids, phones) on the
numeric view, where every separator run is one space, so a pattern allows one optional space between the
characters of a number and that covers any run of any separator. A card is any window of 13-19 digits of a
chain of digit groups that starts and ends at group edges and passes Luhn; an IBAN any prefix of 15-34
characters that ends at a group edge and passes mod-97. A private key runs from its BEGIN line through its END
line, or to the end of the text when there is none.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from itertools import accumulate
from typing import NamedTuple

from mcp_gateway.dlp.views import View, folded, numeric

__all__ = ["NUMBER_RULES", "TEXT_RULES", "Match", "Spans", "direct"]

TEXT_RULES = ("email", "api_key", "private_key", "jwt")
NUMBER_RULES = ("iban", "national_id", "card", "phone")

_PEM = r"\s+(?:[A-Z0-9]+\s+){0,4}PRIVATE\s+KEY(?:\s+BLOCK)?\s*-{5}"
_SECRETS = re.compile(
    rf"(?P<private_key>(?i:-{{5}}\s*BEGIN{_PEM}))"
    r"|(?P<jwt>\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*)"
    r"|(?P<api_key>\b(?:AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,}"
    r"|xox[abposr]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35}|[rs]k_live_[0-9A-Za-z]{16,}"
    r"|sk-(?:proj-)?[A-Za-z0-9_-]{20,})"
    r"|(?i:\b(?:api[_-]?key|secret(?:[_-]?key)?|access[_-]?token|password|passwd)\b[\"']?\s*[:=]\s*[\"']?"
    r"(?!\[REDACTED)[^\s\"',;]{8,}))"
)
_PEM_END = re.compile(rf"(?i:-{{5}}\s*END{_PEM})")
# Lower-case marks of anything _SECRETS can match: a cheap superset test before the expensive pattern (a loop of
# ``in`` tests: a case-insensitive alternation in ``re`` costs ten times more).
_SECRET_MARKS = (
    "private", "eyj", "akia", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "xox", "aiza", "k_live_",
    "sk-", "key", "secret", "token", "passw",
)  # fmt: skip
_EMAIL = re.compile(
    r"\b[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*\.[A-Za-z]{2,24}\b"
)
# On the numeric view: digits are ASCII and every separator run is a single space. Each pattern opens with a
# lookahead for the characters it can start with, which lets ``re`` skip other positions quickly.
_IBAN = re.compile(r"(?=[A-Z])(?<![A-Za-z0-9])[A-Z] ?[A-Z] ?[0-9] ?[0-9](?: ?[A-Z0-9]){11,30}")
_OTHERS = re.compile(
    r"(?=[0-9(+A-Z])(?:(?P<national_id>\b(?!000|666|9[0-9][0-9])[0-9]{3} ?(?!00)[0-9]{2} ?(?!0000)[0-9]{4}\b"
    r"|\b[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-D]\b)"
    r"|(?P<phone>(?<![A-Za-z0-9+])\+ ?[0-9](?: ?\(?[0-9]\)?){7,14}(?![0-9])"
    r"|(?<![A-Za-z0-9])\(?[0-9]{2,5}\)? [0-9]{2,5} [0-9]{3,5}(?: [0-9]{2,5})?(?![A-Za-z0-9])))"
)
# The fewest digits each kind of number holds (an IBAN its two check digits, an NI number six, a phone eight, an
# SSN nine, a card thirteen): a text with fewer skips those patterns.
_FEWEST_DIGITS = {"iban": 2, "other": 6, "card": 13}
_CHAIN = re.compile(r"(?=[0-9])[0-9]+(?: [0-9]+)*")
_DIGIT = re.compile(r"[0-9]")
_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)  # Luhn: a doubled digit, its digits summed


class Match(NamedTuple):
    """A rule matched on ``view.form[start:end]``; ``view.span(start, end)`` is where it is in the original."""

    rule: str
    view: View
    start: int
    end: int


def direct(text: str) -> tuple[list[Match], View]:
    """Every rule matched in ``text`` itself (no decoding), and the folded view the decoders look at."""
    view = folded(text)
    form = view.form
    found: list[Match] = []
    if "@" in form:
        found += [Match("email", view, m.start(), m.end()) for m in _EMAIL.finditer(form)]
    if _may_hold_secret(form):
        found += _secrets(view)
    digits = sum(map(form.count, "0123456789")) if _DIGIT.search(form) else 0
    if digits >= _FEWEST_DIGITS["iban"]:
        found += _numbers(numeric(text), digits)
    return found, view


def _may_hold_secret(form: str) -> bool:
    lowered = form.lower()
    for mark in _SECRET_MARKS:
        if mark in lowered:
            return True
    return False


def _secrets(view: View) -> Iterator[Match]:
    form = view.form
    position = 0
    while (match := _SECRETS.search(form, position)) is not None:
        rule, end = match.lastgroup, match.end()
        if rule == "private_key":
            # The whole key goes, however many lines it spans; without an END line, the rest of the text. The
            # search goes on after it, so each character is looked at once however many BEGIN lines there are.
            closing = _PEM_END.search(form, end)
            end = closing.end() if closing else len(form)
        if rule is not None and (rule != "jwt" or _jwt_ok(match.group())):
            yield Match(rule, view, match.start(), end)
        position = max(end, match.start() + 1)


def _numbers(view: View, digits: int) -> list[Match]:
    form = view.form
    shapes = list(_ibans(form))
    ibans = Spans((start, end) for start, end, valid in shapes if valid)
    cards = [] if digits < _FEWEST_DIGITS["card"] else [span for span in _cards(form) if not ibans.overlaps(*span)]
    found = [Match("iban", view, start, end) for start, end, valid in shapes if valid]
    found += [Match("card", view, start, end) for start, end in cards]
    if digits < _FEWEST_DIGITS["other"]:
        return found
    # A phone number is the weakest rule: never inside a card, or inside anything shaped like an IBAN.
    taken = Spans([*cards, *((start, end) for start, end, _ in shapes)])
    for match in _OTHERS.finditer(form):
        rule = match.lastgroup
        if rule == "phone" and (not _phone_ok(match.group()) or taken.overlaps(match.start(), match.end())):
            continue
        if rule is not None:
            found.append(Match(rule, view, match.start(), match.end()))
    return found


class Spans:
    """Spans, sorted, answering "does any overlap [start, end)?" in O(log n): a hostile text has many of both."""

    def __init__(self, spans: Iterable[tuple[int, int]]) -> None:
        ordered = sorted(spans)
        self._starts = [start for start, _ in ordered]
        self._reach = list(accumulate((end for _, end in ordered), max))  # furthest end among the first k

    def overlaps(self, start: int, end: int) -> bool:
        before = bisect_left(self._starts, end)  # spans that start before ``end``
        return before > 0 and self._reach[before - 1] > start

    def covers(self, start: int, end: int) -> bool:
        before = bisect_right(self._starts, start)  # spans that start at or before ``start``
        return before > 0 and self._reach[before - 1] >= end


def _ibans(form: str) -> Iterator[tuple[int, int, bool]]:
    """IBAN-shaped spans, and whether each is an IBAN (a prefix passing mod-97, then the search goes on after it)."""
    position = 0
    while (match := _IBAN.search(form, position)) is not None:
        end = _iban_end(form, match.start(), match.end())
        yield match.start(), end or match.end(), end is not None
        position = end or match.start() + 1


def _iban_end(form: str, start: int, limit: int) -> int | None:
    """The end of the longest prefix of ``form[start:limit]`` that ends at a group edge and passes mod-97.

    The mod-97 remainder of the rearranged number is kept as a running prefix, so each candidate is O(1).
    """
    compact = form[start:limit].replace(" ", "")
    head = "".join(str(int(char, 36)) for char in compact[:4])
    remainders = [0]
    for char in compact[4:]:
        value = int(char, 36)
        remainders.append((remainders[-1] * (100 if value > 9 else 10) + value) % 97)
    edges = [index for index in range(start + 1, limit) if form[index] == " "]
    if limit == len(form) or not form[limit].isalnum():
        edges.append(limit)
    best = None
    for end in edges:
        length = end - start - form.count(" ", start, end)
        if 15 <= length <= 34 and (remainders[length - 4] * 10 ** len(head) + int(head)) % 97 == 1:
            best = end
    return best


def _cards(form: str) -> Iterator[tuple[int, int]]:
    """Spans of 13-19-digit windows of digit chains that start and end at group edges and pass Luhn."""
    for chain in _CHAIN.finditer(form):
        text = chain.group()
        if len(text) < 13:
            continue
        where = [index for index, char in enumerate(text) if char != " "]
        digits = [int(text[index]) for index in where]
        if len(digits) < 13:
            continue
        edges = list(accumulate(len(group) for group in text.split(" ")))
        for first, last in _luhn_windows(digits, [0, *edges[:-1]], edges):
            yield chain.start() + where[first], chain.start() + where[last - 1] + 1


def _luhn_windows(digits: list[int], starts: list[int], ends: list[int]) -> Iterator[tuple[int, int]]:
    """Windows ``[start, end)`` of 13-19 digits between group edges whose Luhn sum is a multiple of ten.

    Prefix sums by position parity make each window O(1), so a hostile chain of one-digit groups stays linear.
    """
    plain = [[0], [0]]
    doubled = [[0], [0]]
    for index, digit in enumerate(digits):
        for parity in (0, 1):
            plain[parity].append(plain[parity][-1] + (digit if index % 2 == parity else 0))
            doubled[parity].append(doubled[parity][-1] + (_DOUBLED[digit] if index % 2 == parity else 0))
    low = 0
    for start in starts:
        while low < len(ends) and ends[low] - start < 13:
            low += 1
        for index in range(low, len(ends)):
            end = ends[index]
            if end - start > 19:
                break
            kept = (end - 1) % 2  # the last digit is never doubled, nor is every second one before it
            total = plain[kept][end] - plain[kept][start] + doubled[1 - kept][end] - doubled[1 - kept][start]
            if total % 10 == 0:
                yield start, end


def _phone_ok(text: str) -> bool:
    # With a country code 8-15 digits (E.164); national numbers written without one have at least 10.
    count = len(_DIGIT.findall(text))
    return (8 if text.startswith("+") else 10) <= count <= 15


def _jwt_ok(text: str) -> bool:
    head = text.split(".", 1)[0]
    try:
        return isinstance(json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))), dict)
    except (ValueError, binascii.Error):
        return False
