"""The audit trail on real SQLite and real PostgreSQL: chained rows, several writers, no forks."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import itertools
import json
import math
import multiprocessing
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

from mcp_gateway.audit.log import GENESIS, AuditEntry, AuditLog, Durability, record_hash, row_of
from mcp_gateway.errors import UnavailableError

WRITERS = 4
ROWS_PER_WRITER = 150


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'audit.db'}"
        return
    url: str = request.getfixturevalue("postgres_url")
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text("DROP TABLE IF EXISTS audit_record"))
    engine.dispose()
    yield url


def entry(index: int, writer: int = 0) -> AuditEntry:
    return AuditEntry(
        event="tools/call",
        decision="allow",
        outcome="ok",
        request_id=f"{writer}-{index}",
        subject="alice",
        roles=("support", "ünïcode"),
        tool="crm.search",
        latency_ms=1.0 / 3,
        detail={"n": index, "text": "naïve"},
    )


def _write(url: str, writer: int, count: int) -> None:
    log = AuditLog(url)
    for index in range(count):
        log.record(entry(index, writer))
    log.close()


def assert_linear(rows: list[dict[str, Any]]) -> None:
    assert rows[0]["prev_hash"] == GENESIS
    for earlier, later in itertools.pairwise(rows):
        assert later["prev_hash"] == earlier["hash"], f"fork or gap at row {later['id']}"
    assert len({row["prev_hash"] for row in rows}) == len(rows)
    for row in rows:
        assert record_hash(row) == row["hash"], f"row {row['id']} does not hash to its stored hash"


def test_rows_chain_and_rehash_to_their_stored_hash(database_url: str) -> None:
    log = AuditLog(database_url)
    hashes = [log.record(entry(index)) for index in range(20)]
    rows = list(log.iter_rows())
    log.close()
    assert [row["hash"] for row in rows] == hashes
    assert_linear(rows)
    assert rows[0]["roles"] == '["support","ünïcode"]'


def test_concurrent_writer_processes_keep_one_linear_chain(database_url: str) -> None:
    AuditLog(database_url).close()  # create the table before the writers race
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write, args=(database_url, w, ROWS_PER_WRITER)) for w in range(WRITERS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    log = AuditLog(database_url)
    rows = list(log.iter_rows())
    log.close()
    assert len(rows) == WRITERS * ROWS_PER_WRITER
    assert_linear(rows)


def test_unreachable_database_refuses_to_open() -> None:
    with pytest.raises(UnavailableError):
        AuditLog("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=1")


def test_export_streams_in_batches_and_filters_by_time(tmp_path: Path) -> None:
    log = AuditLog(f"sqlite:///{tmp_path / 'a.db'}")
    for index in range(25):
        log.record(entry(index))
    rows = list(log.iter_rows(batch=7))
    assert [row["request_id"] for row in rows] == [f"0-{i}" for i in range(25)]
    assert next(iter(log.iter_rows(since=rows[10]["ts"], batch=4)))["id"] == rows[10]["id"]
    log.close()


def _append_concurrently(url: str, writer: int, count: int, durability: Durability) -> None:
    log = AuditLog(url, durability=durability)

    async def caller(index: int) -> None:
        for number in range(count):
            await log.append(entry(number, writer * 100 + index))

    async def main() -> None:
        await asyncio.gather(*(caller(index) for index in range(8)))

    asyncio.run(main())
    log.close()


@pytest.mark.parametrize("durability", ["process", "power"])
def test_group_commit_from_several_processes_keeps_one_linear_chain(database_url: str, durability: Durability) -> None:
    AuditLog(database_url).close()
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_append_concurrently, args=(database_url, w, 25, durability)) for w in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    log = AuditLog(database_url)
    rows = list(log.iter_rows())
    log.close()
    assert len(rows) == 3 * 8 * 25
    assert_linear(rows)


async def test_group_commit_batches_waiting_callers_and_answers_each_with_its_own_hash(tmp_path: Path) -> None:
    log = AuditLog(f"sqlite:///{tmp_path / 'a.db'}", durability="power", max_batch=4)
    hashes = await asyncio.gather(*(log.append(entry(index)) for index in range(10)))
    rows = list(log.iter_rows())
    log.close()
    by_request = {row["request_id"]: row["hash"] for row in rows}
    assert [by_request[f"0-{index}"] for index in range(10)] == hashes
    assert_linear(rows)
    # Several callers shared a transaction (one timestamp per commit), never more than max_batch.
    per_commit = collections.Counter(row["ts"] for row in rows)
    assert max(per_commit.values()) > 1
    assert max(per_commit.values()) <= 4


async def test_failed_group_commit_fails_every_waiting_caller(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    log = AuditLog(f"sqlite:///{path}", durability="power")
    await log.append(entry(0))
    with sqlite3.connect(path) as connection:
        connection.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON audit_record BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
    results = await asyncio.gather(*(log.append(entry(index)) for index in range(1, 6)), return_exceptions=True)
    log.close()
    assert all(isinstance(result, UnavailableError) for result in results)


def test_power_durability_sets_synchronous_full(tmp_path: Path) -> None:
    for durability, expected in (("process", 1), ("power", 2)):
        log = AuditLog(f"sqlite:///{tmp_path / durability}.db", durability=durability)  # type: ignore[arg-type]
        with log._engine.connect() as connection:
            level = connection.exec_driver_sql("PRAGMA synchronous").scalar()
        log.close()
        assert level == expected, durability


def test_gateways_opening_a_fresh_trail_at_once_all_start(tmp_path: Path) -> None:
    # Two stdio sessions launched together each open the trail; the table must be created exactly once
    # and neither may refuse to start because the other created it first.
    import threading

    openers = 6
    for attempt in range(3):
        url = f"sqlite:///{tmp_path / f'fresh-{attempt}.db'}"
        barrier = threading.Barrier(openers)
        failures: list[BaseException] = []

        def open_and_write(
            url: str = url, barrier: threading.Barrier = barrier, failures: list[BaseException] = failures
        ) -> None:
            barrier.wait(timeout=10)
            try:
                log = AuditLog(url)
                log.record(entry(0))
                log.close()
            except UnavailableError as exc:
                failures.append(exc)

        threads = [threading.Thread(target=open_and_write) for _ in range(openers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert failures == []
        log = AuditLog(url)
        rows = list(log.iter_rows())
        log.close()
        assert len(rows) == openers
        assert_linear(rows)


def test_break_glass_stores_opening_a_fresh_database_at_once_all_start(tmp_path: Path) -> None:
    # The bench launches 8 stdio gateways together; each creates the break-glass tables too.
    import threading

    from mcp_gateway.breakglass import BreakGlass
    from mcp_gateway.config import BreakGlassSettings

    for attempt in range(3):
        url = f"sqlite:///{tmp_path / f'bg-{attempt}.db'}"
        barrier = threading.Barrier(6)
        failures: list[BaseException] = []

        def open_store(
            url: str = url, barrier: threading.Barrier = barrier, failures: list[BaseException] = failures
        ) -> None:
            barrier.wait(timeout=10)
            try:
                BreakGlass(url, BreakGlassSettings()).close()
            except UnavailableError as exc:
                failures.append(exc)

        threads = [threading.Thread(target=open_store) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert failures == []


def test_gateways_starting_together_share_one_checkpoint_key(tmp_path: Path) -> None:
    import threading

    from mcp_gateway.audit.checkpoint import Signer

    path = tmp_path / "state" / "audit-signing.key"
    barrier = threading.Barrier(8)
    signers: list[Signer] = []
    failures: list[BaseException] = []

    def start() -> None:
        barrier.wait(timeout=10)
        try:
            signers.append(Signer.load_or_create(path))
        except Exception as exc:  # noqa: BLE001 - any failure to start is the finding
            failures.append(exc)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert failures == []
    assert len({signer.key_id for signer in signers}) == 1
    assert Signer.load_or_create(path).key_id == signers[0].key_id
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert not [leftover.name for leftover in path.parent.iterdir() if leftover.name.startswith(".")]


def test_record_hash_is_sha256_of_the_documented_canonical_json() -> None:
    """Trails written by earlier versions must still verify: the encoding is pinned, not just self-consistent."""
    row = {
        "ts": "2026-11-25T00:00:00.000001+00:00",
        "event": "tools/call",
        "decision": "allow",
        "outcome": "ok",
        "subject": "ünï\u2028code",
        "latency_ms": 1.0 / 3,
        "detail": '{"a":1}',
        "prev_hash": GENESIS,
        "id": 7,  # neither id nor hash is hashed
        "hash": "ignored",
    }
    hashed = {name: row.get(name) for name in AuditEntry.__dataclass_fields__} | {
        "ts": row["ts"],
        "prev_hash": GENESIS,
    }
    expected = json.dumps(hashed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert record_hash(row) == hashlib.sha256(expected.encode()).hexdigest()


def test_wal_is_checkpointed_in_the_background_while_the_trail_stays_open(tmp_path: Path) -> None:
    """Checkpoints run off the call path: the writer's own automatic checkpoint is only a far-off backstop, so
    without the background thread these rows would stay in the WAL and the database file would not grow."""
    database = tmp_path / "audit.db"
    log = AuditLog(f"sqlite:///{database}")
    try:
        initial = database.stat().st_size
        for index in range(600):
            log.record(entry(index))
        assert _grows(log, database, initial)
        assert len(list(log.iter_rows())) == 600
    finally:
        log.close()


def test_the_primary_key_stops_two_rows_extending_one_head(database_url: str) -> None:
    """A writer that skipped the lock and read a stale head would claim an id already taken: refused."""
    log = AuditLog(database_url)
    try:
        for index in range(3):
            log.record(entry(index))
        rows = list(log.iter_rows())
        assert [row["id"] for row in rows] == [1, 2, 3]
        stale = dict(rows[1])  # a second row extending row 1, as a fork would
        engine = sqlalchemy.create_engine(database_url)
        table = sqlalchemy.table("audit_record", *(sqlalchemy.column(name) for name in stale))
        with pytest.raises(sqlalchemy.exc.IntegrityError), engine.begin() as connection:
            connection.execute(sqlalchemy.insert(table).values(**(stale | {"hash": "f" * 64})))
        engine.dispose()
        log.record(entry(3))
        assert_linear(list(log.iter_rows()))
    finally:
        log.close()


def _statements(log: AuditLog) -> list[str]:
    """Record the SQL the log's writer connection runs from now on (SQLite)."""
    seen: list[str] = []
    log.record(entry(-1))  # opens the writer connection
    assert log._chain._connection is not None
    log._chain._connection.driver_connection.set_trace_callback(seen.append)  # type: ignore[union-attr]
    return seen


