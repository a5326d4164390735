"""The database bucket store (``limits.store: database``): exact under concurrency, the memory store's refill
semantics, and refusal (never admission) when the database cannot answer. On real PostgreSQL and SQLite."""

from __future__ import annotations

import asyncio
import math
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcp_gateway.config import LimitsSettings
from mcp_gateway.devkeys import DevKey
from mcp_gateway.errors import ConfigError, RateLimitedError, UnavailableError
from mcp_gateway.identity import Principal
from mcp_gateway.ratelimit import DatabaseBucketStore, MemoryBucketStore, RateLimiter, open_bucket_store, parse_rate
from mcp_gateway.store.buckets import BucketTable, bucket_id
from tests.conftest import API_KEY, ExampleApi, free_port, make_deployment

NEVER = 1e-9  # tokens per second: no refill within a test


@pytest.fixture(params=["postgresql", "sqlite"])
def bucket_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'buckets.db'}"
    return str(request.getfixturevalue("fresh_postgres_url"))


@pytest.fixture
def table(bucket_url: str) -> Iterator[BucketTable]:
    opened = BucketTable(bucket_url, workers=8)
    yield opened
    opened.close()


def test_threads_on_several_stores_admit_exactly_the_capacity(bucket_url: str) -> None:
    # Three stores stand for three replicas: each has its own connections, the database is the only thing shared.
    stores = [BucketTable(bucket_url, workers=4) for _ in range(3)]
    admitted: list[bool] = []
    lock = threading.Lock()
    start = threading.Barrier(24)

    def caller(store: BucketTable) -> None:
        start.wait()
        for _ in range(10):
            wait = store.take_blocking("shared", 37.0, NEVER, 0.0)
            with lock:
                admitted.append(wait == 0.0)

    threads = [threading.Thread(target=caller, args=(stores[index % 3],)) for index in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for store in stores:
        store.close()
    assert len(admitted) == 240
    assert sum(admitted) == 37


async def test_200_concurrent_tasks_admit_exactly_the_capacity(table: BucketTable) -> None:
    waits = await asyncio.gather(*(table.take("burst", 50.0, NEVER, 0.0) for _ in range(200)))
    assert sum(wait == 0.0 for wait in waits) == 50
    assert all(wait > 0 for wait in waits if wait != 0.0)


async def test_a_refused_take_takes_nothing_and_says_when_a_token_arrives(table: BucketTable) -> None:
    store = DatabaseBucketStore(table)
    spec = parse_rate("2/minute")
    limiter = RateLimiter(store, clock=lambda: 0.0)
    await limiter.take("internal", "alice", "crm.search", spec)
    await limiter.take("internal", "alice", "crm.search", spec)
    with pytest.raises(RateLimitedError) as refused:
        await limiter.take("internal", "alice", "crm.search", spec)
    # The database's clock has moved on a little since the first take: at most 30 s, and more than 29.
    assert 29.0 < refused.value.retry_after <= 30.0
    await limiter.take("internal", "bob", "crm.search", spec)  # another subject has a bucket of its own


def test_keys_are_hashed_so_nul_bytes_and_huge_subjects_are_stored(table: BucketTable) -> None:
    hostile = "internal\0" + "x" * 100_000 + "\0\udcff\0tool"
    assert table.take_blocking(hostile, 1.0, NEVER, 0.0) == 0.0
    assert table.take_blocking(hostile, 1.0, NEVER, 0.0) > 0.0
    assert [row["key"] for row in table.levels()] == [bucket_id(hostile)]
    assert len(bucket_id(hostile)) == 64


# -- the same decisions as the memory store ----------------------------------------------------------------------

# A schedule: (seconds since the previous take, which of three buckets) per take.
schedules = st.lists(st.tuples(st.floats(0, 5, allow_nan=False), st.integers(0, 2)), min_size=1, max_size=40)
RATES = ("3/minute", "2/second", "5/hour")


async def _decisions(store: MemoryBucketStore | DatabaseBucketStore, prefix: str, schedule: list[tuple[float, int]]):
    now, decisions = 1_000.0, []
    for gap, bucket in schedule:
        now += gap
        spec = parse_rate(RATES[bucket])
        decisions.append(await store.take(f"{prefix}{bucket}", spec, now))
    return decisions


@pytest.fixture(scope="module")
def replay_tables(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[DatabaseBucketStore]]:
    # Module-scoped (hypothesis runs many examples per test): each example uses keys of its own instead.
    sqlite = f"sqlite:///{tmp_path_factory.mktemp('replay') / 'buckets.db'}"
    stores = [DatabaseBucketStore(BucketTable(url, clock="caller")) for url in (postgres_url, sqlite)]
    yield stores
    for store in stores:
        store.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schedule=schedules)
