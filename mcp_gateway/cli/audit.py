"""``mcp-gateway audit …``: read the trail, export it, prove it intact, and tell the story of one call.

``tail`` and ``export`` read the trail (``export --bundle`` writes a file that ``verify --bundle`` checks with no
database at all). ``verify`` checks every record and every signed checkpoint, streamed (flat memory on any
size), and names the first bad record; it exits 0 only when everything is intact. ``trace TRACE_ID`` tells the
story of every call under a trace id, one call each (audit/story.py), marking calls by other subjects than the
trace's first caller; ``trace --request ID`` tells one call's, ``trace --change ID`` a configuration change's.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from mcp_gateway.audit.checkpoint import Checkpointer, Signer, load_public_key, merge_checkpoints
from mcp_gateway.audit.export import cef_line, jsonl_line, open_bundle, printable_text, write_bundle
from mcp_gateway.audit.grantcheck import GrantCheck
from mcp_gateway.audit.log import AuditLog, record_hash
from mcp_gateway.audit.mirror import read_mirror
from mcp_gateway.audit.severity import TamperWatch
from mcp_gateway.audit.story import TraceStories, row_detail, tell
from mcp_gateway.audit.verify import Problem, VerifyReport, verify_records
from mcp_gateway.cli.common import ConfigOption, err, out, print_error
from mcp_gateway.config import load_settings
from mcp_gateway.errors import ConfigError

__all__ = ["PROGRESS_THRESHOLD", "audit_app", "progress_bar"]

PROGRESS_THRESHOLD = 10_000  # trails at least this long show a progress bar on stderr

audit_app = typer.Typer(help="Read the audit trail.", no_args_is_help=True)


class ExportFormat(StrEnum):
    jsonl = "jsonl"
    cef = "cef"


def progress_bar(console: Console, total: int | None, what: str) -> AbstractContextManager[Callable[[int], None]]:
    """A rich progress bar on ``console`` for long jobs; a no-op below :data:`PROGRESS_THRESHOLD`."""
    if total is None or total < PROGRESS_THRESHOLD:
        return nullcontext(lambda _done: None)
    return _Bar(console, total, what)


class _Bar:
    def __init__(self, console: Console, total: int, what: str) -> None:
        self.progress = Progress(
            TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True
        )
        self.task = self.progress.add_task(what, total=total)

    def __enter__(self) -> Callable[[int], None]:
        self.progress.start()
        return lambda done: self.progress.update(self.task, completed=done)

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


@audit_app.command("tail")
def audit_tail(
    count: Annotated[
        int, typer.Option("-n", "--count", min=1, max=10_000, help="How many of the latest rows to show.")
    ] = 20,
    config: ConfigOption = None,
) -> None:
    """The most recent audit rows."""
    log = AuditLog(load_settings(config).database_url)
    table = Table("id", "time", "event", "subject", "catalog", "tool", "decision", "rule", "outcome", "ms")
    for row in log.tail(count):
        # Audit text comes from callers (tool names, subjects): render it literally, never as markup.
        cells = (
            str(row["id"]),
            row["ts"][11:23],
            row["event"],
            row["subject"] or "",
            row["catalog"] or "",
            row["tool"] or "",
            row["decision"],
            row["rule"] or "",
            row["outcome"],
            f"{row['latency_ms']:.2f}" if row["latency_ms"] is not None else "",
        )
        table.add_row(*(Text(printable_text(cell)) for cell in cells))
    out.print(table)
    log.close()


@audit_app.command("export")
def audit_export(
    output: Annotated[
        ExportFormat, typer.Option("--format", help="jsonl (one JSON object a line) or cef (ArcSight CEF).")
    ] = ExportFormat.jsonl,
    since: Annotated[str | None, typer.Option(help="ISO 8601 time; rows at or after it.")] = None,
    bundle: Annotated[
        Path | None, typer.Option(help="Write a bundle that `audit verify --bundle` checks with no database.")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Every audit row as JSON lines or CEF with its severity, streamed, for a SIEM; or a bundle with --bundle."""
    cutoff = _utc(since) if since is not None else None
    settings = load_settings(config)
    log = AuditLog(settings.database_url)
    with progress_bar(err, log.last_id(), "exporting") as tick:
        rows = _ticking(log.iter_rows(cutoff, batch=5000), tick)
        if bundle is not None:
            mirror = read_mirror(settings.checkpoint_path, log.records)
            for _kind, message in mirror.problems:  # the bundle still verifies; what it lacks is said here
                err.print(Text(f"warning: {message}"), soft_wrap=True)
            checkpoints = merge_checkpoints(log.checkpoints(), mirror.checkpoints)
            with bundle.open("w", encoding="utf-8") as handle:
                count = write_bundle(handle, rows, checkpoints, since=cutoff, key_id=None)
            err.print(f"{count} records and {len(checkpoints)} checkpoints written to {escape(str(bundle))}")
        else:
            line = cef_line if output is ExportFormat.cef else jsonl_line
            write = sys.stdout.write
            watch = TamperWatch(partial=cutoff is not None)  # each row re-hashed on the way out: tamper is loudest
            for row in rows:
                write(line(row, watch.check(row)))
    log.close()


