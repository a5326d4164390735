"""Verify an audit trail: every record's hash, every link, every signed checkpoint, streamed.

The verifier reads records in chain order from any iterator (the database, or an exported bundle with no
database at all) and holds only the previous record and the checkpoints, so memory stays flat however long
the trail is. It names the first bad record and what is wrong with it:

========================  ================================================================================
kind                      meaning
========================  ================================================================================
``changed``               the record's contents do not hash to its stored hash (a byte was changed)
``duplicate``             the record repeats the one before it
``inserted``              the record before this one was inserted: this one follows the record before it
``deleted``               the record does not follow the one before it, and ids are missing in between
``broken-link``           the record does not follow the one before it (inserted, reordered, or its
                          predecessor re-hashed)
``rewritten``             the chain is internally consistent but disagrees with a signed checkpoint: it was
                          re-hashed after the last checkpoint that still matches
``truncated``             a checkpoint covers records past the end of the trail: its tail was cut off
``missing``               a record that a checkpoint covers is not in the trail
``bad-checkpoint``        a checkpoint's signature does not verify with the given public key
``unsigned``              no valid checkpoint covers any record, so a rewrite cannot be ruled out
``legacy-mirror``         the unkeyed mirror from before mirrors were per trail holds checkpoints this trail
                          does not match: another trail's, or a rewrite's (audit/mirror.py; added by the CLI)
``foreign-mirror``        this trail's mirror holds a checkpoint naming another trail (added by the CLI)
``unrecorded-grant``      a grant (or ``-approval``: held call) row matching no chain record (audit/grantcheck.py)
========================  ================================================================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from mcp_gateway.audit.checkpoint import checkpoint_valid
from mcp_gateway.audit.log import GENESIS, record_hash

__all__ = ["Problem", "VerifyReport", "verify_records"]

PROGRESS_EVERY = 10_000


@dataclass(frozen=True, slots=True)
class Problem:
    kind: str
    record_id: int | None
    message: str


@dataclass
class VerifyReport:
    records: int = 0
    first_id: int | None = None
    last_id: int | None = None
    checkpoints_valid: int = 0
    checkpoints_matched: int = 0
    unsigned_tail: int = 0
    problems: list[Problem] = field(default_factory=list)
    more_problems: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_problem(self) -> Problem | None:
        return self.problems[0] if self.problems else None


def verify_records(
    rows: Iterable[dict[str, Any]],
    checkpoints: Sequence[dict[str, Any]],
    public_key: Ed25519PublicKey,
    *,
    partial: bool = False,
    progress: Callable[[int], None] | None = None,
    max_problems: int = 20,
    grants: Callable[[], Iterable[Problem]] | None = None,
) -> VerifyReport:
    """Check ``rows`` (in chain order) against themselves and against ``checkpoints``.

    ``partial`` accepts a first record that does not start at the genesis hash (an export made with
    ``--since``); checkpoints before the first record are then out of scope. ``grants`` (a database's
    ``GrantCheck(url).problems``) adds the grant and held-call rows that match no chain record.
    """
    report = VerifyReport()

    def problem(kind: str, record_id: int | None, message: str) -> None:
        if len(report.problems) < max_problems:
            report.problems.append(Problem(kind, record_id, message))
        else:
            report.more_problems += 1

    signed: dict[int, dict[str, Any]] = {}
    for candidate in checkpoints:
        if not checkpoint_valid(candidate, public_key):
            where = candidate.get("record_id")
            problem(
                "bad-checkpoint",
                where if isinstance(where, int) else None,
                f"checkpoint for record {where} signed at {candidate.get('ts')} has no valid signature",
            )
            continue
        report.checkpoints_valid += 1
        signed.setdefault(int(candidate["record_id"]), candidate)

    expected: str | None = None if partial else GENESIS
    previous_id: int | None = None
    previous_hash: str | None = None
    before_previous: tuple[int, str] | None = None
    compared: set[int] = set()  # checkpointed ids seen in the stream (as many as there are checkpoints)
    last_good = 0  # id of the last record a checkpoint vouches for
    since_good = 0
    for row in rows:
        record_id = int(row["id"])
        stored = str(row["hash"])
        report.records += 1
        if report.first_id is None:
            report.first_id = record_id
        if record_hash(row) != stored:
            problem("changed", record_id, f"record {record_id}: contents do not match its hash (altered after writing)")
        if expected is not None and row["prev_hash"] != expected:
            if stored == previous_hash:
                problem("duplicate", record_id, f"record {record_id}: duplicates record {previous_id}")
            elif before_previous is not None and row["prev_hash"] == before_previous[1]:
                problem(
                    "inserted",
                    previous_id,
                    f"record {previous_id} was inserted: record {record_id} follows record {before_previous[0]}",
                )
            elif previous_id is not None and record_id > previous_id + 1 and row["prev_hash"] != GENESIS:
                problem(
                    "deleted",
                    record_id,
                    f"record {record_id}: does not follow record {previous_id}; "
                    f"records {previous_id + 1}..{record_id - 1} are missing",
                )
            else:
                after = f"record {previous_id}" if previous_id is not None else "the start of the trail"
                problem(
                    "broken-link",
                    record_id,
                    f"record {record_id}: does not follow {after} (inserted, reordered, or a predecessor re-hashed)",
                )
        checkpoint = signed.get(record_id)
        if checkpoint is not None:
            compared.add(record_id)
            if checkpoint["record_hash"] == stored:
                report.checkpoints_matched += 1
                last_good, since_good = record_id, 0
            else:
                problem(
                    "rewritten",
                    record_id,
                    f"record {record_id}: differs from the checkpoint signed at {checkpoint['ts']}; the chain was "
                    f"rewritten in records {last_good + 1}..{record_id}",
                )
        since_good += 1 if checkpoint is None or checkpoint["record_hash"] != stored else 0
        if previous_id is not None and previous_hash is not None:
            before_previous = (previous_id, previous_hash)
        expected, previous_id, previous_hash = stored, record_id, stored
        if progress is not None and report.records % PROGRESS_EVERY == 0:
            progress(report.records)
    if progress is not None:
        progress(report.records)
    report.last_id = previous_id
    report.unsigned_tail = since_good
    _check_coverage(report, signed, compared, problem, partial)
    for found in grants() if grants is not None else ():
        problem(found.kind, found.record_id, found.message)
    return report


def _check_coverage(
    report: VerifyReport,
    signed: dict[int, dict[str, Any]],
    compared: set[int],
    problem: Callable[[str, int | None, str], None],
    partial: bool,
) -> None:
    last = report.last_id if report.last_id is not None else 0
    first = report.first_id if report.first_id is not None else 1
    beyond = sorted(record_id for record_id in signed if record_id > last)
    if beyond:
        checkpoint = signed[beyond[-1]]
        problem(
            "truncated",
            last + 1,
            f"the trail ends at record {last} but the checkpoint signed at {checkpoint['ts']} covers record "
            f"{beyond[-1]}: records {last + 1}..{beyond[-1]} were cut off",
        )
    missing = [
        record_id
        for record_id in signed
        if record_id <= last and (record_id >= first or not partial) and record_id not in compared
    ]
    for record_id in sorted(missing)[:1]:
        problem("missing", record_id, f"record {record_id}, covered by a checkpoint, is not in the trail")
    if report.records and report.checkpoints_matched == 0 and not beyond:
        problem(
            "unsigned",
            None,
            "no valid checkpoint covers this trail: a rewritten chain cannot be ruled out "
            "(the gateway signs one at start-up, periodically and at shutdown)",
        )