def test_a_lone_writer_appends_with_one_statement_and_falls_back_when_another_writes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    log, other = AuditLog(url), AuditLog(url)
    try:
        seen = _statements(log)
        for index in range(20):
            log.record(entry(index))
        assert not [sql for sql in seen if sql.startswith("BEGIN")]  # no lock-read-insert-commit round
        other.record(entry(100, writer=1))  # another connection (another process) extends the chain
        seen.clear()
        log.record(entry(20))
        assert [sql for sql in seen if sql.startswith("BEGIN")] == ["BEGIN IMMEDIATE"]  # noticed, re-read the head
        # Others write to this trail: the next 16 appends lock without looking for a chance, then it tries again.
        seen.clear()
        for index in range(21, 41):
            log.record(entry(index))
        assert len([sql for sql in seen if sql.startswith("BEGIN")]) == 16
        # One after the 16th locked commit, then one check before each of the last 4 one-statement appends.
        assert len([sql for sql in seen if sql.startswith("PRAGMA data_version")]) == 1 + 4
        assert_linear(list(log.iter_rows()))
    finally:
        log.close()
        other.close()


def test_a_stale_remembered_head_is_refused_by_the_primary_key_not_forked(tmp_path: Path) -> None:
    """If another writer gets in between the data_version check and the INSERT, the INSERT claims a taken id."""
    log = AuditLog(f"sqlite:///{tmp_path / 'audit.db'}")
    try:
        for index in range(3):
            log.record(entry(index))
        assert log._chain._head is not None
        current = log._chain._head
        rows = list(log.iter_rows())
        log._chain._head = (rows[0]["id"], rows[0]["hash"], current[2])  # as if rows 2 and 3 had slipped in unnoticed
        log.record(entry(3))
        rows = list(log.iter_rows())
        assert len(rows) == 4
        assert_linear(rows)
    finally:
        log.close()


