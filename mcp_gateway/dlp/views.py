"""Normalised views of a text for the detectors, each able to map a matched span back to the original.

Two views, both built with ``str.translate`` and a per-character table (cached, bounded), so ASCII text costs
one pass in C:

* :func:`folded` (for addresses, keys, tokens): format characters (Unicode ``Cf``: zero-width space and joiners,
  word joiner, BOM, soft hyphen, bidi marks, ...), lone surrogates, private-use and unassigned code points, and
  combining marks (``Mn``, ``Me``) are removed; a character
  whose compatibility form (NFKC) is one ASCII character becomes it (fullwidth letters and dots); any decimal
  digit, and any digit such as a superscript or circled one, becomes its ASCII digit.
* :func:`numeric` (for card, IBAN, national id and phone numbers): the folded text, with every run of
  separators written as one space. :data:`SEPARATORS` is the one definition of a separator.

:func:`unescaped` undoes one round of percent-encoding (``%34``) and backslash escapes (``\\t``, ``\\u0034``,
``\\x34``) with its own map, so the layers above can find what those escapes hide and redact it in place.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import Final

__all__ = ["SEPARATORS", "View", "folded", "is_separator", "numeric", "unescaped"]

SEPARATORS: Final = (
    "any run of: Unicode whitespace (categories Zs, Zl, Zp, and all control characters Cc, so tab, newline, "
    "CR, VT, FF); dashes and hyphens (category Pd) and minus signs; slashes (/, \\, fraction and division "
    "slash, fullwidth and big solidus); dots (., middle dot, one-dot leader, hyphenation point, bullet and dot "
    "operators, ideographic and fullwidth full stops); commas (ASCII, Arabic, ideographic, fullwidth, small); "
    "underscores and other connector punctuation (category Pc); a plus sign between two digits (a form-encoded "
    "space); format characters (category Cf), surrogates, private-use and unassigned code points and combining marks "
    "are removed first"
)
_SEPARATOR_NAMES = ("COMMA", "FULL STOP", "SOLIDUS", "SLASH", "MIDDLE DOT", "DOT OPERATOR", "BULLET", "MINUS",
                    "HYPHEN", "DASH", "LOW LINE", "DOT LEADER", "HYPHENATION POINT", "ELLIPSIS")  # fmt: skip
_ASCII_SEPARATORS = frozenset(chr(code) for code in range(0x21)) | frozenset("\x7f-/\\.,_")
# Invisible or meaningless between digits: format characters, lone surrogates, private-use and unassigned code
# points, combining marks. (Controls, Cc, are separators instead.)
_DROPPED_CATEGORIES = frozenset({"Cf", "Cs", "Co", "Cn", "Mn", "Me"})
_SPACE_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Cc", "Pd", "Pc"})
_CACHE_LIMIT = 8192  # distinct non-ASCII characters remembered per table: a hostile text cannot grow it further


def is_separator(char: str) -> bool:
    """Whether ``char`` belongs to :data:`SEPARATORS` (the plus sign only counts between digits)."""
    if char in _ASCII_SEPARATORS:
        return True
    if char.isascii():
        return False
    category = unicodedata.category(char)
    if category in _SPACE_CATEGORIES:
        return True
    compatible = unicodedata.normalize("NFKC", char)
    if len(compatible) == 1 and compatible in _ASCII_SEPARATORS:
        return True
    name = unicodedata.name(char, "")
    return category[0] in "PS" and any(part in name for part in _SEPARATOR_NAMES)


def _fold(char: str) -> str | None:
    """What the folded view writes for one character: ``None`` to remove it."""
    if unicodedata.category(char) in _DROPPED_CATEGORIES:
        return None
    if char.isdecimal():
        return str(unicodedata.decimal(char))
    digit = unicodedata.digit(char, None)
    if digit is not None:
        return str(digit)
    compatible = unicodedata.normalize("NFKC", char)
    return compatible if len(compatible) == 1 and compatible.isascii() else char


def _number(char: str) -> str | None:
    folded_char = _fold(char)
    if folded_char is None:
        return None
    return " " if is_separator(char) or is_separator(folded_char) else folded_char


class _Table(dict[int, str | None]):
    """A ``str.translate`` table that classifies each character once, up to :data:`_CACHE_LIMIT` of them."""

    def __init__(self, classify: Callable[[str], str | None], ascii_map: dict[int, str | None]) -> None:
        super().__init__(ascii_map)
        self._classify = classify

    def __missing__(self, code: int) -> str | None:
        value = self._classify(chr(code))
        if len(self) < _CACHE_LIMIT:
            self[code] = value
        return value


_FOLD = _Table(_fold, {code: chr(code) for code in range(128)})
_NUMBER = _Table(_number, {code: (" " if chr(code) in _ASCII_SEPARATORS else chr(code)) for code in range(128)})
# bytes.translate: for ASCII text ten times faster than str.translate with a mapping.
_ASCII_NUMBER = bytes.maketrans("".join(sorted(_ASCII_SEPARATORS)).encode(), b" " * len(_ASCII_SEPARATORS))
# Two passes with literal prefixes: one pattern with both alternatives costs ten times more on prose.
_PLUS = re.compile(r"(?<=[0-9])\+(?=[0-9])")
_SPACE_RUN = re.compile(r"  [ ]*")
_DIGITS = frozenset("0123456789")


class View:
    """A normalised ``form`` of an ``original`` text, mapping spans of the form back to the original.

    The maps are built only when a span is asked for: scanning needs the form alone.
    """

    __slots__ = ("_build", "_ends", "_starts", "form", "original")

    def __init__(
        self,
        original: str,
        form: str,
        build: Callable[[], tuple[list[int], list[int]]] | None = None,
    ) -> None:
        self.original = original
        self.form = form
        self._build = build
        self._starts: list[int] | None = None
        self._ends: list[int] | None = None

    @property
    def identity(self) -> bool:
        return self._build is None

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The original span of ``form[start:end]`` (``end > start``), covering everything hidden inside it."""
        if self._build is None:
            return start, end
        if self._starts is None or self._ends is None:
            self._starts, self._ends = self._build()
        return self._starts[start], self._ends[end - 1]


