"""DLP as properties: any separator run, any claimed encoding layer, any JSON type, any span length.

The strategies draw from the same classes the scanner claims in its docstring; the negative properties keep
false positives in check (digit runs that fail Luhn are not cards, ordinary prose is clean).
"""

from __future__ import annotations

import base64
import json
import string
import unicodedata
from typing import Any
from urllib.parse import quote

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mcp_gateway.dlp import redact, scan, scan_text

# Shared machine, CPU-bound scans: no per-example deadline, a bounded number of examples per property.
settings.register_profile("dlp", deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("dlp")

# --- the classes, drawn from Unicode itself rather than listed by hand ----------------------------------------

UNICODE_SPACES = [chr(c) for c in range(0x10000) if unicodedata.category(chr(c)) == "Zs"]
DASHES = [chr(c) for c in range(0x10000) if unicodedata.category(chr(c)) == "Pd"] + ["\u2212", "\u207b", "\u208b"]
SLASHES = ["/", "\\", "\u2044", "\u2215", "\uff0f", "\u29f8"]
DOTS = [".", "\u00b7", "\u2024", "\u2027", "\u2219", "\u22c5", "\u30fb", "\uff0e", "\u3002"]
COMMAS = [",", "\u060c", "\u3001", "\uff0c", "\ufe50"]
UNDERSCORES = [chr(c) for c in range(0x10000) if unicodedata.category(chr(c)) == "Pc"]
FORMAT = [chr(c) for c in range(0x10000) if unicodedata.category(chr(c)) in ("Cf", "Cs", "Co", "Mn")][::7]
SEPARATOR_CHARS = [*UNICODE_SPACES, "\t", "\n", "\r", "\v", "\f", *DASHES, *SLASHES, *DOTS, *COMMAS, *UNDERSCORES]
DIGIT_SETS = [
    [chr(c) for c in range(zero, zero + 10)]
    for zero in range(0x110000)
    if unicodedata.category(chr(zero)) == "Nd" and unicodedata.decimal(chr(zero)) == 0
]

separator_runs = (
    st.lists(st.sampled_from(SEPARATOR_CHARS + FORMAT), min_size=1, max_size=6)
    .map("".join)
    .filter(lambda run: any(char not in FORMAT for char in run))
)
WORDS = (
    "the customer reports that invoice sent on tuesday shows wrong delivery address and asks for corrected copy "
    "before end of month please check order history reply to ticket our team will call back soon thanks regards "
    "London Paris shipping gold silver account manager weekly meeting notes agenda Monday review"
).split()


def luhn_ok(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char) * (2 if index % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def luhn_complete(body: str) -> str:
    return next(body + check for check in string.digits if luhn_ok(body + check))


cards = (
    st.integers(11, 17)
    .flatmap(
        lambda n: st.builds(str.__add__, st.sampled_from("123456789"), st.text(string.digits, min_size=n, max_size=n))
    )
    .map(luhn_complete)
)


@st.composite
def split(draw: st.DrawFn, digits: str, *, outer: int = 1) -> str:
    """``digits`` in any decimal digit set, cut into groups (the outer ones at least ``outer`` long) by any runs."""
    cuts = sorted(draw(st.sets(st.integers(outer, len(digits) - outer), max_size=len(digits))))
    groups = [digits[a:b] for a, b in zip([0, *cuts], [*cuts, len(digits)], strict=True) if b > a]
    written = ["".join(draw(st.sampled_from(DIGIT_SETS))[int(d)] for d in group) for group in groups]
    return "".join(group + draw(separator_runs) for group in written[:-1]) + written[-1]


def rules(text: str) -> set[str]:
    return {finding.rule for finding in scan_text(text)}


# --- any separator run between digit groups ------------------------------------------------------------------


@given(st.data(), cards)
def test_a_card_split_any_way_is_found_and_redaction_covers_all_of_it(data: st.DataObject, card: str) -> None:
    written = data.draw(split(card))
    text = f"card {written} on file"
    assert "card" in rules(text)
    redacted = redact(text)
    assert redacted.startswith("card [REDACTED")
    assert redacted.endswith(" on file")
    assert not any(char.isdecimal() for char in redacted)
    assert scan_text(redacted) == []


@given(st.data(), st.integers(1, 899).filter(lambda a: a != 666), st.integers(1, 99), st.integers(1, 9999))
def test_an_ssn_with_any_separator_runs_between_its_groups_is_found(
    data: st.DataObject, area: int, group: int, serial: int
) -> None:
    runs = [data.draw(st.one_of(st.just(""), separator_runs)) for _ in range(2)]
    text = f"ssn {area:03d}{runs[0]}{group:02d}{runs[1]}{serial:04d} noted"
    assert "national_id" in rules(text)
    assert scan_text(redact(text)) == []


def iban(country: str, bban: str) -> str:
    moved = bban + country + "00"
    check = 98 - int("".join(str(int(char, 36)) for char in moved)) % 97
    return f"{country}{check:02d}{bban}"


ibans = st.builds(
    iban, st.text(string.ascii_uppercase, min_size=2, max_size=2), st.text(string.digits, min_size=11, max_size=30)
)


@given(st.data(), ibans)
def test_an_iban_split_any_way_is_found(data: st.DataObject, number: str) -> None:
    cuts = sorted(data.draw(st.sets(st.integers(1, len(number) - 1), max_size=8)))
    pieces = [number[a:b] for a, b in zip([0, *cuts], [*cuts, len(number)], strict=True)]
    text = "iban " + "".join(piece + data.draw(separator_runs) for piece in pieces[:-1]) + pieces[-1] + " ok"
    assert "iban" in rules(text)
    assert scan_text(redact(text)) == []


# --- false positives in check ----------------------------------------------------------------------------------


@given(st.data(), st.integers(13, 19).flatmap(lambda n: st.text(string.digits, min_size=n, max_size=n)))
def test_digits_that_fail_luhn_are_not_a_card(data: st.DataObject, digits: str) -> None:
    assume(not luhn_ok(digits))
    # Outer groups long enough that no 13-digit window inside the number starts or ends at a cut.
    written = data.draw(split(digits, outer=len(digits) - 12))
    assert "card" not in rules(f"ref {written} end")


@given(st.lists(st.one_of(st.sampled_from(WORDS), st.integers(0, 999).map(str)), min_size=1, max_size=60), st.data())
def test_ordinary_prose_is_clean(tokens: list[str], data: st.DataObject) -> None:
    # Numbers up to three digits, never two in a row: prose, not a table of figures.
    words = [token for i, token in enumerate(tokens) if not (token.isdigit() and i and tokens[i - 1].isdigit())]
    punctuation = st.sampled_from([" ", " ", " ", ", ", ". ", "; ", " - ", "\n"])
    text = "".join(word + data.draw(punctuation) for word in words)
    assert scan_text(text) == []
    assert redact(text) == text


# --- any encoding layer we claim, nested up to three deep ------------------------------------------------------

SECRETS = [
    "4111111111111111",
    "4111 1111 1111 1111",
    "123-45-6789",
    "123456789",
    "ada@example.com",
    "AKIAIOSFODNN7EXAMPLE",
    "GB82WEST12345698765432",
    "-----BEGIN PRIVATE KEY-----",
]
SECRET_RULES = ["card", "card", "national_id", "national_id", "email", "api_key", "iban", "private_key"]


def percent_all(text: str) -> str:
    return "".join(f"%{byte:02X}" for byte in text.encode())


def escaped(text: str) -> str:
    """Letters and digits as JSON ``\\uXXXX`` escapes; a backslash escaped too, as JSON does."""
    return "".join("\\\\" if char == "\\" else f"\\u{ord(char):04x}" if char.isalnum() else char for char in text)


ENCODERS: dict[str, Any] = {
    "base64": lambda text: base64.b64encode(text.encode()).decode(),
    "base64-unpadded": lambda text: base64.b64encode(text.encode()).decode().rstrip("="),
    "base64url": lambda text: base64.urlsafe_b64encode(text.encode()).decode().rstrip("="),
    "hex": lambda text: text.encode().hex(),
    "HEX": lambda text: text.encode().hex().upper(),
    "url": lambda text: quote(text, safe=""),
    "url-every-byte": percent_all,
    "escape": escaped,
}


@given(st.sampled_from(range(len(SECRETS))), st.lists(st.sampled_from(sorted(ENCODERS)), min_size=1, max_size=3))
def test_a_secret_in_any_claimed_encoding_up_to_three_layers_is_found(index: int, layers: list[str]) -> None:
    encoded = SECRETS[index]
    for layer in layers:
        encoded = ENCODERS[layer](encoded)
    assume(encoded != SECRETS[index])
    assert SECRET_RULES[index] in rules(encoded)
    redacted = redact(f"payload {encoded} end")
    assert encoded not in redacted
    assert redacted.startswith("payload ")
    # A private key with no END line is redacted to the end of the text; anything else leaves the rest alone.
    assert redacted.endswith(" end") or SECRET_RULES[index] == "private_key"
    assert scan_text(redacted) == []


# --- any JSON type: numbers, keys, nesting -----------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-999, 999) | st.floats(-1e3, 1e3) | st.sampled_from(WORDS),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(WORDS), children, max_size=4),
    max_leaves=12,
)


@given(json_values, cards, st.sampled_from(["int", "float", "string", "key"]), st.data())
def test_a_card_anywhere_in_a_json_value_is_found_in_any_type(
    value: Any, card: str, kind: str, data: st.DataObject
) -> None:
    assume(kind != "float" or int(card) < 2**53)  # exactly representable as a float
    planted: Any = {"int": int(card), "float": float(int(card)), "string": f"card {card}"}.get(kind)
    holder = {card: "x"} if kind == "key" else {"planted": planted}
    document = data.draw(st.sampled_from([[value, holder], {"other": value, "inner": holder}]))
    assert "card" in {finding.rule for finding in scan(document, "arguments")}
    redacted = redact(document)
    assert scan(redacted, "arguments") == []
    assert card not in json.dumps(redacted)


@given(st.integers())
def test_an_int_is_scanned_as_its_json_text(number: int) -> None:
    assert scan(number, "r") == scan_text(json.dumps(number), "r")


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_a_float_is_scanned_by_its_integer_digits(number: float) -> None:
    # Its fraction is representation noise (0.1 + 0.2 == 0.30000000000000004) that would pass Luhn one time in ten.
    assert scan(number, "r") == scan_text(str(int(number)), "r")


def test_booleans_never_match() -> None:
    assert scan([True, False, {"t": True}], "r") == []
    assert redact([True, False]) == [True, False]


# --- any span length: multi-line findings go as a whole ----------------------------------------------------------

b64_lines = st.lists(st.text(string.ascii_letters + string.digits + "+/", min_size=1, max_size=64), max_size=40)


@given(
    b64_lines,
    st.sampled_from(["RSA ", "EC ", "OPENSSH ", "ENCRYPTED ", ""]),
    st.booleans(),
    st.sampled_from(["\n", "\r\n", "\\n"]),
)
def test_a_private_key_is_redacted_from_begin_through_end(lines: list[str], kind: str, end: bool, newline: str) -> None:
    block = [f"-----BEGIN {kind}PRIVATE KEY-----", *lines] + ([f"-----END {kind}PRIVATE KEY-----"] if end else [])
    text = "before" + newline + newline.join(block) + (newline + "after" if end else "")
    redacted = redact(text)
    assert redacted == "before" + newline + "[REDACTED:private_key]" + (newline + "after" if end else "")
    assert scan_text(redacted) == []


# --- any text: findings never hold the value, redaction leaves nothing to find, work stays linear --------------------


@given(st.text(max_size=300))
def test_redaction_leaves_nothing_to_find_in_any_text(text: str) -> None:
    assume("encoded" not in rules(text))
    assert scan_text(redact(text)) == []


@given(st.text(st.sampled_from("0123456789 -./,_+%=\\uxAZaz@"), max_size=400))
def test_redaction_leaves_nothing_to_find_in_digit_heavy_text(text: str) -> None:
    assume("encoded" not in rules(text))
    assert scan_text(redact(text)) == []


@given(st.sampled_from(range(len(SECRETS))))
def test_findings_hold_rule_path_and_encoding_only(index: int) -> None:
    for finding in scan_text(base64.b64encode(SECRETS[index].encode()).decode() + " " + SECRETS[index], "p"):
        assert set(finding.as_record()) <= {"rule", "path", "encoding"}
        assert SECRETS[index] not in repr(finding)
