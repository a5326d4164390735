"""The compiled policy: rules indexed by (subject, catalog), deciding a call in microseconds.

A caller's effective subjects are ``user:<sub>``, ``role:<r>`` for each token role, and every role reachable
from those through ``g`` lines. The decision is deny if any matching line denies, else allow if any matching
line allows, else deny: deny wins, and the default is deny. ``*`` in a tool pattern matches any run of
characters, dots included, and the pattern must cover the whole tool name; the catalog is compared exactly.
"""

from __future__ import annotations

import functools
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from mcp_gateway.errors import ConfigError

__all__ = [
    "ACTION",
    "CACHE_SIZE",
    "DEFAULT_DENY",
    "MAX_ROLE_DEPTH",
    "Decision",
    "Explanation",
    "PolicySnapshot",
    "Rule",
    "compile_tool_pattern",
]

ACTION = "call"
DEFAULT_DENY = "default-deny"
# Casbin's role manager stops nine links from the user and the token roles take the first of them, so deeper
# role-to-role inheritance would make Casbin and this engine disagree. Such policies are refused.
MAX_ROLE_DEPTH = 8
# Tool names and subjects are finite, so decisions are cached per snapshot; the bound caps hostile input.
CACHE_SIZE = 65_536


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
def compile_tool_pattern(pattern: str) -> re.Pattern[str]:
    """The regex the engine matches a rule's tool pattern with; use its ``fullmatch``, as decisions do."""
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
    """An immutable compiled policy. Build it with :func:`~mcp_gateway.policy.load_policy`."""

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
                    matched += [(pos, r) for pos, r in bucket.rules if compile_tool_pattern(r.pattern).fullmatch(tool)]
        matched.sort(key=lambda item: item[0])
        return Explanation(decision, tuple(sorted(subjects)), tuple(rule for _, rule in matched))

    def inherited(self, subject: str) -> frozenset[str]:
        """``subject`` (``user:<name>`` or ``role:<name>``) and every role it reaches through ``g`` lines."""
        return self._closure.get(subject, frozenset((subject,)))

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
