"""DLP on hostile input: does four times the input cost about four times the work, never sixteen?

Shapes built to maximise the scanner's work (nested encodings, many runs, long digit chains, escapes everywhere)
are scanned and redacted at two sizes in the same run; the report gives the cost ratio of the larger to the
smaller. Linear work gives about 4, quadratic about 16. ``python -m bench.dlp_scaling_bench [--quick]``; it exits
1 when a shape's ratio passes ``LIMIT`` (a quadratic path has come back).
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console
from rich.table import Table

from mcp_gateway.dlp import redact, scan_text

LIMIT = 12.0  # between linear (4) and quadratic (16), with room for this machine's noise

SEEDS = {
    "digit chain": "1 " * 4096,
    "base64 runs": "QUFBQUFBQUFBQUFB " * 512,
    "hex runs": "34313131313131313131313131313131 " * 256,
    "percent": "%34%31" * 1024,
    "escapes": "\\u0034\\t" * 1024,
    "nested": base64.b64encode(base64.b64encode(b"%34%31 " * 512)).decode(),
    "pem headers": "-----BEGIN A A A A PRIVATE KEY " * 256,
    "mixed": "4%31\\u0031 1_" * 1024,
    "iban shapes and phones": "AB12 3456 7890 1234 5 x (555) 123 4567 " * 128,
    "addresses and runs": "a@b.cc QUFBQUFBQUFBQUFB " * 256,
}


def _cost(text: str) -> float:
    started = time.process_time()
    scan_text(text)
    redact(text)
    return time.process_time() - started


def run(quick: bool = False) -> dict[str, dict[str, float]]:
    """Per shape: CPU seconds at 2x and 8x the seed (median of the rounds), and their ratio."""
    rounds = 1 if quick else 3
    results: dict[str, dict[str, float]] = {}
    for name, seed in SEEDS.items():
        small = statistics.median(_cost(seed * 2) for _ in range(rounds))
        large = statistics.median(_cost(seed * 8) for _ in range(rounds))
        results[name] = {"small_s": small, "large_s": large, "ratio": large / max(small, 1e-6)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one round per size instead of three")
    results = run(parser.parse_args().quick)
    table = Table("shape", "2x (ms)", "8x (ms)", "ratio", "verdict", title="DLP cost on hostile input")
    missed = False
    for name, figures in results.items():
        over = figures["ratio"] > LIMIT and figures["large_s"] > 0.05
        missed |= over
        verdict = "MISSED (quadratic?)" if over else "linear"
        table.add_row(
            name,
            f"{figures['small_s'] * 1000:.1f}",
            f"{figures['large_s'] * 1000:.1f}",
            f"{figures['ratio']:.1f}",
            verdict,
        )
    Console().print(table)
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
