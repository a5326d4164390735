"""Tools for the people who edit the policy CSVs: lint, effective-access diff, and decision tests for CI.

* :func:`lint` reads the files line by line (so it reports every problem, not the first) and, when the policy
  loads, checks it against the catalogs: rules naming unknown catalogs or tools, rules that can never decide
  because another rule shadows them, subjects with commas, quotes or control characters, and broad patterns
  in partner catalogs.
* :func:`access` is the effective access of every subject named in a policy to every tool; :func:`diff`
  compares two of them (who gains and who loses which tool).
* :func:`run_cases` checks a CSV of expected decisions (``subject,roles,catalog,tool,expect``).

Shadowing is judged against the tools the catalogs hold today: a rule is shadowed when every tool it matches
is already decided the same way (or denied) by another rule of a subject the rule's subject always has.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mcp_gateway.catalog import PARTNER_CATALOGS, CatalogSet
from mcp_gateway.errors import ConfigError
from mcp_gateway.policy.files import load_policy
from mcp_gateway.policy.snapshot import PolicySnapshot, Rule, compile_tool_pattern

__all__ = ["Case", "Issue", "access", "diff", "lint", "read_cases", "run_cases"]

Severity = Literal["error", "warning"]

# A subject no token can carry (token subjects have no control characters), so a role's row shows only what
# the role grants.
ROLE_ONLY_SUBJECT = "\x00"
_BAD_SUBJECT = re.compile(r"[\"'`\x00-\x1f\x7f\s]")


@dataclass(frozen=True, slots=True)
class Issue:
    """One lint finding, located as ``file:line`` where it has a line."""

    severity: Severity
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.severity}: {self.message}"


def _raw_issues(policies_dir: Path) -> list[Issue]:
    """Problems visible line by line, before the strict loader stops at the first one."""
    issues: list[Issue] = []
    for path in sorted(policies_dir.glob("*.csv")):
        try:
            text = path.read_bytes().decode("utf-8", errors="replace")
        except OSError as exc:
            issues.append(Issue("error", path.name, f"cannot read: {exc.strerror}"))
            continue
        for number, line in enumerate(text.split("\n"), start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            where = f"{path.name}:{number}"
            if '"' in line or "'" in line:
                issues.append(Issue("error", where, "quotes: Casbin's reader keeps them, so the subject never matches"))
            if "\r" in line.rstrip("\r") or any(ord(c) < 32 and c != "\t" for c in line.rstrip("\r")):
                issues.append(Issue("error", where, "control character inside a line"))
            fields = [field.strip() for field in stripped.split(",")]
            expected = {"p": 6, "g": 3}.get(fields[0])
            if expected is not None and len(fields) != expected:
                issues.append(
                    Issue("error", where, f"{len(fields)} fields where {expected} belong (a comma inside a subject?)")
                )
            subjects = fields[1:3] if fields[0] in ("p", "g") else []
            issues.extend(
                Issue("error", where, f"subject {field[:40]!r} holds a quote, space or control")
                for field in subjects
                if _BAD_SUBJECT.search(field)
            )
    return issues


def _matching(snapshot: PolicySnapshot, rule: Rule, tools: Iterable[str]) -> frozenset[str]:
    pattern = compile_tool_pattern(rule.pattern)  # the engine's own matcher, so lint and decisions agree
    return frozenset(tool for tool in tools if pattern.fullmatch(tool))


def lint(policies_dir: Path, catalogs: CatalogSet) -> list[Issue]:
    """Every problem found in the policy files, errors first."""
    issues = _raw_issues(policies_dir)
    try:
        snapshot = load_policy(policies_dir)
    except ConfigError as exc:
        issues.append(Issue("error", "policy", f"does not load: {exc}"))
        return _sorted(issues)
    names = catalogs.names()
    matched: dict[Rule, frozenset[str]] = {}
    for rule in snapshot.rules:
        where = f"{rule.file}:{rule.line}"
        if rule.catalog not in names:
            issues.append(Issue("error", where, f"catalog {rule.catalog!r} does not exist"))
            continue
        matched[rule] = _matching(snapshot, rule, names[rule.catalog])
        if not matched[rule]:
            kind = "tool" if "*" not in rule.pattern else "pattern matching any tool"
            issues.append(Issue("error", where, f"no {kind} {rule.pattern!r} in catalog {rule.catalog!r}"))
        if rule.catalog in PARTNER_CATALOGS and rule.effect == "allow" and "*" in rule.pattern:
            writes = sorted(tool for tool in matched[rule] if not _read_only(catalogs, rule.catalog, tool))
            if rule.pattern.strip("*") == "" or writes:
                what = f"write tools {writes}" if writes else "every tool, including tools added later"
                issues.append(Issue("warning", where, f"partner allow pattern {rule.pattern!r} covers {what}"))
    for rule, tools in matched.items():
        if not tools:
            continue
        subjects = snapshot.inherited(rule.subject)
        for other, other_tools in matched.items():
            if other is rule or other.catalog != rule.catalog or other.subject not in subjects:
                continue
            if not tools <= other_tools:
                continue
            if other.effect == "deny" and rule.effect == "allow":
                issues.append(Issue("warning", f"{rule.file}:{rule.line}", f"allow is shadowed by deny {other}"))
                break
            earlier = (other.file, other.line) < (rule.file, rule.line)
            if other.effect == rule.effect and (tools < other_tools or earlier):
                issues.append(Issue("warning", f"{rule.file}:{rule.line}", f"redundant: {other} already decides"))
                break
    return _sorted(issues)


def _read_only(catalogs: CatalogSet, catalog: str, name: str) -> bool:
    tool = catalogs.lookup(catalog, name)
    annotations = tool.definition.annotations if tool is not None else None
    return bool(annotations is not None and annotations.read_only_hint)


def _sorted(issues: list[Issue]) -> list[Issue]:
    def key(issue: Issue) -> tuple[bool, str, int]:
        file, _, line = issue.where.partition(":")
        return issue.severity != "error", file, int(line) if line.isdigit() else 0

    return sorted(dict.fromkeys(issues), key=key)


def subjects_of(snapshot: PolicySnapshot) -> list[str]:
    """Every ``user:`` and ``role:`` subject a policy names."""
    return sorted({rule.subject for rule in snapshot.rules} | {s for pair in snapshot.groupings for s in pair})


def access(snapshot: PolicySnapshot, catalogs: Mapping[str, tuple[str, ...]], subjects: Iterable[str]) -> set[str]:
    """Effective access as ``subject catalog tool`` triples (strings) for the given subjects."""
    allowed: set[str] = set()
    for subject in subjects:
        kind, _, value = subject.partition(":")
        user, roles = (value, ()) if kind == "user" else (ROLE_ONLY_SUBJECT, (value,))
        for catalog, tools in catalogs.items():
            allowed.update(
                f"{subject} {catalog} {tool}" for tool in tools if snapshot.decide(user, roles, catalog, tool).allowed
            )
    return allowed


def diff(old_dir: Path, new_dir: Path, catalogs: CatalogSet) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    """Who gains and who loses which tool between two policy folders, against the same catalogs.

    Raises:
        ConfigError: either policy does not load.
    """
    old, new = load_policy(old_dir), load_policy(new_dir)
    names = catalogs.names()
    subjects = sorted(set(subjects_of(old)) | set(subjects_of(new)))
    before, after = access(old, names, subjects), access(new, names, subjects)
    gained = sorted(tuple(item.split(" ")) for item in after - before)
    lost = sorted(tuple(item.split(" ")) for item in before - after)
    return gained, lost


@dataclass(frozen=True, slots=True)
class Case:
    """One expected decision from a test file."""

    line: int
    subject: str
    roles: tuple[str, ...]
    catalog: str
    tool: str
    expect: str


def read_cases(path: Path) -> list[Case]:
    """Read ``subject,roles,catalog,tool,expect`` rows (roles separated by ``|`` or spaces; ``#`` comments).

    Raises:
        ConfigError: unreadable file, missing column or an expectation other than allow or deny.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    reader = csv.DictReader(io.StringIO("\n".join(lines)), skipinitialspace=True)
    wanted = {"subject", "roles", "catalog", "tool", "expect"}
    if reader.fieldnames is None or not wanted <= {name.strip() for name in reader.fieldnames}:
        raise ConfigError(f"{path}: the header must name the columns {sorted(wanted)}")
    cases = []
    for index, row in enumerate(reader, start=2):
        row = {key.strip(): (value or "").strip() for key, value in row.items() if key is not None}
        expect = row["expect"].lower()
        if expect not in ("allow", "deny"):
            raise ConfigError(f"{path}: row {index}: expect must be allow or deny, not {row['expect']!r}")
        roles = tuple(role for role in re.split(r"[|\s]+", row["roles"]) if role)
        cases.append(Case(index, row["subject"], roles, row["catalog"], row["tool"], expect))
    return cases


def run_cases(snapshot: PolicySnapshot, cases: Iterable[Case]) -> list[tuple[Case, str, str]]:
    """Each case with the actual decision and the deciding rule."""
    results = []
    for case in cases:
        decision = snapshot.decide(case.subject, case.roles, case.catalog, case.tool)
        results.append((case, "allow" if decision.allowed else "deny", decision.rule))
    return results
