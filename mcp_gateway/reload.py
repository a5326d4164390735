"""Hot reload of policy and catalogs: the live catalog set, and one audit record per change.

Files are fingerprinted first, so unchanged files are not re-parsed. A version that does not load leaves the
last good one in force and is recorded once. The record of a change is committed before the change takes
effect: if it cannot be, nothing changes and the next check tries again, so no change takes effect unrecorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mcp_gateway.audit.log import AuditEntry, AuditLog, new_request_id
from mcp_gateway.catalog import CatalogSet, catalog_fingerprint, load_catalogs
from mcp_gateway.config import Settings
from mcp_gateway.errors import ConfigError
from mcp_gateway.policy import PolicyEngine, ReloadResult
from mcp_gateway.telemetry import current_trace_id, tracer

__all__ = ["ReloadReport", "Reloader"]


@dataclass(frozen=True, slots=True)
class ReloadReport:
    """What one reload check found: which of policy and catalogs changed, and any failure."""

    policy_changed: bool
    catalogs_changed: bool
    errors: tuple[str, ...]


class Reloader:
    """Holds the catalog set in force and swaps in new policy and catalog versions, each change on record."""

    def __init__(self, settings: Settings, policy: PolicyEngine, audit: AuditLog) -> None:
        """Load the catalogs.

        Raises:
            ConfigError: a catalog does not load; the gateway refuses to start.
        """
        self._settings = settings
        self._policy = policy
        self._audit = audit
        self._catalog_files = catalog_fingerprint(settings.catalogs_dir)
        self.catalogs: CatalogSet = load_catalogs(settings.catalogs_dir, settings.egress)
        """The catalog set in force: immutable, replaced whole by one assignment."""

    def reload(self, actor: str = "gateway") -> ReloadReport:
        """Re-read policy and catalogs; swap in what loads, keep the last good version of what does not.

        Every change and every rejected version is one audit row; files left unchanged are not re-parsed, and a
        broken file left in place is reported once.

        Raises:
            UnavailableError: a change's audit row could not be committed (the change did not take effect).
        """
        policy_changed, policy_error = self._reload_policy(actor)
        catalogs_changed, catalogs_error = self._reload_catalogs(actor)
        errors = tuple(error for error in (policy_error, catalogs_error) if error)
        return ReloadReport(policy_changed, catalogs_changed, errors)

    def _reload_policy(self, actor: str) -> tuple[bool, str | None]:
        def record(result: ReloadResult) -> None:
            detail = {"added": list(result.added), "removed": list(result.removed), "error": result.error}
            self._record(
                "policy.reload", actor, result.ok, old=result.old_version, new=result.new_version, detail=detail
            )

        result = self._policy.reload(record)
        if not result.changed:
            return False, None
        return result.ok, None if result.ok else f"policy: {result.error}"

    def _reload_catalogs(self, actor: str) -> tuple[bool, str | None]:
        # The fingerprint is remembered, and the new catalogs swapped in, only after the audit row is committed:
        # if it cannot be, nothing changes and the next check tries again.
        settings = self._settings
        fingerprint = catalog_fingerprint(settings.catalogs_dir)
        if fingerprint == self._catalog_files:
            return False, None
        old = self.catalogs
        try:
            fresh = load_catalogs(settings.catalogs_dir, settings.egress)
        except ConfigError as exc:
            self._record("catalog.reload", actor, False, old=old.version, new=None, detail={"error": str(exc)})
            self._catalog_files = fingerprint
            return False, f"catalogs: {exc}"
        if fresh.version != old.version:
            diff = catalog_diff(old, fresh)
            self._record("catalog.reload", actor, True, old=old.version, new=fresh.version, detail=diff)
            self.catalogs = fresh
        self._catalog_files = fingerprint
        return fresh.version != old.version, None

    def _record(self, event: str, actor: str, ok: bool, *, old: str, new: str | None, detail: dict[str, Any]) -> None:
        # A change is not part of any request: it gets a trace of its own, so its row has a trace id too.
        with tracer.start_as_current_span(event, attributes={"mcp_gateway.actor": actor}):
            self._audit.record(
                AuditEntry(
                    event=event,
                    decision="allow" if ok else "error",
                    outcome="ok" if ok else "rejected",
                    request_id=new_request_id(),
                    trace_id=current_trace_id(),
                    subject=actor,
                    policy_version=self._policy.snapshot.version,
                    detail={"old_digest": old, "new_digest": new, **detail},
                )
            )


def catalog_diff(old: CatalogSet, new: CatalogSet) -> dict[str, Any]:
    """Per catalog, the tools added, removed and changed (by definition digest) from ``old`` to ``new``."""
    diff: dict[str, Any] = {}
    for name in sorted(set(old.catalogs) | set(new.catalogs)):
        before = {tool.name: tool.digest for tool in old.tools(name)}
        after = {tool.name: tool.digest for tool in new.tools(name)}
        diff[name] = {
            "added": sorted(set(after) - set(before)),
            "removed": sorted(set(before) - set(after)),
            "changed": sorted(tool for tool in set(before) & set(after) if before[tool] != after[tool]),
        }
    return {"catalogs": diff}
