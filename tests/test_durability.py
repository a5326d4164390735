"""SIGKILL under load: no acknowledged audit record is ever lost, and the chain always verifies.

A writer process runs 8 concurrent callers through ``AuditLog.append`` (the call path's group commit) and
reports each record's request id only after its append returned, i.e. when the gateway would answer the
caller. The test kills it with SIGKILL at a random moment, starts the next writer on the same trail (as a
restarted gateway would), and at the end checks that every acknowledged record is in the trail and the whole
trail verifies against its signed checkpoints. 50 cycles by default, 300 under the slow mark; the durability
level alternates between ``process`` and ``power``.
"""

from __future__ import annotations

import asyncio
import collections
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

import anyio
import pytest

from mcp_gateway.audit.checkpoint import Checkpointer, Signer
from mcp_gateway.audit.log import AuditEntry, AuditLog, Durability
from mcp_gateway.audit.verify import verify_records
from mcp_gateway.config import load_settings
from tests.conftest import Deployment, wait_http

CALLERS = 8


def writer(url: str, durability: Durability, cycle: int, acks: Connection) -> None:
    """Append forever with 8 callers; send each request id once its record is acknowledged."""
    log = AuditLog(url, durability=durability)

    async def caller(index: int) -> None:
        number = 0
        while True:
            request_id = f"{cycle}-{index}-{number}"
            await log.append(
                AuditEntry(event="tools/call.result", decision="allow", outcome="ok", request_id=request_id)
            )
            acks.send_bytes(request_id.encode())
            number += 1

    async def main() -> None:
        await asyncio.gather(*(caller(index) for index in range(CALLERS)))

    asyncio.run(main())


def _kill_cycles(tmp_path: Path, cycles: int) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    AuditLog(url).close()
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["mcp_gateway.audit.log", "tests.test_durability"])
    chooser = random.Random(4)  # noqa: S311 - test timing, not cryptography
    acknowledged: list[str] = []
    signer = Signer.load_or_create(tmp_path / "signing.key")
    for cycle in range(cycles):
        durability: Durability = "power" if cycle % 2 else "process"
        receive, send = context.Pipe(duplex=False)
        process = context.Process(target=writer, args=(url, durability, cycle, send))
        process.start()
        send.close()
        wanted = chooser.randint(1, 400)
        got = 0
        deadline = time.monotonic() + 30
        while got < wanted and time.monotonic() < deadline and receive.poll(5):
            acknowledged.append(receive.recv_bytes().decode())
            got += 1
        assert process.pid is not None
        os.kill(process.pid, signal.SIGKILL)
        process.join(10)
        assert process.exitcode == -signal.SIGKILL
        # Acknowledgements already in the pipe were sent before the kill: they count too.
        while receive.poll(0):
            try:
                acknowledged.append(receive.recv_bytes().decode())
            except EOFError:
                break
        receive.close()
        assert got == wanted, f"cycle {cycle}: writer acknowledged only {got} records"
        if cycle % 10 == 9:
            log = AuditLog(url)
            Checkpointer(log, signer, tmp_path / "checkpoints.jsonl").sign_now()
            log.close()
    log = AuditLog(url)
    Checkpointer(log, signer, tmp_path / "checkpoints.jsonl").sign_now()
    stored = {row["request_id"] for row in log.iter_rows(batch=5000)}
    report = verify_records(log.iter_rows(batch=5000), log.checkpoints(), signer.public_key)
    log.close()
    lost = [request_id for request_id in acknowledged if request_id not in stored]
    assert not lost, f"{len(lost)} acknowledged records lost, e.g. {lost[:5]}"
    assert report.ok, report.problems
    assert report.records >= len(acknowledged)


def test_sigkill_under_load_loses_no_acknowledged_record(tmp_path: Path) -> None:
    _kill_cycles(tmp_path, 50)


@pytest.mark.slow
def test_sigkill_under_load_many_cycles(tmp_path: Path) -> None:
    _kill_cycles(tmp_path, 300)


async def _load(url: str, tokens: dict[str, str], acknowledged: dict[str, int], stop_after: float) -> None:
    """8 sessions calling as fast as they can; count each call whose successful result arrived."""
    from mcp.client import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    async def session(subject: str, token: str) -> None:
        try:
            async with (
                create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http,
                Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client,
            ):
                while True:
                    result = await client.call_tool("crm.customer_lookup", {"customer_id": "c-100"})
                    if not result.is_error:
                        acknowledged[subject] += 1
        except Exception:  # noqa: BLE001, S110 - the gateway was killed under us: expected
            pass

    with anyio.move_on_after(stop_after):
        async with anyio.create_task_group() as group:
            for subject, token in tokens.items():
                group.start_soon(session, subject, token)


# CI runs the slow suite too, so the real gateway is killed this many times in every CI run.
GATEWAY_KILL_CYCLES = 50


@pytest.mark.slow
def test_sigkill_of_the_real_gateway_under_load_loses_no_acknowledged_call(deployment: Deployment) -> None:
    """The whole gateway process, killed while 8 MCP sessions call it: every call answered ok has its outcome
    row, and the trail (signed at each start) verifies."""
    acknowledged: dict[str, int] = {}
    chooser = random.Random(7)  # noqa: S311 - test timing
    for cycle in range(GATEWAY_KILL_CYCLES):
        tokens = {f"k{cycle}-{i}": deployment.mint(f"k{cycle}-{i}", ("support",), "internal") for i in range(CALLERS)}
        acknowledged.update(dict.fromkeys(tokens, 0))
        process = subprocess.Popen(
            [sys.executable, "-m", "mcp_gateway", "serve", "--transport", "streamable-http"],
            env=deployment.env(),
            cwd=deployment.root,
        )
        try:
            wait_http(f"http://127.0.0.1:{deployment.port}/healthz", process)
            killer = threading.Timer(chooser.uniform(0.5, 1.5), os.kill, (process.pid, signal.SIGKILL))
            killer.start()
            anyio.run(_load, f"http://127.0.0.1:{deployment.port}", tokens, acknowledged, 10.0)
            killer.join()
        finally:
            process.kill()
            process.wait()
    settings = load_settings(deployment.config)
    log = AuditLog(settings.database_url)
    rows = list(log.iter_rows(batch=5000))
    report = verify_records(rows, log.checkpoints(), Signer.load_or_create(settings.signing_key_path).public_key)
    log.close()
    recorded = collections.Counter(
        row["subject"] for row in rows if row["event"] == "tools/call.result" and row["outcome"] == "ok"
    )
    assert sum(acknowledged.values()) > 0
    lost = {subject: count - recorded[subject] for subject, count in acknowledged.items() if recorded[subject] < count}
    assert not lost, lost
    assert report.ok, report.problems
