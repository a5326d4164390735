"""The audit trail on real SQLite and real PostgreSQL: chained rows, several writers, no forks."""

from __future__ import annotations

import itertools
import multiprocessing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

from mcp_gateway.audit import GENESIS, AuditEntry, AuditLog, record_hash
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
