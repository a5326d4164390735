"""DLP rules, evasions and redaction, on hostile strings; findings never carry the matched value."""

from __future__ import annotations

import base64

import pytest

from mcp_gateway.dlp import Finding, redact, scan, scan_text

AWS = "AKIAIOSFODNN7EXAMPLE"
JWT = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVz"


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("write to ada.lovelace@example.co.uk", "email"),
        ("call +44 20 7946 0958 today", "phone"),
        ("call (555) 123-4567", "phone"),
        ("ssn 123-45-6789", "national_id"),
        ("NI number AB 12 34 56 C", "national_id"),
        ("card 4111 1111 1111 1111", "card"),
        ("card 5500-0000-0000-0004", "card"),
        ("iban GB82 WEST 1234 5698 7654 32", "iban"),
        ("iban DE89370400440532013000", "iban"),
        (f"key {AWS}", "api_key"),
        ("token ghp_" + "a1" * 18, "api_key"),
        ("api_key = 'sup3r-s3cret-value'", "api_key"),
        ("password: hunter2hunter2", "api_key"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk=", "private_key"),
        (f"bearer {JWT}", "jwt"),
    ],
)
def test_each_rule_finds_its_kind(text: str, rule: str) -> None:
    assert [finding.rule for finding in scan_text(text, "arguments/q")] == [rule]


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112",  # fails Luhn
        "iban GB82 WEST 1234 5698 7654 33",  # fails mod 97
        "eta 2026-12-01, order o-1, price 12.0, customer c-100",
        "at 1700000000 the run 3f2504e0-4f89-11d3-9a0c-0305e82c3301 finished",
        "sha256 " + "ab" * 32,
        "ssn 000-12-3456",  # never issued
        "The customer cannot log in since Tuesday, please help.",
        "eyJub3QiOiJhIGp3dCJ9.eyJzdWIiOiJhbGljZSJ9",  # two segments only
    ],
)
def test_lookalikes_are_not_findings(text: str) -> None:
    assert scan_text(text) == []


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("4111\u200b1111\u200b1111\u200b1111", "card"),
        ("4111\u200d1111 1111\ufeff1111", "card"),
        ("4111 1111 1111 1111".translate({ord(d): 0xFF10 + int(d) for d in "0123456789"}), "card"),  # fullwidth
        ("123\u00ad45\u00ad6789", "national_id"),
        ("ada\u200b@example.com", "email"),
        ("AKIA\u200bIOSFODNN7EXAMPLE", "api_key"),
    ],
)
def test_invisible_characters_and_other_digits_do_not_hide_data(text: str, rule: str) -> None:
    assert [finding.rule for finding in scan_text(text)] == [rule]


@pytest.mark.parametrize(
    "secret",
    [f"my key is {AWS}", "-----BEGIN PRIVATE KEY-----", "card 4111111111111111"],
)
@pytest.mark.parametrize("encode", [base64.b64encode, base64.urlsafe_b64encode])
def test_base64_of_a_secret_is_found(secret: str, encode: object) -> None:
    encoded = encode(secret.encode()).decode().rstrip("=")  # type: ignore[operator]
    findings = scan_text(f"payload {encoded} end", "arguments/blob")
    assert findings
    assert all(finding.encoding == "base64" for finding in findings)
    assert "base64" in redact(f"payload {encoded} end")
    assert encoded not in redact(f"payload {encoded} end")


def test_findings_hold_rule_and_path_never_the_value() -> None:
    value = {"notes": [{"text": "mail ada@example.com"}], "ada@example.com": {"card": "4111111111111111"}}
    findings = scan(value, "arguments")
    assert set(findings) == {
        Finding("email", "arguments/notes/0/text"),
        Finding("email", "arguments/*"),
        Finding("card", "arguments/*/card"),
    }
    assert "ada" not in repr(findings)
    assert "4111" not in repr(findings)


def test_path_segments_are_escaped() -> None:
    assert scan({"a/b": "mail ada@example.com"}, "r") == [Finding("email", "r/a~1b")]


def test_redaction_replaces_every_span_and_keys() -> None:
    value = {"to": "ada@example.com and bob@example.org", "ada@example.com": 1, "n": 5, "ok": "fine"}
    assert redact(value) == {
        "to": "[REDACTED:email] and [REDACTED:email]",
        "[REDACTED:email]": 1,
        "n": 5,
        "ok": "fine",
    }


def test_redaction_covers_the_hidden_characters_too() -> None:
    assert redact("pay 4111\u200b1111\u200b1111\u200b1111 now") == "pay [REDACTED:card] now"


def test_large_inputs_scan_in_linear_time() -> None:
    import time

    hostile = ("1 " * 50_000) + ("a@" * 50_000) + ("eyJ" * 20_000)
    started = time.process_time()
    scan_text(hostile)
    # Generous bound: catastrophic backtracking would take minutes, not seconds.
    assert time.process_time() - started < 5
