"""The checkpoint mirror: a JSON-lines file per trail, outside the database, holding every signed checkpoint.

Several trails (several ``database_url``\\ s) may share one ``state_dir``. One mirror file for all of them made
``audit verify`` on one trail read the other's checkpoints as its own and report it rewritten, so each trail has
its own mirror, named by its key: ``audit.checkpoint_file`` with the key before the suffix
(``audit-checkpoints.3f0c9a1e2b7d4c65.jsonl``). The key is the first 16 hex digits of SHA-256 over the trail's
database identity (store/records.py's :func:`~mcp_gateway.store.records.trail_identity`), not over its contents:
a trail rewritten from its very first record keeps its key, so its old checkpoints still disagree with it. Each
line also carries ``trail``, the identity spelt out, so a file copied to another trail's name is caught.

The mirror from before (the unkeyed file itself) is adopted by a trail only when every checkpoint in it matches
that trail's records (:func:`adopt_legacy`). Otherwise nobody can tell another trail's checkpoints from evidence
of a rewrite, so :func:`read_mirror` reports it (``legacy-mirror``) and verification fails until an operator
has looked: see docs/audit.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcp_gateway.store.records import AuditRecords

__all__ = ["MirrorRead", "adopt_legacy", "mirror_line", "mirror_path", "read_checkpoint_file", "read_mirror"]

logger = logging.getLogger(__name__)


def mirror_path(base: Path, identity: str) -> Path:
    """The mirror of the trail with database identity ``identity``, beside the configured file ``base``."""
    key = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return base.with_name(f"{base.stem}.{key}{base.suffix}")


def mirror_line(checkpoint: dict[str, Any], identity: str) -> str:
    """One mirrored checkpoint, naming the trail it belongs to."""
    return json.dumps({**checkpoint, "trail": identity}, sort_keys=True) + "\n"


def read_checkpoint_file(path: Path) -> Iterator[dict[str, Any]]:
    """The checkpoints mirrored to ``path``; a missing file has none. Unparseable lines are yielded as-is
    (as ``{"line": n}``) so the verifier reports them rather than skipping them."""
    if not path.exists():
        return
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                value = None
            yield value if isinstance(value, dict) else {"line": number}


@dataclass(frozen=True, slots=True)
class MirrorRead:
    """What a trail's mirrors hold for it: the checkpoints to verify against, and ``(kind, message)`` problems."""

    path: Path
    checkpoints: tuple[dict[str, Any], ...]
    problems: tuple[tuple[str, str], ...]


def _split(checkpoints: list[dict[str, Any]], records: AuditRecords) -> tuple[list[dict[str, Any]], int]:
    """The checkpoints that match a record of this trail (same id, same hash), and how many do not."""
    ids = [item["record_id"] for item in checkpoints if isinstance(item.get("record_id"), int)]
    hashes = records.hashes_at(ids)
    matching = [
        item
        for item in checkpoints
        if isinstance(item.get("record_id"), int) and hashes.get(item["record_id"]) == item.get("record_hash")
    ]
    return matching, len(checkpoints) - len(matching)


def read_mirror(base: Path, records: AuditRecords) -> MirrorRead:
    """This trail's mirror, and the unkeyed mirror from before if it is still there.

    Raises:
        UnavailableError: the trail cannot be read (to match the old mirror's checkpoints against it).
    """
    identity = records.identity
    path = mirror_path(base, identity)
    problems: list[tuple[str, str]] = []
    checkpoints: list[dict[str, Any]] = []
    for number, item in enumerate(read_checkpoint_file(path), 1):
        trail = item.get("trail", identity)
        if trail != identity:
            problems.append(
                ("foreign-mirror", f"mirror {path}: checkpoint {number} is of trail {trail}, not {identity}")
            )
        else:
            checkpoints.append(item)
    if base.exists() and base != path:
        matching, others = _split(list(read_checkpoint_file(base)), records)
        checkpoints.extend(matching)
        if others:
            problems.append(
                (
                    "legacy-mirror",
                    f"{others} checkpoints in {base}, the mirror from before mirrors were kept per trail, do not match "
                    "this trail: another trail's checkpoints, or this trail was rewritten. Verify the other trails "
                    "that shared this folder, then move the file aside (docs/audit.md)",
                )
            )
    return MirrorRead(path, tuple(checkpoints), tuple(problems))


def adopt_legacy(base: Path, records: AuditRecords) -> None:
    """Rename the unkeyed mirror from before to this trail's mirror, if it is wholly this trail's.

    A mirror with a checkpoint this trail does not hold stays where it is: ``audit verify`` reports it.

    Raises:
        UnavailableError: the trail cannot be read.
    """
    path = mirror_path(base, records.identity)
    if not base.exists() or base == path or path.exists():
        return
    _matching, others = _split(list(read_checkpoint_file(base)), records)
    if others:
        logger.warning("%s holds %d checkpoints of another trail (or of a rewrite): not adopted", base, others)
        return
    # A link, not a rename: it never replaces a mirror another process made meanwhile; whoever links first wins.
    try:
        os.link(base, path)
    except (FileExistsError, FileNotFoundError):
        return
    base.unlink(missing_ok=True)
    logger.info("checkpoint mirror %s is now %s (one mirror per trail)", base, path)
