"""DLP and rate-limit cost per call, and presidio-analyzer's pattern recognisers on the same texts.

Run ``.venv/bin/python bench/dlp_bench.py``. presidio-analyzer is not a dependency of the gateway: where it is
importable (``pip install presidio-analyzer`` into any environment; ``mcp_gateway.dlp`` needs only the standard
library), its pattern recognisers for the same entities run on the same texts, directly (``analyze`` with no NLP
artefacts: spaCy must be installed, but no model is loaded, so nothing is fetched). Figures are µs of CPU per
scan, median of 5 rounds, and ratios against the gateway's scanner in the same run.
"""

from __future__ import annotations

import asyncio
import base64
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mcp_gateway import dlp  # noqa: E402 - standard library only, so it also runs beside presidio

PROSE = (
    "The customer reports that the invoice sent on Tuesday shows the wrong delivery address and asks for a "
    "corrected copy before the end of the month; please check the order history and reply to the ticket. "
)
TEXTS = {
    "typical arguments (3 short fields)": ["ada lovelace", "c-100", "The customer cannot log in since Tuesday."],
    "typical result (4 fields)": ["c-100", "Ada Lovelace", "gold", "London"],
    "1 KB prose, nothing to find": [PROSE * 5],
    "1 KB prose with email, card, IBAN": [
        PROSE * 4 + "mail ada@example.com, card 4111 1111 1111 1111, iban GB82 WEST 1234 5698 7654 32"
    ],
    "10 KB prose": [PROSE * 50],
    "base64 of an AWS key": [base64.b64encode(b"key AKIAIOSFODNN7EXAMPLE for the build").decode()],
}
ROUNDS = 5


def timed(function: Callable[[], Any], budget: float = 0.2) -> float:
    """Median µs of CPU per call of ``function`` over ``ROUNDS`` rounds of about ``budget`` seconds."""
    count = 1
    while True:
        started = time.process_time()
        for _ in range(count):
            function()
        if time.process_time() - started > budget / 10:
            break
        count *= 2
    samples = []
    for _ in range(ROUNDS):
        started = time.process_time()
        for _ in range(count):
            function()
        samples.append((time.process_time() - started) / count * 1e6)
    return statistics.median(samples)


def presidio_scanner() -> Callable[[str], list[Any]] | None:
    try:
        from presidio_analyzer.predefined_recognizers import (  # type: ignore[import-not-found]
            CreditCardRecognizer,
            EmailRecognizer,
            IbanRecognizer,
            PhoneRecognizer,
            UkNinoRecognizer,
            UsSsnRecognizer,
        )
    except ImportError:
        return None
    recognisers = [
        EmailRecognizer(),
        CreditCardRecognizer(),
        IbanRecognizer(),
        UsSsnRecognizer(),
        UkNinoRecognizer(),
        PhoneRecognizer(),
    ]

    def scan(text: str) -> list[Any]:
        found: list[Any] = []
        for recogniser in recognisers:
            found += recogniser.analyze(text, recogniser.supported_entities, None)
        return found

    return scan


def main() -> None:
    presidio = presidio_scanner()
    print(f"{'input':40} {'gateway µs':>11} {'presidio µs':>12} {'ratio':>7}")
    for name, texts in TEXTS.items():
        ours = timed(lambda texts=texts: [dlp.scan_text(text) for text in texts])
        theirs = None
        if presidio is not None:
            theirs = timed(lambda texts=texts: [presidio(text) for text in texts])
        shown = f"{theirs:12.1f} {theirs / ours:7.1f}" if theirs is not None else f"{'n/a':>12} {'':>7}"
        print(f"{name:40} {ours:11.1f} {shown}")
    evasions = {
        "card split by zero-width spaces": "4111\u200b1111\u200b1111\u200b1111",
        "card in fullwidth digits": "4111 1111 1111 1111".translate({ord(d): 0xFF10 + int(d) for d in "0123456789"}),
        "base64 of a card number": base64.b64encode(b"card 4111 1111 1111 1111").decode(),
    }
    if presidio is not None:
        print("\nevasions (found by gateway / by presidio):")
        for name, text in evasions.items():
            print(f"  {name:36} {bool(dlp.scan_text(text))!s:>6} / {bool(presidio(text))!s}")
    try:
        from mcp_gateway.ratelimit import RateLimiter, parse_rate
    except ImportError:  # an environment without the gateway's dependencies (presidio only)
        return
    limiter = RateLimiter()
    spec = parse_rate("1000000/second")

    async def takes() -> None:  # take() is a coroutine: 1,000 of them per event loop run
        for _ in range(1000):
            await limiter.take("internal", "alice", "crm.search", spec)

    print(f"\nrate limiter take(): {timed(lambda: asyncio.run(takes())) / 1000:.2f} µs")
    core()


