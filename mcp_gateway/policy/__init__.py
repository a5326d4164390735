"""Tool-call policy: Casbin's model and file format, compiled into an index that decides in microseconds.

Security teams edit ``policies/*.csv`` (read in name order) against the shipped ``policies/model.conf``::

    p, role:analyst, internal, crm.*, call, allow
    p, user:mallory, internal, *, call, deny
    g, user:alice, role:analyst
    g, role:analyst, role:reader

A caller's effective subjects are ``user:<sub>``, ``role:<r>`` for each token role, and every role reachable
from those through ``g`` lines. The decision is deny if any matching line denies, else allow if any matching
line allows, else deny: deny wins, and the default is deny. ``*`` in a tool pattern matches any run of
characters, dots included, and the pattern must cover the whole tool name; the catalog is compared exactly.

Casbin evaluates its matcher once per policy line (about 6 µs each), so it never runs on the request path.
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

import fnmatch
import functools
import hashlib
import logging
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import casbin

from mcp_gateway.errors import ConfigError

__all__ = [
    "Decision",
    "Explanation",
    "PolicyEngine",
    "PolicySnapshot",
    "ReloadResult",
    "Rule",
    "casbin_enforcer",
    "load_policy",
]

MODEL_FILE = "model.conf"
ACTION = "call"
DEFAULT_DENY = "default-deny"
MATCHER = "toolMatch"
# Casbin's role manager stops nine links from the user and the token roles take the first of them, so deeper
# role-to-role inheritance would make Casbin and this engine disagree. Such policies are refused.
MAX_ROLE_DEPTH = 8
# Tool names and subjects are finite, so decisions are cached per snapshot; the bound caps hostile input.
CACHE_SIZE = 65_536

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
class Rule:
    """One ``p`` line, with where it came from."""

    file: str
    line: int
    subject: str
    catalog: str
    pattern: str
    action: str
    effect: str  # "allow" | "deny"

    @property
    def text(self) -> str:
        """The line in normalised form, e.g. ``p, role:analyst, internal, crm.*, call, allow``."""
        return f"p, {self.subject}, {self.catalog}, {self.pattern}, {self.action}, {self.effect}"

    def __str__(self) -> str:
        return f"{self.file}:{self.line} {self.text}"


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one check and the rule that decided it (``str(Rule)``, or ``"default-deny"``).

    Like Casbin's ``enforce_ex``, a deny names the first matching deny line and an allow the last matching allow.
    """

    allowed: bool
    rule: str


