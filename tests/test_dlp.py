"""DLP rules, evasions and redaction, on hostile strings; findings never carry the matched value."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote

import pytest
import yaml

from mcp_gateway.dlp import Finding, redact, scan, scan_text
from mcp_gateway.gateway import Gateway
from mcp_gateway.identity import Principal
from tests.conftest import Deployment, GatewayFactory

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
        ("4111\ud8001111\ue0001111\U000e00011111", "card"),  # lone surrogate, private use, tag character
        ("4\u03011\u20e311 1111 1111 1111", "card"),  # combining accent and keycap
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


# --- issue #15: the separator class, every claimed encoding at any length, every JSON type, whole spans ------

CARD_GROUPS = ("4111", "1111", "1111", "1111")
# One representative of each kind of separator people (and evaders) put between digit groups.
SEPARATORS = [
    pytest.param("  ", id="two-spaces"),
    pytest.param("\t", id="tab"),
    pytest.param("\n", id="newline"),
    pytest.param("\r\n", id="crlf"),
    pytest.param("\u00a0", id="no-break-space"),
    pytest.param("\u2009", id="thin-space"),
    pytest.param("\u202f", id="narrow-no-break-space"),
    pytest.param("\u3000", id="ideographic-space"),
    pytest.param("\u2013", id="en-dash"),
    pytest.param("\u2014", id="em-dash"),
    pytest.param("\u2011", id="non-breaking-hyphen"),
    pytest.param("\u2212", id="minus-sign"),
    pytest.param("\uff0d", id="fullwidth-hyphen"),
    pytest.param("/", id="slash"),
    pytest.param("\u2044", id="fraction-slash"),
    pytest.param("\u2215", id="division-slash"),
    pytest.param("\\", id="backslash"),
    pytest.param(",", id="comma"),
    pytest.param(", ", id="comma-space"),
    pytest.param("\uff0c", id="fullwidth-comma"),
    pytest.param("_", id="underscore"),
    pytest.param("\u00b7", id="middle-dot"),
    pytest.param("+", id="plus"),  # a form-encoded space
    pytest.param(" \u200b-\u00a0", id="mixed-run"),
    pytest.param(" " * 40, id="long-run"),
]


@pytest.mark.parametrize("separator", SEPARATORS)
def test_a_card_split_by_any_separator_run_is_found_and_wholly_redacted(separator: str) -> None:
    text = f"pay {separator.join(CARD_GROUPS)} now"
    assert [finding.rule for finding in scan_text(text)] == ["card"]
    assert redact(text) == "pay [REDACTED:card] now"


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("ssn 123\u2013 45\t6789", "national_id"),
        ("ssn 123  45  6789", "national_id"),
        ("iban GB82\u00a0WEST\u00a01234\u00a05698\u00a07654\u00a032", "iban"),
        ("iban GB82_WEST_1234_5698_7654_32", "iban"),
        ("iban GB82 WEST 1234 5698 7654 32 OK", "iban"),  # followed by more capitals
        ("call +44\u00a020\u00a07946\u00a00958", "phone"),
        ("card 4111 1111 1111 1111 123", "card"),  # followed by more digits (a CVV)
        ("card \u2074\u00b9\u00b9\u00b9 1111 1111 1111", "card"),  # superscript digits
    ],
)
def test_other_number_rules_use_the_same_separator_class(text: str, rule: str) -> None:
    assert rule in {finding.rule for finding in scan_text(text)}
    assert scan_text(redact(text)) == []


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("encoded", "rule", "encoding"),
    [
        pytest.param(_b64("4111111111111111"), "card", "base64", id="card-24-chars"),
        pytest.param(_b64("4111111111111111").rstrip("="), "card", "base64", id="card-unpadded"),
        pytest.param(_b64("123-45-6789"), "national_id", "base64", id="ssn-16-chars"),
        pytest.param(_b64("123456789"), "national_id", "base64", id="ssn-12-chars"),
        pytest.param(_b64("ada@ex.io"), "email", "base64", id="email-12-chars"),
        pytest.param(base64.urlsafe_b64encode(b"\xfb\xff card 4111111111111111").decode(), "card", "base64",
                     id="base64url"),
        pytest.param(b"4111111111111111".hex(), "card", "hex", id="hex"),
        pytest.param(b"123456789".hex().upper(), "national_id", "hex", id="hex-upper"),
        pytest.param("%34%31%31%31%31%31%31%31%31%31%31%31%31%31%31%31", "card", "url", id="url-every-byte"),
        pytest.param("card%204111%201111%201111%201111", "card", "url", id="url-spaces"),
        pytest.param("ada%40example.com", "email", "url", id="url-at-sign"),
        pytest.param('\\u0034\\u0031\\u0031\\u0031 1111 1111 1111', "card", "escape", id="json-escapes"),
        pytest.param("4111\\t1111\\t1111\\t1111", "card", "escape", id="json-escaped-tabs"),
        pytest.param(_b64(_b64("123456789")), "national_id", "base64/base64", id="base64-twice"),
        pytest.param(_b64("4111111111111111").encode().hex(), "card", "hex/base64", id="hex-of-base64"),
        pytest.param(_b64("4111111111111111").replace("=", "%3D"), "card", "base64", id="url-of-base64"),
        pytest.param(quote(base64.b64encode(b"\xfb card 4111111111111111").decode(), safe=""), "card",
                     "url/base64", id="url-inside-base64"),
    ],
)  # fmt: skip
def test_every_claimed_encoding_is_decoded_at_any_length(encoded: str, rule: str, encoding: str) -> None:
    findings = scan_text(encoded, "arguments/q")
    assert Finding(rule, "arguments/q", encoding) in findings
    redacted = redact(f"x {encoded} y")
    assert encoded not in redacted
    assert redacted.startswith("x ")
    assert redacted.endswith(" y")
    assert scan_text(redacted) == []


def test_a_fourth_nested_encoding_fails_closed() -> None:
    deep = "card 4111111111111111"
    for _ in range(4):
        deep = _b64(deep)
    assert "encoded" in {finding.rule for finding in scan_text(deep)}
    assert "encoded" in redact(f"x {deep} y")


@pytest.mark.parametrize(
    ("value", "path"),
    [
        pytest.param({"n": 4111111111111111}, "a/n", id="int"),
        pytest.param({"n": 4111111111111111.0}, "a/n", id="float"),
        pytest.param({"n": [1, 2, 123456789]}, "a/n/2", id="int-in-list"),
        pytest.param({"n": {"deep": 4111111111111111}}, "a/n/deep", id="nested"),
        pytest.param({4111111111111111: "x"}, "a/*", id="number-key"),
    ],
)
def test_numbers_are_scanned_like_their_json_text(value: object, path: str) -> None:
    assert [finding.path for finding in scan(value, "a")] == [path]


def test_booleans_and_null_never_match_and_a_redacted_number_becomes_a_string() -> None:
    assert scan({"t": True, "f": False, "n": None, "small": 42, "pi": 3.14159}, "a") == []
    assert redact({"n": 4111111111111111, "ok": 7, "t": True}) == {"n": "[REDACTED:card]", "ok": 7, "t": True}


PEM_BODY = ["MIIEvQIBADANBgkqhkiG9w0BAQEFAASC", "BKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj", "MzEfYyjiWA4R4/M2bS1GB4t7NXp98C3S"]
PEM = "\n".join(["-----BEGIN RSA PRIVATE KEY-----", *PEM_BODY, "-----END RSA PRIVATE KEY-----"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(f"key:\n{PEM}\nthanks", "key:\n[REDACTED:private_key]\nthanks", id="begin-to-end"),
        pytest.param(f"key:\n{PEM.rsplit(chr(10), 1)[0]}", "key:\n[REDACTED:private_key]", id="no-end-line"),
        pytest.param(PEM.replace("\n", "\\n"), "[REDACTED:private_key]", id="json-escaped-newlines"),
        pytest.param(PEM.replace("RSA PRIVATE KEY", "PGP PRIVATE KEY BLOCK"), "[REDACTED:private_key]", id="pgp"),
    ],
)
def test_redaction_removes_a_private_key_from_begin_through_end(text: str, expected: str) -> None:
    assert redact(text) == expected


# --- the same items through the real gateway: arguments and results, block and redact ---------------------
#
# Arguments go to the example API's tickets.create (it echoes the summary it received) or to `crm.record` on
# the upstream below (it echoes the JSON body); results come from `crm.note`, whose upstream answers with the
# stored value named by the argument, so the argument itself holds nothing to find.

ALICE = Principal("alice", ("support",), "internal", (), None, "test", 2**40)
SPLIT_CARDS = [separator.values[0].join(CARD_GROUPS) for separator in SEPARATORS]
SHORT_ENCODED = [_b64("4111111111111111"), _b64("4111111111111111").rstrip("="), _b64("123456789")]


class Upstream:
    """A REST upstream on 127.0.0.1: `GET /note/<key>` answers a stored value, `POST /echo` its JSON body."""

    def __init__(self) -> None:
        self.notes: dict[str, Any] = {}
        self.echoed: list[Any] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._answer(200, {"note": outer.notes[self.path.rsplit("/", 1)[1]]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                outer.echoed.append(body)
                self._answer(200, {"received": body})

            def _answer(self, status: int, value: Any) -> None:
                data = json.dumps(value, ensure_ascii=False).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def note(self, value: Any) -> str:
        key = f"n{len(self.notes)}"
        self.notes[key] = value
        return key


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    thread = threading.Thread(target=server.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()
        thread.join(timeout=5)


@pytest.fixture(params=["block", "redact"])
def action(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def gateway(deployment: Deployment, make_gateway: GatewayFactory, upstream: Upstream, action: str) -> Gateway:
    """The internal catalog with `action` on every tool, plus three tools on the upstream above."""
    catalog = deployment.root / "catalogs" / "internal.yaml"
    data = yaml.safe_load(catalog.read_text())
    data["dlp"] = action
    data["rate_limit"] = "100000/minute"
    for tool in data["tools"]:
        tool.pop("dlp", None)
    read = {"read_only_hint": True}
    data["tools"] += [
        {"name": "crm.note", "description": "A stored note.", "annotations": read,
         "input_schema": {"type": "object", "properties": {"key": {"type": "string", "pattern": "^n[0-9]+$"}},
                          "required": ["key"], "additionalProperties": False},
         "backend": {"type": "http", "url": f"{upstream.url}/note/{{key}}"}},
        {"name": "crm.record", "description": "Record any value.", "annotations": read,
         "input_schema": {"type": "object", "properties": {"value": {}}, "required": ["value"]},
         "backend": {"type": "http", "method": "POST", "url": f"{upstream.url}/echo", "body": {"value": "value"}}},
        {"name": "crm.amount", "description": "Record an amount.", "annotations": read,
         "input_schema": {"type": "object", "properties": {"amount": {"type": "number"}}, "required": ["amount"]},
         "backend": {"type": "http", "method": "POST", "url": f"{upstream.url}/echo", "body": {"amount": "amount"}}},
    ]  # fmt: skip
    catalog.write_text(yaml.safe_dump(data))
    config = yaml.safe_load(deployment.config.read_text())
    config["egress"]["allow"].append(upstream.url)
    deployment.config.write_text(yaml.safe_dump(config))
    return make_gateway()


def refused(result: Any) -> dict[str, Any]:
    assert result.is_error, result
    body = dict(result.structured_content["error"])
    assert body["code"] == "dlp_blocked", body
    return body


def leaked(result: Any, *needles: str) -> list[str]:
    """Which needles the caller can see anywhere in the result (text blocks and structured content)."""
    shown = json.dumps(result.model_dump(mode="json"), ensure_ascii=False)
    texts = [block.text for block in result.content if block.type == "text"]
    return [needle for needle in needles if needle in shown or any(needle in text for text in texts)]


async def ticket(gateway: Gateway, summary: str) -> Any:
    return await gateway.call_tool(ALICE, "tickets.create", {"customer_id": "c-100", "summary": summary}, "r")


async def note(gateway: Gateway, upstream: Upstream, value: Any) -> Any:
    return await gateway.call_tool(ALICE, "crm.note", {"key": upstream.note(value)}, "r")


async def test_gateway_cards_split_by_any_separator_in_arguments(gateway: Gateway, action: str) -> None:
    for card in SPLIT_CARDS:
        result = await ticket(gateway, f"refund card {card} please")
        if action == "block":
            refused(result)
        else:
            assert result.structured_content["summary"] == "refund card [REDACTED:card] please", repr(card)


async def test_gateway_cards_split_by_any_separator_in_results(
    gateway: Gateway, upstream: Upstream, action: str
) -> None:
    for card in SPLIT_CARDS:
        result = await note(gateway, upstream, f"card {card} on file")
        if action == "block":
            refused(result)
        else:
            assert result.structured_content["note"] == "card [REDACTED:card] on file", repr(card)
        assert leaked(result, *CARD_GROUPS[1:2], card) == [], repr(card)


async def test_gateway_short_encoded_secrets_in_arguments(gateway: Gateway, upstream: Upstream, action: str) -> None:
    for encoded in SHORT_ENCODED:
        result = await ticket(gateway, encoded)
        if action == "block":
            refused(result)
        else:
            assert result.structured_content["summary"] == "[REDACTED:base64]", encoded


async def test_gateway_short_encoded_secrets_in_results(gateway: Gateway, upstream: Upstream, action: str) -> None:
    for encoded in SHORT_ENCODED:
        result = await note(gateway, upstream, encoded)
        if action == "block":
            refused(result)
        else:
            assert result.structured_content["note"] == "[REDACTED:base64]"
        assert leaked(result, encoded) == []


@pytest.mark.parametrize("number", [4111111111111111, 4111111111111111.0, 123456789], ids=["int", "float", "ssn"])
async def test_gateway_numbers_in_arguments(gateway: Gateway, upstream: Upstream, action: str, number: Any) -> None:
    before = len(upstream.echoed)
    typed = await gateway.call_tool(ALICE, "crm.amount", {"amount": number}, "r")
    # A redacted number is a string: the schema asks for a number, so the call fails closed either way.
    refused(typed)
    untyped = await gateway.call_tool(ALICE, "crm.record", {"value": [1, {"n": number}]}, "r")
    if action == "block":
        refused(untyped)
        assert len(upstream.echoed) == before
    else:
        assert not untyped.is_error
        assert upstream.echoed[before:] == [
            {"value": [1, {"n": f"[REDACTED:{'card' if number > 10**12 else 'national_id'}]"}]}
        ]
    assert leaked(untyped, str(int(number))) == []


async def test_gateway_numbers_in_results(gateway: Gateway, upstream: Upstream, action: str) -> None:
    result = await note(gateway, upstream, {"balance": 12.5, "card": 4111111111111111, "ok": True})
    if action == "block":
        refused(result)
    else:
        assert result.structured_content["note"] == {"balance": 12.5, "card": "[REDACTED:card]", "ok": True}
    assert leaked(result, "4111111111111111") == []


@pytest.mark.parametrize("key", [PEM, PEM.rsplit("\n", 1)[0]], ids=["with-end", "without-end"])
async def test_gateway_private_keys_in_arguments(gateway: Gateway, action: str, key: str) -> None:
    result = await ticket(gateway, f"my key:\n{key}\nthanks")
    if action == "block":
        refused(result)
    else:
        expected = "my key:\n[REDACTED:private_key]" + ("\nthanks" if key == PEM else "")
        assert result.structured_content["summary"] == expected
    assert leaked(result, *PEM_BODY, "END RSA") == []


@pytest.mark.parametrize("key", [PEM, PEM.rsplit("\n", 1)[0]], ids=["with-end", "without-end"])
async def test_gateway_private_keys_in_results(gateway: Gateway, upstream: Upstream, action: str, key: str) -> None:
    result = await note(gateway, upstream, f"deploy key:\n{key}\nrotate yearly")
    if action == "block":
        refused(result)
    else:
        assert result.structured_content["note"].startswith("deploy key:\n[REDACTED:private_key]")
    # The text block is the JSON body, where the key's newlines are written `\n`: redacted there too.
    assert leaked(result, *PEM_BODY, "END RSA") == []
