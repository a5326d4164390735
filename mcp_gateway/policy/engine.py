"""The policy in force: one :class:`PolicySnapshot` at a time, swapped atomically when the files change."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mcp_gateway.errors import ConfigError
from mcp_gateway.policy.files import PolicySources, compile_policy, load_policy
from mcp_gateway.policy.snapshot import Decision, PolicySnapshot

__all__ = ["PolicyEngine", "ReloadResult"]


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
            sources: PolicySources | None = None
            try:
                sources = PolicySources.read(self._dir)
                if sources.version in (old.version, self._rejected):
                    return ReloadResult(False, True, old.version, old.version, None)
                new = compile_policy(sources)
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
