"""Hot reload of policy and catalogs: the live catalog set, and one audit record per change.

Files are fingerprinted first, so unchanged files are not re-parsed. A version that does not load leaves the
last good one in force and is recorded once. The record of a change is committed before the change takes
effect: if it cannot be, nothing changes and the next check tries again, so no change takes effect unrecorded.

Each record says what changed in the files, as a hand edit is how security teams work: per changed file its
SHA-256 before and after and the diff of its lines against the version in force, and, when the folder is in
a git work tree, the HEAD commit, its author, and which changed files are not committed
(:mod:`mcp_gateway.provenance`). An edit of a catalog that changes no tool (a comment) is on record too. The
gateway's own config file is checked on each reload as well (:mod:`mcp_gateway.configfile`): settings are not
reloaded, so each new version of the file is recorded once (``config.change``) and takes effect at the next
start.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcp_gateway.audit.log import AuditEntry, AuditLog, new_request_id
from mcp_gateway.catalog import CatalogSet, catalog_fingerprint, load_catalogs
from mcp_gateway.config import Settings
from mcp_gateway.configfile import ConfigFile, change_detail
from mcp_gateway.errors import ConfigError
from mcp_gateway.policy import PolicyEngine, ReloadResult
from mcp_gateway.policy.files import MODEL_FILE, PolicySources
from mcp_gateway.provenance import FolderFiles, file_changes, git_state, redact_yaml_lines
from mcp_gateway.telemetry import current_trace_id, tracer

__all__ = ["ReloadReport", "Reloader"]


@dataclass(frozen=True, slots=True)
class ReloadReport:
    """What one reload check found: which of policy and catalogs changed, and any failure."""

    policy_changed: bool
    catalogs_changed: bool
    errors: tuple[str, ...]
    config_changed: bool = False
    """The config file differs from the version last recorded (it takes effect at the next start)."""


_CATALOG_FILES = ("*.yaml", "*.yml")


def _policy_files(policies_dir: Path, version: str | None = None) -> FolderFiles | None:
    """The policy files as read now; None if unreadable, or if ``version`` is given and they are not it."""
    try:
        sources = PolicySources.read(policies_dir)
    except ConfigError:
        return None
    if version is not None and sources.version != version:
        return None
    return FolderFiles({MODEL_FILE: sources.model, **dict(sources.files)})


def _provenance(folder: Path, old: FolderFiles | None, new: FolderFiles | None, yaml: bool) -> dict[str, Any]:
    """The files and git parts of a reload record: what changed against the version in force, and who."""
    if old is None or new is None:
        return {"files": None, "files_note": "the files could not be read consistently; digests only"}
    changes = file_changes(old, new, redact_yaml_lines if yaml else None)
    touched = {item["file"]: new.files.get(item["file"]) for item in changes["files"]}
    return {**changes, "git": git_state(folder, touched)}


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
        # The files in force, for the diff of the next change (None when they were edited while loading).
        self._catalog_texts: FolderFiles | None = FolderFiles.read(settings.catalogs_dir, _CATALOG_FILES)
        self._policy_texts = _policy_files(settings.policies_dir, policy.snapshot.version)
        self._config_in_force = ConfigFile.of(settings)
        self._config_seen = self._config_in_force.sha256 if self._config_in_force else None

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
        return ReloadReport(policy_changed, catalogs_changed, errors, self._check_config(actor))

    def _reload_policy(self, actor: str) -> tuple[bool, str | None]:
        folder = self._settings.policies_dir

        def record(result: ReloadResult) -> None:
            # Read again after the engine did: the diff is of exactly the version it loaded, or says it is not.
            current = _policy_files(folder, result.new_version)
            detail = {"added": list(result.added), "removed": list(result.removed), "error": result.error}
            detail.update(_provenance(folder, self._policy_texts, current, yaml=False))
            self._record(
                "policy.reload", actor, result.ok, old=result.old_version, new=result.new_version, detail=detail
            )
            if result.ok:  # the engine swaps the new version in as soon as this returns
                self._policy_texts = current

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
        texts: FolderFiles | None = FolderFiles.read(settings.catalogs_dir, _CATALOG_FILES)
        files = _provenance(settings.catalogs_dir, self._catalog_texts, texts, yaml=True)
        try:
            fresh = load_catalogs(settings.catalogs_dir, settings.egress)
        except ConfigError as exc:
            detail = {"error": str(exc), **files}
            self._record("catalog.reload", actor, False, old=old.version, new=None, detail=detail)
            self._catalog_files = fingerprint
            return False, f"catalogs: {exc}"
        if catalog_fingerprint(settings.catalogs_dir) != fingerprint:
            files = {"files": None, "files_note": "edited again while loading: the next check records that version"}
            texts = None
        # An edit that changes no tool (a comment, a reordering) is recorded too: the files are evidence.
        self._record(
            "catalog.reload",
            actor,
            True,
            old=old.version,
            new=fresh.version,
            detail={**catalog_diff(old, fresh), **files},
        )
        self.catalogs = fresh
        self._catalog_texts = texts
        self._catalog_files = fingerprint
        return fresh.version != old.version, None

    def _check_config(self, actor: str) -> bool:
        """Record a new version of the config file (once); True when one was recorded."""
        in_force = self._config_in_force
        if in_force is None:
            return False
        try:
            current = in_force.reread()
        except OSError as exc:
            seen = f"unreadable: {exc.strerror or exc}"
            if seen == self._config_seen:
                return False
            detail: dict[str, Any] = {"config_file": str(in_force.path), "error": seen}
            self._record("config.change", actor, False, old=in_force.sha256, new=None, detail=detail)
            self._config_seen = seen
            return True
        if current.sha256 == self._config_seen:
            return False
        detail = change_detail(in_force, current)
        detail.update(git=git_state(in_force.path.parent, {in_force.path.name: current.data}))
        back = current.sha256 == in_force.sha256
        self._record(
            "config.change", actor, True, old=in_force.sha256, new=current.sha256, detail=detail,
            outcome="in_force" if back else "pending_restart",
        )  # fmt: skip
        self._config_seen = current.sha256
        return True

    def _record(
        self,
        event: str,
        actor: str,
        ok: bool,
        *,
        old: str,
        new: str | None,
        detail: dict[str, Any],
        outcome: str | None = None,
    ) -> None:
        # A change is not part of any request: it gets a trace of its own, so its row has a trace id too.
        with tracer.start_as_current_span(event, attributes={"mcp_gateway.actor": actor}):
            self._audit.record(
                AuditEntry(
                    event=event,
                    decision="allow" if ok else "error",
                    outcome=outcome or ("ok" if ok else "rejected"),
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