def test_a_writer_using_the_default_id_still_appends_after_ours(database_url: str) -> None:
    """An older gateway (or any tool) inserting without an id, as before ids were assigned by the writer, must get
    the next id: on PostgreSQL that needs the id sequence kept in step."""
    log = AuditLog(database_url)
    try:
        for index in range(3):
            log.record(entry(index))
        last = list(log.iter_rows())[-1]
        older = {key: value for key, value in last.items() if key != "id"}
        older |= {"prev_hash": last["hash"], "ts": last["ts"], "event": "older-writer"}
        older["hash"] = record_hash(older)
        engine = sqlalchemy.create_engine(database_url)
        table = sqlalchemy.table("audit_record", *(sqlalchemy.column(name) for name in older))
        with engine.begin() as connection:
            connection.execute(sqlalchemy.insert(table).values(**older))
        engine.dispose()
        log.record(entry(4))
        rows = list(log.iter_rows())
        assert [row["id"] for row in rows] == [1, 2, 3, 4, 5]
        assert rows[3]["event"] == "older-writer"
        assert_linear(rows)
    finally:
        log.close()


def test_the_wal_checkpoint_counts_rows_of_group_commits_too(tmp_path: Path) -> None:
    """Group commits put many rows in one transaction; checkpoints are due by rows, or the WAL grows unchecked."""
    database = tmp_path / "audit.db"
    log = AuditLog(f"sqlite:///{database}")
    try:
        initial = database.stat().st_size
        for batch in range(3):
            log._commit_rows([row_of(entry(batch * 200 + index)) for index in range(200)])
        assert _grows(log, database, initial)  # 600 rows in 3 commits: a checkpoint was due
    finally:
        log.close()


def _grows(log: AuditLog, database: Path, initial: int, timeout: float = 10) -> bool:
    """Whether a background checkpoint runs within ``timeout`` s and the database file has then grown past
    ``initial`` bytes: the checkpoint copied the WAL in."""
    assert log._chain._wal is not None
    return log._chain._wal.wait_passes(1, timeout) and database.stat().st_size > initial


@pytest.mark.parametrize(
    "detail",
    [
        pytest.param({"ratio": math.nan}, id="nan"),
        pytest.param({"ratio": math.inf}, id="infinity"),
        pytest.param({"name": "\ud800"}, id="lone-surrogate"),
        pytest.param({"seen": {1, 2}}, id="not-json"),
    ],
)
def test_an_entry_canonical_json_refuses_is_refused_as_unavailable(tmp_path: Path, detail: dict[str, Any]) -> None:
    log = AuditLog(f"sqlite:///{tmp_path / 'a.db'}")
    try:
        with pytest.raises(UnavailableError):
            log.record(AuditEntry(event="tools/call", decision="allow", outcome="ok", detail=detail))
        assert log.last_id() == 0  # nothing half-written
    finally:
        log.close()