def _ticking(rows: Iterator[dict[str, Any]], tick: Callable[[int], None]) -> Iterator[dict[str, Any]]:
    for done, row in enumerate(rows, 1):
        if done % 10_000 == 0:
            tick(done)
        yield row


def _utc(value: str) -> str:
    """An ISO 8601 time in the trail's own spelling (UTC, microseconds), so it compares correctly as text.

    Raises:
        ConfigError: ``value`` is not an ISO 8601 time.
    """
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"--since: {value!r} is not an ISO 8601 time such as 2026-11-25T09:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


@audit_app.command("verify")
def audit_verify(
    bundle: Annotated[Path | None, typer.Option(help="Verify this exported bundle; no database needed.")] = None,
    public_key: Annotated[
        Path | None, typer.Option(help="Checkpoint public key (PEM). Default: audit.signing_key's public half.")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Check every record and signed checkpoint; name the first bad record. Exit 0 only if all is intact."""
    loaded = load_settings(config) if bundle is None or public_key is None else None
    key_path = public_key or (loaded.signing_key_path.with_suffix(".pub") if loaded else None)
    if key_path is not None and not key_path.exists() and loaded is not None:
        key_path = loaded.signing_key_path
    key = load_public_key(key_path) if key_path is not None else None
    assert key is not None  # noqa: S101 - a key path always exists here
    if bundle is not None:
        opened = open_bundle(bundle)
        with progress_bar(err, None, "verifying") as tick:
            report = verify_records(
                opened.records(), opened.checkpoints, key, partial=bool(opened.header.get("since")), progress=tick
            )
        extra = opened.problems
        source = f"bundle {bundle}"
    else:
        assert loaded is not None  # noqa: S101
        log = AuditLog(loaded.database_url)
        mirror = read_mirror(loaded.checkpoint_path, log.records)
        checkpoints = merge_checkpoints(log.checkpoints(), mirror.checkpoints)
        with progress_bar(err, log.last_id(), "verifying") as tick:
            # The grant and held-call tables against the chain too: a row no chain record backs is reported.
            grants = GrantCheck(loaded.database_url).problems
            report = verify_records(log.iter_rows(batch=5000), checkpoints, key, progress=tick, grants=grants)
        report.problems.extend(Problem(kind, None, message) for kind, message in mirror.problems)
        extra = []
        source = f"trail {log.records.identity} (mirror {mirror.path.name})"
        log.close()
    _print_report(report, extra, source)
    raise typer.Exit(0 if report.ok and not extra else 1)


@audit_app.command("checkpoint")
def audit_checkpoint(config: ConfigOption = None) -> None:
    """Sign the current chain head now (the gateway also does this periodically and at shutdown)."""
    settings = load_settings(config)
    log = AuditLog(settings.database_url)
    try:
        signer = Signer.load_or_create(settings.signing_key_path)
        checkpoint = Checkpointer(log, signer, settings.checkpoint_path).sign_now()
    except ConfigError as exc:
        # An unusable signing key has always ended this command with 1, unlike a ConfigError anywhere else
        # (`audit verify` exits 2 on an unusable key). Kept as it is: scripts may test for it.
        print_error(str(exc))
        raise typer.Exit(1) from exc
    finally:
        log.close()
    if checkpoint is None:
        out.print("nothing to sign: the trail is empty")
    else:
        out.print(Text(f"signed record {checkpoint['record_id']} ({checkpoint['record_hash'][:16]}…)"))


@audit_app.command("trace")
def audit_trace(
    trace_id: Annotated[str | None, typer.Argument(help="The 32-hex-digit trace id of a call or an agent run.")] = None,
    request: Annotated[str | None, typer.Option("--request", help="One call's request id.")] = None,
    change: Annotated[int | None, typer.Option("--change", help="A config-change record's id.")] = None,
    config: ConfigOption = None,
) -> None:
    """The story of every call under a trace id, of one call (--request), or of one configuration change."""
    if [trace_id, request, change].count(None) != 2:
        raise ConfigError("give exactly one of TRACE_ID, --request ID or --change ID")
    log = AuditLog(load_settings(config).database_url)
    # Finding nothing is the command's answer, not an error: it exits 1, as grep does, naming what it looked for.
    try:
        if change is not None:
            row = log.by_id(change)
            if row is None or not str(row["event"]).startswith(("policy.", "catalog.", "models.", "config.")):
                print_error(f"record {change} is not a configuration change")
                raise typer.Exit(1)
            _print_change(row)
        elif request is not None:
            rows = log.by_request(request.strip().lower())
            if not rows:
                print_error(f"no audit record carries request id {request}")
                raise typer.Exit(1)
            _print_stories(f"request {request.strip().lower()}", tell(rows))
        else:
            assert trace_id is not None  # noqa: S101
            rows = log.by_trace(trace_id.strip().lower())
            if not rows:
                print_error(f"no audit record carries trace id {trace_id}")
                raise typer.Exit(1)
            _print_stories(f"trace {trace_id.strip().lower()}", tell(rows))
    finally:
        log.close()


def _print_report(report: VerifyReport, extra: list[str], source: str) -> None:
    def say(text: Text) -> None:
        out.print(text, soft_wrap=True)

    span = f"records {report.first_id}..{report.last_id}" if report.records else "no records"
    say(Text(f"{source}: {report.records} records ({span}), {report.checkpoints_valid} valid checkpoints"))
    if report.ok and not extra:
        say(Text(f"OK: every hash and link verifies; {report.checkpoints_matched} checkpoints match", "green"))
        if report.unsigned_tail:
            say(Text(f"{report.unsigned_tail} records after the last checkpoint are chained but not yet signed"))
        return
    first = report.first_problem
    if first is not None:
        where = f"record {first.record_id}" if first.record_id is not None else "trail"
        say(Text(f"FAILED: first bad {where} [{first.kind}]", "bold red"))
    for problem in report.problems:
        say(Text(f"  {problem.kind}: {problem.message}"))
    if report.more_problems:
        say(Text(f"  ... and {report.more_problems} more"))
    for message in extra:
        say(Text(f"  bundle: {message}"))


def _pairs(rows: Iterable[tuple[str, Any]]) -> Iterator[tuple[Text, Text]]:
    for key, value in rows:
        if value not in (None, "", [], {}):
            yield (
                Text(key, "bold"),
                Text(printable_text(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))),
            )


def _print_stories(what: str, told: TraceStories) -> None:
    """One table per call. Several subjects under one id are said up front, and every call by a subject other
    than the first caller is headed as foreign: trace ids are the caller's choice, so it is not their story."""
    stories, subjects = told.stories, told.subjects
    names = ", ".join(printable_text(subject or "(unauthenticated)") for subject in subjects)
    out.print(Text(f"{what}: {len(stories)} call{'s' if len(stories) != 1 else ''}, subjects {names}"), soft_wrap=True)
    if len(subjects) > 1:
        first = printable_text(told.first_subject or "(unauthenticated)")
        out.print(
            Text(
                f"WARNING: this trace spans {len(subjects)} subjects. Callers choose trace ids: the "
                f"{len(told.foreign)} call(s) not by {first}, its first caller, are marked foreign subject.",
                "bold yellow",
            ),
            soft_wrap=True,
        )
    for number, story in enumerate(stories, 1):
        heading = Text(f"call {number} of {len(stories)}", "bold")
        if story.foreign:
            subject = printable_text(story.subject or "(unauthenticated)")
            heading.append(f"  FOREIGN SUBJECT {subject}: not the trace's first caller", "bold red")
        out.print(heading, soft_wrap=True)  # a heading, not a table title: a title would wrap at the table's width
        table = Table(show_header=False, expand=False)
        for key, value in _pairs(story.facts()):
            table.add_row(key, value)
        out.print(table)
        _print_records(list(story.rows))


def _print_records(rows: list[dict[str, Any]]) -> None:
    records = Table("record", "time", "event", "outcome", "hash", "prev", "rehashes", title="audit records")
    for row in rows:
        intact = "yes" if record_hash(row) == row["hash"] else "NO"
        cells = (str(row["id"]), row["ts"], row["event"], row["outcome"], row["hash"][:16], row["prev_hash"][:16])
        records.add_row(
            *(Text(printable_text(cell)) for cell in cells), Text(intact, "green" if intact == "yes" else "bold red")
        )
    out.print(records)


def _print_change(row: dict[str, Any]) -> None:
    detail = row_detail(row)
    table = Table(show_header=False, title=f"configuration change {row['id']}", title_justify="left")
    summary = {key: value for key, value in detail.items() if key not in ("old_digest", "new_digest", "span_id")}
    for key, value in _pairs(
        [
            ("what", row["event"]),
            ("actor", row["subject"]),
            ("accepted", "yes" if row["outcome"] == "ok" else f"no ({row['outcome']})"),
            ("when", row["ts"]),
            ("old digest", detail.get("old_digest")),
            ("new digest", detail.get("new_digest")),
            ("policy version after", row["policy_version"]),
            *((f"change: {key}", value) for key, value in summary.items()),
            ("trace id", row["trace_id"]),
        ]
    ):
        table.add_row(key, value)
    out.print(table)
    _print_records([row])