@dataclass(frozen=True, slots=True)
class Explanation:
    """A decision with the effective subjects and every matching rule, in file order."""

    decision: Decision
    subjects: tuple[str, ...]
    matched: tuple[Rule, ...]


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What :meth:`PolicyEngine.reload` did; ``added``/``removed`` are normalised policy lines for the audit."""

    changed: bool
    ok: bool
    old_version: str
    new_version: str | None
    error: str | None
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()


_DEFAULT: Final = Decision(allowed=False, rule=DEFAULT_DENY)


@functools.lru_cache(maxsize=4096)
def _glob_regex(pattern: str) -> str:
    # Leftmost matching of each middle literal is always optimal for "*"-only globs, so atomic groups can
    # commit to it: matching stays linear however many stars a pattern has (no catastrophic backtracking).
    if "*" not in pattern:
        return re.escape(pattern)
    head, *middle, tail = pattern.split("*")
    inner = "".join(f"(?>.*?{re.escape(part)})" for part in middle if part)
    return f"{re.escape(head)}{inner}.*{re.escape(tail)}"


@functools.lru_cache(maxsize=4096)
def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile(_glob_regex(pattern), re.DOTALL)


class _Index:
    """The rules of one effect for one (subject, catalog): exact names in a dict, globs in one regex.

    Entries arrive best first; the regex's alternation order makes the first glob that matches the best one.
    """

    __slots__ = ("exact", "globs", "regex")

    def __init__(self, ranked: Iterable[tuple[int, Rule]]) -> None:
        self.exact: dict[str, tuple[int, Rule]] = {}
        self.globs: list[tuple[int, Rule]] = []
        for rank, rule in ranked:
            if "*" in rule.pattern:
                self.globs.append((rank, rule))
            else:
                self.exact.setdefault(rule.pattern, (rank, rule))
        alternatives = "|".join(f"({_glob_regex(rule.pattern)})" for _, rule in self.globs)
        self.regex = re.compile(alternatives, re.DOTALL) if self.globs else None

    def best(self, tool: str) -> tuple[int, Rule] | None:
        hit = self.exact.get(tool)
        if self.regex is not None and (match := self.regex.fullmatch(tool)) is not None:
            glob = self.globs[(match.lastindex or 1) - 1]
            if hit is None or glob[0] < hit[0]:
                hit = glob
        return hit


class _Bucket:
    __slots__ = ("allow", "deny", "rules")

    def __init__(self, rules: list[tuple[int, Rule]]) -> None:
        self.rules = tuple(rules)
        # Casbin's order: it stops at the first matching deny and otherwise reports the last matching allow.
        self.deny = _Index(sorted((pos, rule) for pos, rule in rules if rule.effect == "deny"))
        self.allow = _Index(sorted((-pos, rule) for pos, rule in rules if rule.effect == "allow"))


class PolicySnapshot:
    """An immutable compiled policy. Build it with :func:`load_policy`."""

    __slots__ = ("_buckets", "_cached", "_closure", "groupings", "rules", "version")

    def __init__(
        self,
        version: str,
        rules: Iterable[Rule],
        groupings: Iterable[tuple[str, str]],
        *,
        origins: Mapping[tuple[str, str], str] | None = None,
    ) -> None:
        """Compile ``rules`` and ``groupings`` (``(member, role)`` pairs); ``origins`` locates groupings in errors.

        Raises:
            ConfigError: role inheritance is deeper than ``MAX_ROLE_DEPTH``.
        """
        self.version: Final = version
        self.rules: Final = tuple(rules)
        self.groupings: Final = tuple(dict.fromkeys(groupings))
        self._closure: Final = _role_closure(self.groupings, origins or {})
        grouped: dict[tuple[str, str], list[tuple[int, Rule]]] = {}
        for pos, rule in enumerate(self.rules):
            grouped.setdefault((rule.subject, rule.catalog), []).append((pos, rule))
        self._buckets: Final = {key: _Bucket(rules) for key, rules in grouped.items()}
        cached: Callable[[str, tuple[str, ...], str, str, str], Decision]
        cached = functools.lru_cache(maxsize=CACHE_SIZE)(self._decide_uncached)
        self._cached: Final = cached

    def decide(self, subject: str, roles: Sequence[str], catalog: str, tool: str, action: str = ACTION) -> Decision:
        """Decide whether ``user:<subject>`` holding token ``roles`` may ``action`` ``tool`` in ``catalog``."""
        if isinstance(roles, str):  # a bare string is a Sequence[str] of characters: refuse the mistake
            raise TypeError("roles must be a sequence of role names, not a string")
        return self._cached(subject, tuple(roles), catalog, tool, action)

    def explain(self, subject: str, roles: Sequence[str], catalog: str, tool: str, action: str = ACTION) -> Explanation:
        """Like :meth:`decide`, also listing the effective subjects and every matching rule."""
        decision = self.decide(subject, roles, catalog, tool, action)
        subjects = self._effective(subject, tuple(roles))
        matched: list[tuple[int, Rule]] = []
        if action == ACTION:
            for name in subjects:
                bucket = self._buckets.get((name, catalog))
                if bucket is not None:
                    matched += [(pos, r) for pos, r in bucket.rules if _glob(r.pattern).fullmatch(tool)]
        matched.sort(key=lambda item: item[0])
        return Explanation(decision, tuple(sorted(subjects)), tuple(rule for _, rule in matched))

    def _effective(self, subject: str, roles: tuple[str, ...]) -> set[str]:
        found: set[str] = set()
        for start in (f"user:{subject}", *(f"role:{role}" for role in roles)):
            found.update(self._closure.get(start, (start,)))
        return found

    def _decide_uncached(self, subject: str, roles: tuple[str, ...], catalog: str, tool: str, action: str) -> Decision:
        if action != ACTION:
            return _DEFAULT
        deny: tuple[int, Rule] | None = None
        allow: tuple[int, Rule] | None = None
        for name in self._effective(subject, roles):
            bucket = self._buckets.get((name, catalog))
            if bucket is None:
                continue
            if (hit := bucket.deny.best(tool)) is not None and (deny is None or hit[0] < deny[0]):
                deny = hit
            if (hit := bucket.allow.best(tool)) is not None and (allow is None or hit[0] < allow[0]):
                allow = hit
        if deny is not None:
            return Decision(allowed=False, rule=str(deny[1]))
        if allow is not None:
            return Decision(allowed=True, rule=str(allow[1]))
        return _DEFAULT


def _role_closure(
    groupings: Sequence[tuple[str, str]], origins: Mapping[tuple[str, str], str]
) -> dict[str, frozenset[str]]:
    parents: dict[str, list[str]] = {}
    for member, role in groupings:
        parents.setdefault(member, []).append(role)
    closure: dict[str, frozenset[str]] = {}
    for start in parents:
        depth = {start: 0}
        queue = deque([start])
        while queue:
            node = queue.popleft()
            for role in parents.get(node, ()):
                if role in depth:
                    continue
                depth[role] = depth[node] + 1
                if start.startswith("role:") and depth[role] > MAX_ROLE_DEPTH:
                    where = origins.get((node, role), "policy")
                    raise ConfigError(
                        f"{where}: role inheritance too deep: {start} reaches {role} only through {depth[role]}"
                        f" levels; at most {MAX_ROLE_DEPTH} are supported (Casbin's max_hierarchy_level)"
                    )
                queue.append(role)
        closure[start] = frozenset(depth)
    return closure


@dataclass(frozen=True, slots=True)
class _Sources:
    model: bytes
    files: tuple[tuple[str, bytes], ...]
    version: str


def _csv_paths(policies_dir: Path) -> list[Path]:
    return sorted(policies_dir.glob("*.csv"), key=lambda path: path.name)


def _read_sources(policies_dir: Path) -> _Sources:
    try:
        model = (policies_dir / MODEL_FILE).read_bytes()
        files = tuple((path.name, path.read_bytes()) for path in _csv_paths(policies_dir))
    except OSError as exc:
        raise ConfigError(f"cannot read policy {exc.filename}: {exc.strerror or exc}") from exc
    digest = hashlib.sha256()
    for name, data in ((MODEL_FILE, model), *files):
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return _Sources(model, files, digest.hexdigest())


def _squash(value: str) -> str:
    return re.sub(r"\s*([^\w\s])\s*", r"\1", " ".join(value.split()))


def _silence_casbin_logging() -> None:
    # Enforcer(enable_log=False) disables these loggers, but only after logging the model at INFO; while
    # enabled, Casbin logs every denied request as a WARNING.
    for name in ("casbin", "casbin.policy", "casbin.enforcer", "casbin.role"):
        logging.getLogger(name).disabled = True


def _model_shape(text: str) -> dict[str, str]:
    _silence_casbin_logging()
    model = casbin.Model()
    try:
        model.load_model_from_text(text)
        casbin.Enforcer(model)  # also checks what only the enforcer does, such as the effect expression
    except RuntimeError as exc:
        raise ConfigError(f"{MODEL_FILE}: Casbin cannot load it: {exc}") from exc
    return {f"[{_SECTIONS.get(s, s)}] {key}": _squash(a.value) for s, keys in model.items() for key, a in keys.items()}


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


def _compile(sources: _Sources) -> PolicySnapshot:
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
    return _compile(_read_sources(policies_dir))


def _policy_lines(snapshot: PolicySnapshot) -> set[str]:
    return {rule.text for rule in snapshot.rules} | {f"g, {m}, {r}" for m, r in snapshot.groupings}


class PolicyEngine:
    """Holds the current :class:`PolicySnapshot` and swaps it atomically on :meth:`reload`."""

    def __init__(self, policies_dir: Path) -> None:
        """Load the policy now.

        Raises:
            ConfigError: the policy is invalid; the server refuses to start.
        """
        self._dir = policies_dir
        self._lock = threading.Lock()
        self._snapshot = load_policy(policies_dir)
        self._rejected: str | None = None  # digest (or error) of files already reported as invalid

    @property
    def snapshot(self) -> PolicySnapshot:
        return self._snapshot

    def check(self, subject: str, roles: Sequence[str], catalog: str, tool: str) -> Decision:
        """Decide one ``call`` against the current snapshot."""
        return self._snapshot.decide(subject, roles, catalog, tool)

    def reload(self, record: Callable[[ReloadResult], None] | None = None) -> ReloadResult:
        """Re-read the files; keep the last good snapshot if they are invalid (fail closed to the old policy).

        ``record`` is called with the result before anything changes: the new snapshot is swapped in, or a
        rejected version remembered, only after it returns. If it raises (the audit row could not be
        written), nothing changes and the next call tries again, so no change takes effect unrecorded.
        Files already rejected once are not reported again (``changed=False``) until they change, so a
        broken file left in place yields one failure report, not one per check.
        """
        with self._lock:
            old = self._snapshot
            sources: _Sources | None = None
            try:
                sources = _read_sources(self._dir)
                if sources.version in (old.version, self._rejected):
                    return ReloadResult(False, True, old.version, old.version, None)
                new = _compile(sources)
            except ConfigError as exc:
                # Unreadable files have no digest: the error text stands in for it.
                rejected = sources.version if sources is not None else str(exc)
                if rejected == self._rejected:
                    return ReloadResult(False, True, old.version, old.version, None)
                result = ReloadResult(True, False, old.version, None, str(exc))
                if record is not None:
                    record(result)
                self._rejected = rejected
                return result
            before, after = _policy_lines(old), _policy_lines(new)
            result = ReloadResult(
                True, True, old.version, new.version, None, tuple(sorted(after - before)), tuple(sorted(before - after))
            )
            if record is not None:
                record(result)
            self._rejected = None
            self._snapshot = new  # one reference assignment: readers see the old or the new snapshot, never a mix
            return result


class _FilesAdapter(casbin.Adapter):
    """Casbin's own file adapter, applied to several files in turn."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self._paths = paths

    def load_policy(self, model: casbin.Model) -> None:
        for path in self._paths:
            casbin.FileAdapter(str(path)).load_policy(model)


def _reference_tool_match(tool: str, pattern: str) -> bool:
    # An independent implementation on purpose: patterns hold no fnmatch metacharacter but "*" (validated).
    return fnmatch.fnmatchcase(tool, pattern)


def casbin_enforcer(policies_dir: Path, extra_groupings: Iterable[tuple[str, str]] = ()) -> casbin.Enforcer:
    """Build Casbin's own enforcer over the policy files: the reference the compiled engine must equal.

    Slow (Casbin evaluates its matcher once per line): for tests and cross-checks, never the request path.
    Token roles go in as ``extra_groupings`` such as ``("user:alice", "role:analyst")``.

    Raises:
        ConfigError: the files are invalid; Casbin never reads a policy the gateway would refuse.
    """
    load_policy(policies_dir)
    _silence_casbin_logging()
    enforcer = casbin.Enforcer(str(policies_dir / MODEL_FILE), _FilesAdapter(_csv_paths(policies_dir)))
    enforcer.add_function(MATCHER, _reference_tool_match)
    for member, role in extra_groupings:
        enforcer.add_grouping_policy(member, role)
    return enforcer
