"""Configuration changes made from the command line, each one an audit record.

A running gateway audits every policy or catalog version it reloads (mcp_gateway.reload). A change made with
``mcp-gateway policy add|remove`` is audited at the moment it is made, with the verified operator who made it
as the actor (:class:`~mcp_gateway.operators.Operator`: the token's ``sub`` as the row's subject, and
``{sub, jti, amr}`` as ``detail.actor``; never free text): the edit is checked by loading the whole resulting
policy first, written atomically only if it loads, and recorded either way (``policy.change``, outcome ``ok``
or ``rejected``) with the old and new policy digests and the lines added and removed. ``models import`` is
recorded the same way (``models.import``) with the digest it verified. Each record gets a fresh trace id, so
``audit trace --change ID`` and a SIEM can join it to what follows.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcp_gateway.audit.log import AuditEntry, AuditLog, new_request_id
from mcp_gateway.errors import ConfigError
from mcp_gateway.inventory import Inventory, Progress, import_weights
from mcp_gateway.operators import Operator
from mcp_gateway.policy import load_policy

__all__ = ["ChangeResult", "change_entry", "change_policy_line", "import_model_weights"]


@dataclass(frozen=True, slots=True)
class ChangeResult:
    request_id: str
    accepted: bool
    old_digest: str
    new_digest: str | None
    error: str | None


def change_entry(
    event: str, operator: Operator, *, ok: bool, detail: dict[str, Any], policy_version: str | None = None
) -> AuditEntry:
    """The audit entry of one change an operator made from the command line, with a trace of its own."""
    return AuditEntry(
        event=event,
        decision="allow" if ok else "error",
        outcome="ok" if ok else "rejected",
        request_id=new_request_id(),
        trace_id=secrets.token_hex(16),
        subject=operator.sub,
        roles=sorted(operator.roles),
        policy_version=policy_version,
        detail={**detail, "actor": operator.actor(), "via": "cli"},
    )


def _policy_lines(policies_dir: Path) -> set[str]:
    snapshot = load_policy(policies_dir)
    return {rule.text for rule in snapshot.rules} | {f"g, {m}, {r}" for m, r in snapshot.groupings}


def change_policy_line(
    log: AuditLog, policies_dir: Path, file_name: str, line: str, *, remove: bool, operator: Operator
) -> ChangeResult:
    """Add ``line`` to (or remove it from) ``policies_dir/file_name``, if the resulting policy loads; audit it.

    Raises:
        ConfigError: the file name is not a policy file in ``policies_dir`` (nothing is audited: nothing changed).
        UnavailableError: the audit record could not be written; the file is then left unchanged.
    """
    if Path(file_name).name != file_name or not file_name.endswith(".csv"):
        raise ConfigError(f"--file must name a .csv file in {policies_dir}, not {file_name!r}")
    line = line.strip()
    if "\n" in line or "\r" in line or not line:
        raise ConfigError("the policy line must be one non-empty line")
    target = policies_dir / file_name
    old_text = target.read_text(encoding="utf-8") if target.exists() else ""
    old_digest = load_policy(policies_dir).version
    old_lines = old_text.splitlines()
    if remove:
        if line not in (existing.strip() for existing in old_lines):
            raise ConfigError(f"{file_name} has no line {line!r}")
        new_lines = [existing for existing in old_lines if existing.strip() != line]
    else:
        new_lines = [*old_lines, line]
    new_text = "\n".join(new_lines) + "\n"
    detail: dict[str, Any] = {"file": file_name}
    with tempfile.TemporaryDirectory() as scratch:
        trial = Path(scratch) / "policies"
        shutil.copytree(policies_dir, trial)
        (trial / file_name).write_text(new_text, encoding="utf-8")
        try:
            before, after = _policy_lines(policies_dir), _policy_lines(trial)
            new_digest: str | None = load_policy(trial).version
            error = None
        except ConfigError as exc:
            new_digest, error = None, str(exc)
    if error is None:
        detail.update(added=sorted(after - before), removed=sorted(before - after))
    else:
        detail.update(error=error, attempted={"remove" if remove else "add": line})
    entry = change_entry(
        "policy.change",
        operator,
        ok=error is None,
        policy_version=new_digest or old_digest,
        detail={"old_digest": old_digest, "new_digest": new_digest, **detail},
    )
    if error is not None:
        log.record(entry)
        return ChangeResult(entry.request_id or "", False, old_digest, None, error)
    staged = target.with_name(f".{file_name}.{secrets.token_hex(4)}.tmp")
    staged.write_text(new_text, encoding="utf-8")
    try:
        # The record goes first: a change that cannot be audited is not made.
        log.record(entry)
        os.replace(staged, target)
    finally:
        staged.unlink(missing_ok=True)
    return ChangeResult(entry.request_id or "", True, old_digest, new_digest, None)


def import_model_weights(
    log: AuditLog,
    inventory: Inventory,
    name: str,
    source: Path,
    expected: str,
    operator: Operator,
    progress: Progress | None = None,
) -> Path:
    """Import weights (:func:`~mcp_gateway.inventory.import_weights`) and record it (``models.import``).

    The record of an accepted import carries the digest the copied bytes hashed to and is committed before the
    file is moved into place; a refused import is recorded with why.

    Raises:
        ConfigError: the import was refused (unknown entry, digest mismatch); recorded, nothing placed.
        OSError: the source cannot be read or the destination written; recorded, nothing placed.
        UnavailableError: the record could not be written; nothing placed.
    """
    entry = inventory.get(name)
    detail: dict[str, Any] = {
        "model": name,
        "version": entry.version if entry is not None else None,
        "inventory_digest": inventory.digest,
        "source": str(source),
        "expected_sha256": expected.lower(),
    }

    def record(actual: str) -> None:
        log.record(change_entry("models.import", operator, ok=True, detail={**detail, "sha256": actual}))

    try:
        return import_weights(inventory, name, source, expected, progress, before_place=record)
    except (ConfigError, OSError) as exc:
        log.record(change_entry("models.import", operator, ok=False, detail={**detail, "error": str(exc)}))
        raise