def folded(text: str) -> View:
    if text.isascii():
        return View(text, text)
    form = text.translate(_FOLD)
    return View(text, form, lambda: _char_map(text, _FOLD, collapse=False))


def numeric(text: str) -> View:
    if text.isascii():
        form = text.encode("ascii").translate(_ASCII_NUMBER).decode("ascii")
    else:
        form = text.translate(_NUMBER)
    if "+" in form:
        form = _PLUS.sub(" ", form)
    if "  " in form:
        form = _SPACE_RUN.sub(" ", form)
    return View(text, form, lambda: _char_map(text, _NUMBER, collapse=True))


def _char_map(text: str, table: _Table, *, collapse: bool) -> tuple[list[int], list[int]]:
    """Where each character of the view came from: ``text.translate(table)``, runs collapsed as in the form."""
    kept = [(index, value) for index, char in enumerate(text) if (value := table[ord(char)]) is not None]
    starts: list[int] = []
    in_run = False
    last = len(kept) - 1
    for position, (index, value) in enumerate(kept):
        if collapse:
            space = value == " " or (
                value == "+"
                and 0 < position < last
                and kept[position - 1][1] in _DIGITS
                and kept[position + 1][1] in _DIGITS
            )
            if space and in_run:
                continue
            in_run = space
        starts.append(index)
    return starts, [start + 1 for start in starts]


_ESCAPE = re.compile(
    r"(?P<percent>(?:%[0-9A-Fa-f]{2})+)"
    r"|\\(?:u(?P<u>[0-9A-Fa-f]{4})|U(?P<big_u>[0-9A-Fa-f]{8})|x(?P<x>[0-9A-Fa-f]{2})|(?P<char>[tnrfvb0/\\\"']))"
)
_SIMPLE = {"t": "\t", "n": "\n", "r": "\r", "f": "\f", "v": "\v", "b": "\b", "0": "\0"}


def unescaped(text: str) -> View | None:
    """``text`` with one round of percent-encoding and backslash escapes undone, or ``None`` if it has none.

    A decoded character maps back to the whole escape it came from (a run of ``%XX`` decodes together, as
    UTF-8, so a character maps to the whole run).
    """
    if "%" not in text and "\\" not in text:
        return None
    parts: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    cursor = 0
    for match in _ESCAPE.finditer(text):
        start, end = match.span()
        parts.append(text[cursor:start])
        starts.extend(range(cursor, start))
        ends.extend(range(cursor + 1, start + 1))
        decoded = _decode_escape(match)
        parts.append(decoded)
        starts.extend([start] * len(decoded))
        ends.extend([end] * len(decoded))
        cursor = end
    if cursor == 0:
        return None
    parts.append(text[cursor:])
    starts.extend(range(cursor, len(text)))
    ends.extend(range(cursor + 1, len(text) + 1))
    return View(text, "".join(parts), lambda: (starts, ends))


def _decode_escape(match: re.Match[str]) -> str:
    if (percent := match.group("percent")) is not None:
        return bytes.fromhex(percent.replace("%", "")).decode("utf-8", "replace")
    code = match.group("u") or match.group("big_u") or match.group("x")
    if code is not None:
        value = int(code, 16)
        return chr(value) if value <= 0x10FFFF else "\ufffd"
    char = match.group("char")
    return _SIMPLE.get(char, char)
