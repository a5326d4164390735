"""Reading the policy files: strictly into a :class:`PolicySnapshot`, or into Casbin's enforcer as the reference.

:func:`load_policy` parses the files strictly, fails closed on any doubtful line with a :class:`ConfigError`
naming file and line, checks that ``model.conf`` is the model compiled here, and indexes the rules by
(subject, catalog). :func:`casbin_enforcer` builds Casbin's own enforcer over the same files; the tests prove
that both decide identically.

Casbin behaviours the strict parser exists for (pycasbin 2.8): its file adapter silently skips lines of an
unknown type (including a first line behind a UTF-8 byte-order mark), truncates ``g`` lines with extra fields,
keeps commas inside ``()``/``[]`` in one field, reads ``allow # note`` as an effect that is neither allow nor
deny, and reports a ``p`` line of the wrong length only when enforcing. Its role manager follows at most nine
links from the user (``max_hierarchy_level=10``) and silently ignores deeper roles; we refuse such policies.
It recognises the effect expression by exact string, so respacing it breaks the model. Its built-in
``globMatch`` is a path glob, ``keyMatch`` matches prefixes and ``regexMatch`` is unanchored at the end, hence
the model's own ``toolMatch``.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mcp_gateway.errors import ConfigError
from mcp_gateway.policy.reference import Enforcer, build_enforcer, model_assertions
from mcp_gateway.policy.snapshot import ACTION, PolicySnapshot, Rule

__all__ = ["EXPECTED_MODEL", "MODEL_FILE", "PolicySources", "casbin_enforcer", "compile_policy", "load_policy"]

MODEL_FILE = "model.conf"

# The model the compiled engine implements; policies/model.conf must equal it up to comments and spacing.
EXPECTED_MODEL = """
[request_definition]
r = sub, cat, tool, act
[policy_definition]
p = sub, cat, tool, act, eft
[role_definition]
g = _, _
[policy_effect]
e = some(where (p.eft == allow)) && !some(where (p.eft == deny))
[matchers]
m = g(r.sub, p.sub) && r.cat == p.cat && toolMatch(r.tool, p.tool) && r.act == p.act
"""

_SUBJECT_CHARS = re.compile(r"[^A-Za-z0-9._@:+|/=~-]")
_CATALOG = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_PATTERN_CHARS = re.compile(r"[^A-Za-z0-9_.*/-]")
_MAX_NAME = 256
_SECTIONS = {"r": "request_definition", "p": "policy_definition", "g": "role_definition"}
_SECTIONS |= {"e": "policy_effect", "m": "matchers"}


@dataclass(frozen=True, slots=True)
class PolicySources:
    """The bytes of one policy folder, read at once, and their digest (the policy version)."""

    model: bytes
    files: tuple[tuple[str, bytes], ...]
    version: str

    @classmethod
    def read(cls, policies_dir: Path) -> PolicySources:
        """Read ``model.conf`` and every ``*.csv`` (in name order).

        Raises:
            ConfigError: a file is missing or unreadable.
        """
        try:
            model = (policies_dir / MODEL_FILE).read_bytes()
            files = tuple((path.name, path.read_bytes()) for path in _csv_paths(policies_dir))
        except OSError as exc:
            raise ConfigError(f"cannot read policy {exc.filename}: {exc.strerror or exc}") from exc
        digest = hashlib.sha256()
        for name, data in ((MODEL_FILE, model), *files):
            digest.update(f"{name}\0{len(data)}\0".encode())
            digest.update(data)
        return cls(model, files, digest.hexdigest())


def _csv_paths(policies_dir: Path) -> list[Path]:
    return sorted(policies_dir.glob("*.csv"), key=lambda path: path.name)


def _squash(value: str) -> str:
    return re.sub(r"\s*([^\w\s])\s*", r"\1", " ".join(value.split()))


def _model_shape(text: str) -> dict[str, str]:
    assertions = model_assertions(text, MODEL_FILE).items()
    return {f"[{_SECTIONS.get(section, section)}] {key}": _squash(value) for (section, key), value in assertions}


_expected_shape = functools.cache(lambda: _model_shape(EXPECTED_MODEL))


def _check_model(data: bytes) -> None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{MODEL_FILE}: not valid UTF-8") from exc
    found, expected = _model_shape(text), _expected_shape()
    differing = sorted(key for key in found.keys() | expected.keys() if found.get(key) != expected.get(key))
    if differing:
        raise ConfigError(
            f"{MODEL_FILE}: {', '.join(differing)} differ from the model this gateway compiles; ship it unedited"
        )


def _check_name(where: str, field: str, value: str, forbidden: re.Pattern[str]) -> None:
    if not value:
        raise ConfigError(f"{where}: {field} is empty")
    if (bad := forbidden.search(value)) is not None:
        raise ConfigError(f"{where}: {field} {value[:40]!r} contains forbidden character {bad.group()!r}")
    if len(value) > _MAX_NAME:
        raise ConfigError(f"{where}: {field} is longer than {_MAX_NAME} characters")


def _check_subject(where: str, field: str, value: str, prefixes: tuple[str, ...]) -> None:
    _check_name(where, field, value, _SUBJECT_CHARS)
    if not value.startswith(prefixes) or value in prefixes:
        raise ConfigError(f"{where}: {field} {value[:40]!r} must be {' or '.join(p + '<name>' for p in prefixes)}")


def _parse_p(where: str, name: str, number: int, fields: list[str]) -> Rule:
    if len(fields) != 6:
        raise ConfigError(f"{where}: p line has {len(fields)} fields; expected p, subject, catalog, tool, call, effect")
    _, subject, catalog, pattern, action, effect = fields
    _check_subject(where, "subject", subject, ("user:", "role:"))
    if not _CATALOG.fullmatch(catalog):
        raise ConfigError(f"{where}: catalog {catalog[:40]!r} must match ^[a-z][a-z0-9_-]{{0,63}}$")
    _check_name(where, "tool pattern", pattern, _PATTERN_CHARS)
    if action != ACTION:
        raise ConfigError(f"{where}: action {action[:40]!r} must be {ACTION}")
    if effect not in ("allow", "deny"):
        raise ConfigError(f"{where}: effect {effect[:40]!r} must be allow or deny")
    return Rule(name, number, subject, catalog, pattern, action, effect)


def _parse_file(name: str, data: bytes) -> tuple[list[Rule], list[tuple[str, str, str]]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        number = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{name}:{number}: not valid UTF-8") from exc
    rules: list[Rule] = []
    links: list[tuple[str, str, str]] = []
    # Split on "\n" only, as Casbin's file adapter does, so line numbers agree with what Casbin reads.
    for number, raw in enumerate(text.split("\n"), start=1):
        where = f"{name}:{number}"
        line = raw.removesuffix("\r")
        if (bad := next((c for c in line if c != "\t" and not c.isprintable()), None)) is not None:
            raise ConfigError(f"{where}: control, format or separator character U+{ord(bad):04X}")
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not line.isascii():
            raise ConfigError(f"{where}: policy lines must be ASCII")
        fields = [field.strip() for field in line.split(",")]
        if fields[0] == "p":
            rules.append(_parse_p(where, name, number, fields))
        elif fields[0] == "g":
            if len(fields) != 3:
                raise ConfigError(f"{where}: g line has {len(fields)} fields; expected g, member, role")
            _check_subject(where, "member", fields[1], ("user:", "role:"))
            _check_subject(where, "role", fields[2], ("role:",))
            links.append((fields[1], fields[2], where))
        else:
            raise ConfigError(f"{where}: unknown line type {fields[0][:40]!r}; expected p or g")
    return rules, links


def compile_policy(sources: PolicySources) -> PolicySnapshot:
    """Check the model, parse every file strictly and compile the snapshot.

    Raises:
        ConfigError: the model is not the shipped one, or a line is invalid; the message names file and line.
    """
    _check_model(sources.model)
    rules: list[Rule] = []
    links: list[tuple[str, str, str]] = []
    for name, data in sources.files:
        file_rules, file_links = _parse_file(name, data)
        rules += file_rules
        links += file_links
    origins: dict[tuple[str, str], str] = {}
    for member, role, where in links:
        origins.setdefault((member, role), where)
    return PolicySnapshot(sources.version, rules, [(m, r) for m, r, _ in links], origins=origins)


def load_policy(policies_dir: Path) -> PolicySnapshot:
    """Read ``model.conf`` and every ``*.csv`` in ``policies_dir`` (in name order) and compile them.

    Raises:
        ConfigError: a file is missing or unreadable, the model is not the shipped one, or a line is invalid;
            the message names the file, the line and why.
    """
    return compile_policy(PolicySources.read(policies_dir))


def casbin_enforcer(policies_dir: Path, extra_groupings: Iterable[tuple[str, str]] = ()) -> Enforcer:
    """Build Casbin's own enforcer over the policy files: the reference the compiled engine must equal.

    Slow (Casbin evaluates its matcher once per line): for tests and cross-checks, never the request path.
    Token roles go in as ``extra_groupings`` such as ``("user:alice", "role:analyst")``.

    Raises:
        ConfigError: the files are invalid; Casbin never reads a policy the gateway would refuse.
    """
    load_policy(policies_dir)
    return build_enforcer(policies_dir / MODEL_FILE, _csv_paths(policies_dir), extra_groupings)
