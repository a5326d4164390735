"""`make demo`: the governed gateway end to end on embedded defaults, then everything stops.

1. starts the example in-boundary REST API (examples/inventory_api.py) on 127.0.0.1:8081, and the local model
   engine (llama.cpp's server with Gemma 3 270M, from the `models` extra) on 127.0.0.1:8082 (demo_models.py)
2. starts the gateway over HTTP on 127.0.0.1:8080 with mcp-gateway.yaml (SQLite, example catalogs/policies,
   plus one approved model and one model tool in the demo's copy of the catalogs)
3. mints a short-lived internal token and a partner token with a dev key generated at first run
4. runs the example agent with each and prints, side by side, what each sees and gets
5. makes model tool calls: one streamed as progress, one whose audit row carries the token usage, and one after
   the engine is stopped, answered `unavailable` (skipped, saying why, if the engine cannot start)
6. prints the audit rows those calls produced
7. makes a policy change from the CLI as a verified operator (carol's token, role policy-admin), on a copy of
   policies/ under .mcp-gateway/; it is audited with her sub, jti and amr
8. ends with the tabletop: `mcp-gateway audit trace TRACE_ID` for alice's call and `audit trace --change ID`
   for the policy change, both told from the audit trail alone
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from rich.columns import Columns
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demo_models
from agent import AgentReport, run_agent

from mcp_gateway.audit.log import AuditLog
from mcp_gateway.config import load_settings
from mcp_gateway.devkeys import ensure_dev_key

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "mcp-gateway.yaml"
console = Console(width=None if sys.stdout.isatty() else 120)

INTERNAL_CALLS = [("crm.customer_lookup", {"customer_id": "c-100"}), ("hr.salary_lookup", {"employee_id": "e-7"})]
PARTNER_CALLS = [("orders.status", {"order_id": "o-1"}), ("crm.customer_lookup", {"customer_id": "c-100"})]


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def _wait(url: str, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with status {process.returncode}")
        try:
            if httpx.get(url, timeout=1, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{what} did not become ready at {url}")


def _report(title: str, report: AgentReport) -> Panel:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_row("[bold]sees[/]", "\n".join(report.tools) or "(nothing)")
    for call in report.calls:
        if call.ok:
            table.add_row(f"[green]✔ {call.tool}[/]", call.text[:120])
        else:
            code = (call.error or {}).get("code", "?")
            table.add_row(f"[red]✘ {call.tool}[/]", f"{call.text} [dim]({code})[/]")
    return Panel(table, title=title, expand=True)


def main() -> None:
    settings = load_settings(CONFIG)
    for port in (8080, 8081):
        if not _port_free(port):
            raise SystemExit(f"port {port} on 127.0.0.1 is in use; stop what uses it and run `make demo` again")
    key = ensure_dev_key(settings.state_dir)  # writes .mcp-gateway/dev-jwks.json, which the config trusts
    # The demo changes policy from the CLI; it works on a copy so the repository's policies/ stay as they are.
    policies = settings.state_dir / "demo-policies"
    shutil.rmtree(policies, ignore_errors=True)
    shutil.copytree(settings.policies_dir, policies)
    env = {
        **os.environ,
        "INVENTORY_API_KEY": secrets.token_urlsafe(24),
        "MCP_GATEWAY_POLICIES_DIR": str(policies),
    }
    processes: list[subprocess.Popen[bytes]] = []
    engine = demo_models.prepare(console, settings.state_dir, settings.catalogs_dir, policies, env)
    try:
        api = subprocess.Popen([sys.executable, str(ROOT / "examples" / "inventory_api.py"), "--port", "8081"], env=env)
        processes.append(api)
        _wait("http://127.0.0.1:8081/health", api, "example API")
        gateway = subprocess.Popen(
            [sys.executable, "-m", "mcp_gateway", "serve", "--config", str(CONFIG), "--transport", "streamable-http"],
            env=env,
        )
        processes.append(gateway)
        _wait("http://127.0.0.1:8080/healthz", gateway, "gateway")
        console.rule("[bold]mcp-gateway demo")
        issuer, audience = settings.identity.issuer, settings.identity.audience
        internal = key.mint("alice", roles=("support",), catalog="internal", issuer=issuer, audience=audience, ttl=300)
        partner = key.mint("acme-bot", roles=("partner",), catalog="partner", issuer=issuer, audience=audience, ttl=300)
        url = "http://127.0.0.1:8080/mcp"
        started = time.time()
        reports = asyncio.run(_both(url, internal, partner))
        console.print(
            Columns(
                [
                    _report("internal: alice (role support)", reports[0]),
                    _report("partner: acme-bot (role partner)", reports[1]),
                ],
                equal=True,
                expand=True,
            )
        )
        if engine is not None:
            asyncio.run(demo_models.show(console, engine, url, internal, lambda *args: _cli(env, *args)))
            _print_usage(settings.database_url, started)
        _print_audit(settings.database_url, started)
        # The policy change is made by a verified operator: carol's own token, with a role in admin.policy_roles.
        carol = key.mint("carol", roles=("policy-admin",), catalog="internal", issuer=issuer, audience=audience,
                         ttl=300, amr=("pwd", "mfa"))  # fmt: skip
        _tabletop(settings.database_url, started, {**env, "MCP_GATEWAY_TOKEN": carol})
    finally:
        if engine is not None:
            engine.stop()
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
    console.print("[dim]all processes stopped[/]")


async def _both(url: str, internal: str, partner: str) -> tuple[AgentReport, AgentReport]:
    return await run_agent(url, internal, INTERNAL_CALLS), await run_agent(url, partner, PARTNER_CALLS)


def _print_audit(database_url: str, since: float) -> None:
    log = AuditLog(database_url)
    table = Table("#", "event", "subject", "tool", "decision", "rule", "outcome", "ms", title="audit trail")
    cutoff = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(since))
    for row in log.iter_rows(since=cutoff):
        if row["event"] == "gateway.start":
            continue
        rule = (row["rule"] or "").split(" ", 1)[0]  # "internal.csv:3" of "internal.csv:3 p, role:..."
        table.add_row(
            str(row["id"]),
            row["event"],
            row["subject"] or "",
            row["tool"] or "",
            row["decision"],
            rule,
            row["outcome"],
            f"{row['latency_ms']:.2f}" if row["latency_ms"] is not None else "",
        )
    log.close()
    console.print(table)
    console.print(
        "[dim]each row carries the hash of the one before; `mcp-gateway audit export --format jsonl` "
        "streams them in full (subject, roles, rule text, argument digest, request id)[/]"
    )


def _print_usage(database_url: str, since: float) -> None:
    log = AuditLog(database_url)
    cutoff = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(since))
    table = Table("#", "outcome", "served by", "model id", "streamed", "usage", title="model calls in the audit trail")
    for row in log.iter_rows(since=cutoff):
        if row["event"] != "tools/call.result" or row["tool"] != demo_models.TOOL:
            continue
        detail = row["detail"] if isinstance(row["detail"], dict) else json.loads(row["detail"] or "{}")
        table.add_row(
            str(row["id"]),
            row["outcome"],
            str(detail.get("served_by", "")),
            str(detail.get("served_model", "")),
            str(detail.get("streamed", "")),
            _usage(detail),
        )
    log.close()
    console.print(table)


def _usage(detail: dict[str, Any]) -> str:
    usage = detail.get("usage")
    if not usage:
        # llama.cpp's server sends no usage on a streamed answer; a refused or failed call has none either.
        return "(the engine streamed, without usage)" if detail.get("streamed") else ""
    return f"{usage.get('prompt_tokens')} in + {usage.get('completion_tokens')} out = {usage.get('total_tokens')}"


def _cli(env: dict[str, str], *args: str) -> str:
    command = [sys.executable, "-m", "mcp_gateway", *args, "--config", str(CONFIG)]
    console.print(f"[bold]$ mcp-gateway {' '.join(args)}[/]")
    done = subprocess.run(command, env={**env, "COLUMNS": "120"}, capture_output=True, text=True, check=False)
    print(done.stdout, end="")
    print(done.stderr, end="", file=sys.stderr)
    return done.stdout


def _tabletop(database_url: str, since: float, env: dict[str, str]) -> None:
    console.rule("[bold]a configuration change, made from the CLI by a verified operator (carol's token)")
    changed = _cli(
        env,
        "policy",
        "add",
        "p, role:support_lead, internal, hr.*, call, allow",
        "--file",
        "internal.csv",
    )
    found = re.search(r"audit record (\d+)", changed)
    console.rule("[bold]tabletop: the whole story of one call, from the audit trail alone")
    log = AuditLog(database_url)
    cutoff = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(since))
    call = next(
        (
            row
            for row in log.iter_rows(since=cutoff)
            if row["event"] == "tools/call.result" and row["subject"] == "alice" and row["outcome"] == "ok"
        ),
        None,
    )
    log.close()
    if call is not None and call["trace_id"]:
        _cli(env, "audit", "trace", call["trace_id"])
    if found:
        console.rule("[bold]tabletop: the whole story of one configuration change")
        _cli(env, "audit", "trace", "--change", found.group(1))
    console.rule("[bold]and the trail is intact")
    _cli(env, "audit", "checkpoint")
    _cli(env, "audit", "verify")


if __name__ == "__main__":
    main()
