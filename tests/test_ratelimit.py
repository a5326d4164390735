"""Token buckets: parsing, refill, retry-after, and admissions under 200 concurrent callers."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Iterator

import pytest

from mcp_gateway.errors import RateLimitedError, to_call_result
from mcp_gateway.ratelimit import MemoryBucketStore, RateLimiter, parse_rate


@pytest.mark.parametrize(
    ("text", "count", "period"),
    [("60/minute", 60, 60.0), ("1/second", 1, 1.0), (" 5 / hours ", 5, 3600.0), ("100/day", 100, 86400.0)],
)
def test_rates_parse(text: str, count: int, period: float) -> None:
    spec = parse_rate(text)
    assert (spec.count, spec.period) == (count, period)


@pytest.mark.parametrize("text", ["0/minute", "-1/minute", "60", "60/fortnight", "1.5/second", "60/minute/x", ""])
def test_bad_rates_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not like 60/minute"):
        parse_rate(text)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_bucket_allows_a_burst_then_refills_at_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    spec = parse_rate("3/minute")
    for _ in range(3):
        await limiter.take("internal", "alice", "crm.search", spec)
    with pytest.raises(RateLimitedError) as caught:
        await limiter.take("internal", "alice", "crm.search", spec)
    assert caught.value.retry_after == pytest.approx(20.0)
    clock.now += 19.0
    with pytest.raises(RateLimitedError) as again:
        await limiter.take("internal", "alice", "crm.search", spec)
    assert again.value.retry_after == pytest.approx(1.0)
    clock.now += 1.0
    await limiter.take("internal", "alice", "crm.search", spec)  # exactly one token has arrived
    with pytest.raises(RateLimitedError):
        await limiter.take("internal", "alice", "crm.search", spec)


async def test_buckets_are_per_subject_tool_and_catalog() -> None:
    limiter = RateLimiter(clock=Clock())
    spec = parse_rate("1/hour")
    await limiter.take("internal", "alice", "crm.search", spec)
    await limiter.take("internal", "bob", "crm.search", spec)
    await limiter.take("internal", "alice", "crm.customer_lookup", spec)
    await limiter.take("partner", "alice", "crm.search", spec)
    with pytest.raises(RateLimitedError):
        await limiter.take("internal", "alice", "crm.search", spec)


async def test_no_limit_declared_means_no_bucket() -> None:
    store = MemoryBucketStore()
    limiter = RateLimiter(store)
    for _ in range(1000):
        await limiter.take("internal", "alice", "crm.search", None)
    assert len(store) == 0


def test_the_refusal_carries_retry_after_in_whole_seconds() -> None:
    result = to_call_result(RateLimitedError("x", retry_after=0.2), "req")
    assert result.structured_content == {
        "error": {"code": "rate_limited", "message": "Rate limit exceeded", "request_id": "req", "retry_after": 1}
    }


async def test_a_full_store_sweeps_refilled_buckets_and_otherwise_fails_closed() -> None:
    clock = Clock()
    limiter = RateLimiter(MemoryBucketStore(max_keys=2), clock=clock)
    spec = parse_rate("1/minute")
    await limiter.take("c", "a", "t", spec)
    await limiter.take("c", "b", "t", spec)
    with pytest.raises(RateLimitedError):
        await limiter.take("c", "new", "t", spec)  # both buckets still refilling: never forget a limit
    clock.now += 60.0
    await limiter.take("c", "new", "t", spec)  # both refilled and swept


@pytest.fixture
def fast_switching() -> Iterator[None]:
    # Make the interpreter switch threads as often as it can, so a missing lock would show.
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(previous)


@pytest.mark.usefixtures("fast_switching")
def test_200_threads_taking_at_once_never_exceed_the_bucket() -> None:
    store = MemoryBucketStore()
    spec = parse_rate("50/minute")
    admitted: list[int] = []
    start = threading.Barrier(200)

    def caller(index: int) -> None:
        with asyncio.Runner() as runner:  # each thread its own event loop, made before the race starts
            start.wait()
            taken = [runner.run(store.take("internal\0shared\0crm.search", spec, 0.0)) for _ in range(5)]
        admitted.extend(index for wait in taken if wait == 0.0)

    threads = [threading.Thread(target=caller, args=(index,)) for index in range(200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(admitted) == 50


async def test_200_tasks_taking_at_once_never_exceed_the_bucket() -> None:
    limiter = RateLimiter(clock=Clock())
    spec = parse_rate("50/minute")

    async def caller() -> int:
        try:
            await limiter.take("internal", "shared", "crm.search", spec)
        except RateLimitedError:
            return 0
        return 1

    admitted = await asyncio.gather(*(caller() for _ in range(200)))
    assert sum(admitted) == 50