def core() -> None:
    """The gateway's own CPU per call (backend stubbed, real audit on SQLite): enforcement on against off."""
    import shutil
    import tempfile

    import anyio
    import mcp_types as types
    import yaml

    from mcp_gateway import limits as limits_module
    from mcp_gateway.backends import Answer
    from mcp_gateway.config import Settings
    from mcp_gateway.devkeys import ensure_dev_key
    from mcp_gateway.identity import Principal
    from mcp_gateway.server import build_gateway

    class Backend:
        async def call(self, tool: Any, arguments: Any, call: Any) -> Answer:
            body = {"id": "c-100", "name": "Ada Lovelace", "tier": "gold", "city": "London"}
            return Answer(types.CallToolResult(content=[types.TextContent(text=str(body))], structured_content=body))

        def describe(self, tool: Any) -> dict[str, Any]:
            return {"type": "http"}

        async def aclose(self) -> None:
            return None

    folder = Path(tempfile.mkdtemp(prefix="dlp-bench-"))
    try:
        shutil.copytree(ROOT / "catalogs", folder / "catalogs")
        shutil.copytree(ROOT / "policies", folder / "policies")
        catalog = folder / "catalogs" / "internal.yaml"
        data = yaml.safe_load(catalog.read_text())
        data["tools"][1]["rate_limit"] = "100000000/second"  # crm.search: never refuses, always takes
        catalog.write_text(yaml.safe_dump(data))
        key = ensure_dev_key(folder / "state")
        settings = Settings(
            identity={
                "issuer": "https://idp",
                "audience": "http://127.0.0.1:8080/mcp",
                "jwks_file": str(key.jwks_path),
            },
            egress={"allow": ["http://127.0.0.1:8081"]},
            catalogs_dir=folder / "catalogs",
            policies_dir=folder / "policies",
            state_dir=folder / "state",
            database_url=f"sqlite:///{folder / 'audit.db'}",
        )
        gateway = build_gateway(settings)
        gateway.backends.use("http", Backend())
        alice = Principal("alice", ("support",), "internal", (), None, "bench", 2**40)

        def call(tool: str, args: dict[str, Any]) -> Callable[[], Any]:
            async def many() -> None:
                for _ in range(200):
                    await gateway.call_tool(alice, tool, args, "bench")

            return lambda: anyio.run(many)

        search = call("crm.search", {"query": "ada lovelace"})
        limiter = gateway.limiter

        class NoLimit:
            async def take(self, *args: Any) -> None:
                return None

        limited = timed(search, 1.0) / 200
        gateway.limiter = NoLimit()  # type: ignore[assignment]
        plain = timed(search, 1.0) / 200
        scan = limits_module.dlp.scan
        limits_module.dlp.scan = lambda value, root: []  # type: ignore[assignment]
        bare = timed(search, 1.0) / 200
        limits_module.dlp.scan, gateway.limiter = scan, limiter
        print("\ngateway call_tool on crm.search, backend stubbed, audit on SQLite (µs CPU per call, 2 audit rows):")
        print(f"  no DLP scan, no rate limit   {bare:7.1f}  1.00")
        print(f"  DLP scan (flag, no finding)  {plain:7.1f}  {plain / bare:4.2f}")
        print(f"  DLP scan and rate limit      {limited:7.1f}  {limited / bare:4.2f}")
        gateway.audit.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