def test_the_database_store_decides_exactly_as_the_memory_store(
    replay_tables: list[DatabaseBucketStore], schedule: list[tuple[float, int]]
) -> None:
    # The database store takes its time from the database; opened with clock="caller" it runs the very same
    # statement with the time given instead, so one schedule of times can be replayed into both stores.
    expected = asyncio.run(_decisions(MemoryBucketStore(), "k", schedule))
    for store in replay_tables:
        got = asyncio.run(_decisions(store, uuid.uuid4().hex, schedule))
        assert [wait == 0.0 for wait in got] == [wait == 0.0 for wait in expected]
        assert all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9) for a, b in zip(got, expected, strict=True))


async def test_time_going_back_refills_nothing_twice(bucket_url: str) -> None:
    caller = BucketTable(bucket_url, clock="caller")
    try:
        assert await caller.take("back", 1.0, 1.0, 100.0) == 0.0
        # A replica whose clock is behind (or a statement that waited for the row lock) gets no refill for the
        # time between: the bucket's time never goes backwards.
        assert await caller.take("back", 1.0, 1.0, 50.0) == pytest.approx(1.0)
        assert await caller.take("back", 1.0, 1.0, 100.5) == pytest.approx(0.5)
        assert await caller.take("back", 1.0, 1.0, 101.0) == 0.0
    finally:
        caller.close()


@pytest.mark.parametrize("path", ["async", "blocking"])
async def test_the_sweep_forgets_only_buckets_that_have_refilled(bucket_url: str, path: str) -> None:
    # A full bucket and no row are the same bucket: the sweep deletes rows that have refilled and nothing else,
    # so the table stays bounded by the keys in use and no caller gains a token by being swept.
    store = BucketTable(bucket_url, clock="caller")

    async def take(key: str, now: float) -> float:
        if path == "async":
            return await store.take(key, 2.0, 1.0, now)
        return store.take_blocking(key, 2.0, 1.0, now)

    try:
        for key in ("refilled", "partial", "empty"):
            await take(key, 100.0)
        await take("partial", 101.0)  # 1 + 1 refilled - 1: one token left at 101
        await take("empty", 101.5)
        await take("empty", 101.5)  # none left at 101.5
        assert len(store.levels()) == 3
        store._next_sweep = 0.0  # the sweep's interval is due on the next take
        assert await take("now", 102.0) == 0.0
        # At 102: "refilled" has been full since 101; "partial" holds 1 + 1 = 2 (full); "empty" holds 0.5.
        assert sorted(bucket_id(key) for key in ("empty", "now")) == sorted(row["key"] for row in store.levels())
        # A swept bucket starts full, exactly as if it had stayed: two takes, then a wait.
        assert await take("refilled", 102.0) == 0.0
        assert await take("refilled", 102.0) == 0.0
        assert await take("refilled", 102.0) == pytest.approx(1.0)
        assert await take("empty", 102.0) == pytest.approx(0.5)  # kept, and still owed its half token
    finally:
        store.close()


# -- fail closed ---------------------------------------------------------------------------------------------------


def test_an_unreachable_store_refuses_to_open() -> None:
    with pytest.raises(UnavailableError, match="rate-limit store unavailable"):
        open_bucket_store(
            LimitsSettings(store="database", timeout=1), f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x"
        )


async def test_a_store_that_goes_away_refuses_calls_and_recovers(postgres_url: str) -> None:
    from tests.pgserver import create_database, drop_database

    url = create_database(postgres_url)
    store = open_bucket_store(LimitsSettings(store="database", timeout=1), url)
    limiter = RateLimiter(store)
    spec = parse_rate("100/minute")
    try:
        await limiter.take("internal", "alice", "crm.search", spec)
        drop_database(postgres_url, url)  # closes every connection to it, then drops it
        for _ in range(3):  # each take tries a fresh connection and is refused
            with pytest.raises(UnavailableError, match="rate-limit store unavailable"):
                await limiter.take("internal", "alice", "crm.search", spec)
    finally:
        limiter.close()


def test_memory_is_the_default_store() -> None:
    assert isinstance(open_bucket_store(LimitsSettings(), "sqlite:///unused.db"), MemoryBucketStore)


async def test_a_call_is_refused_and_audited_when_the_bucket_store_is_down(
    tmp_path: Path, example_api: ExampleApi, dev_key: DevKey, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mcp_gateway.config import load_settings
    from mcp_gateway.server import build_gateway
    from tests.pgserver import create_database, drop_database

    url = create_database(postgres_url)
    limits = {"store": "database", "database_url": url, "timeout": 1}
    deployment = make_deployment(tmp_path, example_api, dev_key, limits=limits)
    monkeypatch.setenv("INVENTORY_API_KEY", API_KEY)
    gateway = build_gateway(load_settings(deployment.config))
    alice = Principal("alice", ("support",), "internal", (), None, "test", 2**40)
    try:
        served = await gateway.call_tool(alice, "crm.search", {"query": "ada"}, "req-up")
        assert not served.is_error
        assert gateway.ready() == (True, None)
        drop_database(postgres_url, url)
        ready, reason = gateway.ready()  # /readyz takes the replica out of the balancer's rotation
        assert not ready
        assert reason is not None
        assert reason.startswith("rate-limit store unavailable")
        seen = len(example_api.seen())
        refused = await gateway.call_tool(alice, "crm.search", {"query": "ada"}, "req-down")
        assert refused.is_error
        assert refused.structured_content is not None
        assert refused.structured_content["error"]["code"] == "unavailable"
        assert len(example_api.seen()) == seen  # nothing reached the backend
        [row] = gateway.audit.by_request("req-down")
        assert (row["decision"], row["outcome"]) == ("allow", "unavailable")
        assert "rate-limit store unavailable" in row["detail"]
    finally:
        await gateway.aclose()
        gateway.audit.close()


def test_a_relative_sqlite_bucket_database_is_beside_the_config_file(tmp_path: Path) -> None:
    from mcp_gateway.config import load_settings

    config = tmp_path / "conf" / "mcp-gateway.yaml"
    config.parent.mkdir()
    identity = {"issuer": "https://idp", "audience": "http://127.0.0.1:1/mcp", "jwks_file": "jwks.json"}
    config.write_text(
        yaml.safe_dump({"identity": identity, "limits": {"store": "database", "database_url": "sqlite:///b.db"}})
    )
    settings = load_settings(config)
    assert settings.limits.database_url == f"sqlite:///{tmp_path / 'conf' / 'b.db'}"
    config.write_text(yaml.safe_dump({"identity": identity, "limits": {"store": "redis"}}))
    with pytest.raises(ConfigError, match=r"limits\.store"):
        load_settings(config)


def test_replicas_opening_a_new_postgresql_database_at_once_all_start(fresh_postgres_url: str) -> None:
    # CREATE TABLE IF NOT EXISTS from several connections at once can fail on PostgreSQL's catalog; creators
    # take turns instead, so every replica of a new deployment starts.
    from mcp_gateway.audit.log import AuditLog

    failures: list[BaseException] = []
    start = threading.Barrier(6)

    def open_both() -> None:
        start.wait()
        try:
            BucketTable(fresh_postgres_url).close()
            AuditLog(fresh_postgres_url).close()
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            failures.append(exc)

    threads = [threading.Thread(target=open_both) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not failures


def test_event_loops_that_have_closed_leave_no_connection_open(fresh_postgres_url: str) -> None:
    import sqlalchemy

    table = BucketTable(fresh_postgres_url, workers=2)

    async def takes() -> None:
        await asyncio.gather(*(table.take("loops", 1000.0, NEVER, 0.0) for _ in range(4)))

    def backends() -> int:
        engine = sqlalchemy.create_engine(fresh_postgres_url)
        with engine.connect() as connection:
            query = (
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            count = int(connection.execute(sqlalchemy.text(query)).scalar_one())
        engine.dispose()
        return count

    try:
        for _ in range(10):
            asyncio.run(takes())
        # The last loop's two, and the engine's pooled one that created the table: not ten loops' worth.
        assert backends() <= 3
    finally:
        table.close()
    assert backends() == 0
